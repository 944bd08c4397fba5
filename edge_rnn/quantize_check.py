"""The check every quantization target shares: source and quantized model on the same held-out text.

Each target (``edge_rnn.export.onnx_quantize``, ``edge_rnn.export.coreml_quantize``,
``edge_rnn.mlx_quantize``) brings a runner, ``chunks(path, data, manifest)``, that yields the output
probabilities at the scored positions and their targets, chunk by chunk, in the same order for the
source and the quantized model; ``check`` compares the two streams: the top-1/top-3 accuracy of
both, how often their top-1 (and top-3 set) agree and the largest absolute difference of any
output probability at any position.

The text is labelled with the bundle's own vocabulary: ``eval_text`` if given, else the source
run's test split when the manifest names a run directory that still has it (a run directory is its
own source), else the first ~20,000 characters of ``demo_corpus(seed=12345)``. Accuracy follows
``edge_rnn.evaluate``: argmax over all outputs at every non-pad position, ``<unk>`` targets count
as misses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edge_rnn.data import Dataset, demo_corpus, encode_autocomplete, encode_charlm, load_corpus
from edge_rnn.export.contract import VOCAB
from edge_rnn.io import EdgeRNNError
from edge_rnn.vocab import PAD, UNK, Vocab

EVAL_CHARS = 20_000
DEMO_SEED, DEMO_SENTENCES = 12_345, 2_000  # 2,000 demo sentences are ~100k characters
STEP_BATCH = 256  # observations streamed in parallel through a step graph
LISTED_ELEMENTS = 1024  # tensors smaller than this are left out of the manifest's tensor lists

Chunks = Iterator[tuple[np.ndarray, np.ndarray]]  # (probabilities (n, V), targets (n,)) per chunk
Runner = Callable[[Path, Dataset, Any], Chunks]


@dataclass
class Source:
    """What is being quantized: an ONNX or Core ML bundle, or an MLX run directory."""

    kind: str  # "onnx" | "coreml" | "mlx"
    path: Path
    manifest: dict | None  # bundles only


@dataclass
class Tally:
    """Running comparison of two models' output distributions at the same positions."""

    positions: int = 0
    hits: dict = field(default_factory=lambda: {"source": [0, 0], "quantized": [0, 0]})  # top-1, top-3
    agree1: int = 0
    agree3: int = 0
    max_abs_dprob: float = 0.0

    def add(self, p_src: np.ndarray, p_q: np.ndarray, targets: np.ndarray, scored: np.ndarray) -> None:
        """``p_*`` (n, V) probabilities, ``targets`` (n,), ``scored``: targets that can be hit."""
        self.positions += len(targets)
        for key, p in (("source", p_src), ("quantized", p_q)):
            rank = (p > p[np.arange(len(p)), targets][:, None]).sum(axis=1)
            self.hits[key][0] += int(np.sum(scored & (rank < 1)))
            self.hits[key][1] += int(np.sum(scored & (rank < 3)))
        self.agree1 += int(np.sum(p_src.argmax(axis=1) == p_q.argmax(axis=1)))
        self.agree3 += int(np.sum(np.all(_top3(p_src) == _top3(p_q), axis=1)))
        self.max_abs_dprob = max(self.max_abs_dprob, float(np.abs(p_src - p_q).max(initial=0.0)))

    def summary(self) -> dict:
        n = max(self.positions, 1)
        return {"positions": self.positions,
                "source": {"top1": self.hits["source"][0] / n, "top3": self.hits["source"][1] / n},
                "quantized": {"top1": self.hits["quantized"][0] / n, "top3": self.hits["quantized"][1] / n},
                "top1_agreement": self.agree1 / n, "top3_agreement": self.agree3 / n,
                "max_abs_dprob": self.max_abs_dprob}


def _top3(p: np.ndarray) -> np.ndarray:
    k = min(3, p.shape[1])
    return np.sort(np.argpartition(-p, k - 1, axis=1)[:, :k], axis=1)


