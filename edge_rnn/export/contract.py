"""The step function's contract: the names every exporter writes and every bundle reader expects.

Its own module so that ``bundle`` (which calls the exporters) and the exporters (which write these
names into their graphs) both import it and never each other: the bundle format version, the
file names of a bundle, the extra input of the prefix-range head and the id order it needs, the
recurrent state tensors' names and layout, and the text rules an app must follow.

The step function, for every target. Inputs: ``char`` int32 ``[batch]``, then every recurrent
state ``float32 [batch, H]`` in ``state_names`` order (and ``range`` int32 ``[2]`` last for a
prefix-range head). Outputs: ``top_ids`` int32 ``[batch, k]``, ``top_probs`` float32 ``[batch, k]``,
optionally ``log_probs`` float32 ``[batch, V]``, then each next state as ``<state name>_next``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from edge_rnn.io import EdgeRNNError
from edge_rnn.vocab import SYMBOLS

if TYPE_CHECKING:  # model.py imports MLX: a runtime that only reads bundles must not need it
    from edge_rnn.model import ModelConfig

FORMAT_VERSION = 1
MANIFEST, VOCAB = "manifest.json", "vocab.json"
METRICS = "metrics.jsonl"  # edge_rnn.model.METRICS, repeated to keep MLX out of bundle reading
RANGE_INPUT = "range"  # the prefix-range head's extra input
FORMATS = ("onnx", "coreml")
PRECISIONS = ("fp32", "fp16")

# How an app must turn typed text into input symbols: what training saw (text8-style text).
TEXT_RULES = {
    "lowercase": "ascii",  # A-Z -> a-z only
    "keep": "abcdefghijklmnopqrstuvwxyz",
    "other_chars": "space",  # every other character (digits, accented letters...) becomes a space
    "collapse_spaces": True,  # ... and runs of spaces become one
    "leading_space": True,  # every training sequence starts with a space: feed one first
    "symbols": SYMBOLS,  # symbol id = index; <pad> (0) is never typed
}


def state_names(config: ModelConfig) -> list[str]:
    """Recurrent state tensors in contract order: per layer ``h`` first, then the memories."""
    if config.cell in ("rnn", "gru"):
        per_layer = ["h"]
    elif config.cell in ("lstm", "cifg"):
        per_layer = ["h", "c"]
    else:  # Nested LSTM: one memory per depth
        per_layer = ["h"] + [f"c{d}" for d in range(config.depth)]
    return [f"l{layer}_{s}" for layer in range(config.layers) for s in per_layer]


def prefix_order(words: Sequence[str]) -> list[int]:
    """Exported id -> model id for a prefix-range head: <pad> and <unk> (0, 1) stay first, then
    the words sorted. Sorted, the words starting with any prefix have consecutive ids, so one
    ``[start, end)`` range names them all (Python's ``str`` order: a-z words sort as bytes)."""
    return [0, 1] + sorted(range(2, len(words)), key=lambda k: words[k])


def checked_prefix_order(config: ModelConfig, words: Sequence[str] | None, with_log_probs: bool) -> np.ndarray | None:
    """``prefix_order(words)`` after checking a prefix-range head can be built (every exporter's
    rule); None when no prefix head is asked for (``words`` None)."""
    if words is None:
        return None
    if config.task != "autocomplete":
        raise EdgeRNNError("the prefix-range head needs an autocomplete model (its outputs are words)")
    if with_log_probs:
        raise EdgeRNNError("the prefix-range head computes only the rows of the typed prefix; "
                           "it cannot also output log_probs over every word")
    if len(words) != config.n_outputs:
        raise EdgeRNNError(f"{len(words)} output words for a model with {config.n_outputs} outputs")
    return np.array(prefix_order(words))


def state_layout(config: ModelConfig) -> list[dict]:
    """The state names with shape and meaning, for the manifest (an app allocates these)."""
    def meaning(suffix: str) -> str:
        if suffix == "h":
            return "hidden output h (input to the next layer / the head)"
        if suffix == "c":
            return "LSTM memory c"
        return f"Nested LSTM memory at depth {suffix[1:]} (c_{suffix[1:]})"

    return [{"name": name, "dtype": "float32", "shape": ["batch", config.units],
             "layer": int(name[1:name.index("_")]), "meaning": meaning(name.split("_", 1)[1])}
            for name in state_names(config)]