def check(source: Source, quantized: Path, chunks: Runner, runtime: str, eval_text: Path | None = None,
          max_chars: int = EVAL_CHARS) -> dict:
    """Stream held-out text through the source and the quantized model on the same runtime
    (``chunks``: the target's runner, ``runtime``: its name for the record)."""
    task, vocab = _task_and_vocab(source)
    data, text = eval_data(source, task, vocab, eval_text, max_chars)
    tally = Tally()
    scored_ok = (lambda t: t != UNK) if task == "autocomplete" else (lambda t: np.ones_like(t, bool))
    streams = (chunks(path, data, source.manifest) for path in (source.path, quantized))
    for (p_src, targets), (p_q, _) in zip(*streams):
        tally.add(p_src, p_q, targets, scored_ok(targets))
    return {"text": text, "chars": data.n_chars(), "runtime": runtime,
            "accuracy": "argmax over all outputs at every non-pad position; <unk> targets are misses",
            **tally.summary()}


def _task_and_vocab(source: Source) -> tuple[str, Vocab]:
    if source.kind == "mlx":
        from edge_rnn.model import load_config

        config = load_config(source.path)
        path = source.path / VOCAB
        return config.task, Vocab.load(path) if path.is_file() else Vocab.from_counts([])
    words = json.loads((source.path / VOCAB).read_text())["words"]
    return source.manifest["model"]["task"], Vocab(words)


def eval_data(source: Source, task: str, vocab: Vocab, eval_text: Path | None,
              max_chars: int) -> tuple[Dataset, str]:
    """The held-out observations (at most ``max_chars`` characters) and where they came from."""
    if eval_text is not None:
        text, where = load_corpus(str(eval_text)), str(eval_text)
    else:
        run_dir = source.path if source.kind == "mlx" else _recorded_run(source.manifest)
        test = _run_test_split(run_dir, vocab) if run_dir is not None else None
        if test is not None:
            return _first_chars(test, max_chars), f"test split of {run_dir}, first ~{max_chars:,} characters"
        text = demo_corpus(n_sentences=DEMO_SENTENCES, seed=DEMO_SEED)
        where = f"edge_rnn.data.demo_corpus(n_sentences={DEMO_SENTENCES}, seed={DEMO_SEED})"
    data = encode_autocomplete(text, vocab) if task == "autocomplete" else encode_charlm(text)
    if len(data) == 0:
        raise EdgeRNNError(f"no usable text to check the quantized model on in {where}")
    return _first_chars(data, max_chars), f"{where}, first ~{max_chars:,} characters"


def _recorded_run(manifest: dict) -> Path | None:
    path = (manifest.get("source") or {}).get("run_dir")
    return Path(path) if path and Path(path).is_dir() else None


def _run_test_split(run_dir: Path, vocab: Vocab) -> Dataset | None:
    """The run's test split, if its corpus is at hand (never a download) and gives the same vocab."""
    from edge_rnn.data import cache_dir
    from edge_rnn.evaluate import run_splits
    from edge_rnn.model import TRAIN

    try:
        corpus = json.loads((run_dir / TRAIN).read_text())["corpus"]
        if corpus == "text8" and not (cache_dir() / "text8.zip").is_file():
            return None
        splits = run_splits(run_dir, None)
    except (OSError, KeyError, json.JSONDecodeError, EdgeRNNError):
        return None
    if splits.vocab is not None and splits.vocab.words != vocab.words:
        return None  # e.g. a bundle whose vocabulary was reordered: its labels differ
    return splits.test


def _first_chars(data: Dataset, max_chars: int) -> Dataset:
    """The first observations, in text order, holding at most ``max_chars`` characters (>= 1)."""
    keep = max(1, int(np.searchsorted(np.cumsum(data.lengths), max_chars, side="right")))
    return Dataset(data.chars, data.targets, data.starts[:keep], data.lengths[:keep])


def stream(data: Dataset, batch: int, step: Callable[[np.ndarray, Any], tuple[np.ndarray, Any]],
            start: Callable[[int], Any]) -> Chunks:
    """Feed ``batch`` observations at a time, one character per call, through ``step``; yield the
    probabilities of the rows still inside their observation."""
    for first in range(0, len(data), batch):
        chars, targets = data.batch(np.arange(first, min(first + batch, len(data))))
        state = start(len(chars))
        for t in range(chars.shape[1]):
            probs, state = step(chars[:, t], state)
            live = targets[:, t] != PAD
            yield np.asarray(probs, np.float32)[live], targets[live, t]

