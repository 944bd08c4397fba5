"""Streaming autocomplete: one model step per keystroke, suggestions for the word being typed.

A ``Session`` holds the recurrent state and the text typed so far; it runs on a backend with one
small interface (``initial_state()``, ``step(char_id, state) -> (StepOutput, state)``), so a run
directory (MLX) and an exported bundle (ONNX Runtime) give the same suggestions through the same
code. ``open_session(path)`` picks the backend from what the folder holds.

Suggestions for a partly typed word come from the full distribution when the backend has it (MLX,
or an ONNX bundle exported ``with_log_probs``): the most probable words that start with the typed
prefix, <pad> and <unk> excluded. Without it, only the graph's top-k ids can be filtered.
Probabilities are the model's own (not renormalised over the matching words).

A bundle with the prefix-range head (``edge_rnn.export.onnx``) computes only the rows of the words
that start with the typed prefix: every step passes the backend the prefix as it stands after the
keystroke, and the backend turns it into an id range by bisection over the sorted words. Its
top-k are then the prefix-filtered suggestions (same words, same order as the full head's filtered
distribution, barring exact float32 ties there: ``edge_rnn.export.onnx``), with probabilities
conditional on the prefix (renormalised over it).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_rnn import data
from edge_rnn.io import EdgeRNNError
from edge_rnn.vocab import PAD, SYMBOLS, UNK

SYMBOL_ID = {s: k for k, s in enumerate(SYMBOLS) if k != PAD}


def normalise(text: str) -> str:
    """Training's normalisation (``edge_rnn.data.normalise``: ASCII-lowercase, a-z kept, any other
    run of characters one space), keeping a space at either end where ``text`` has a non-letter:
    typed text is a fragment, and a trailing space means "this word is finished"."""
    core = data.normalise(text)
    if not core:
        return " " if text else ""
    lead = "" if _is_letter(text[0]) else " "
    trail = "" if _is_letter(text[-1]) else " "
    return lead + core + trail


def _is_letter(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


@dataclass
class StepOutput:
    """What one keystroke yields: the top-k, and the full distribution where available."""

    top_ids: np.ndarray  # (k,) output ids, most probable first
    top_probs: np.ndarray  # (k,)
    log_probs: np.ndarray | None  # (n_outputs,) or None


class Backend(Protocol):
    """What a Session needs from a model; the state is opaque to the Session."""

    labels: list[str]  # output id -> word (autocomplete) or symbol (char LM)
    task: str

    def initial_state(self) -> Any: ...

    def step(self, char_id: int, state: Any, prefix: str = "") -> tuple[StepOutput, Any]:
        """One keystroke. ``prefix``: the typed part of the current word after it ("" at a word
        boundary); a prefix-range head computes only those words, other backends ignore it."""
        ...


def prefix_range(sorted_words: list[str], prefix: str, offset: int = 2) -> tuple[int, int]:
    """``[start, end)`` of the ids of the words starting with ``prefix``, for a vocabulary whose
    ids ``offset`` onwards are ``sorted_words``; every word for an empty prefix, ``start == end``
    when none matches. '{' follows 'z', so ``prefix + '{'`` bounds every a-z continuation."""
    if not prefix:
        return offset, offset + len(sorted_words)
    lo = bisect.bisect_left(sorted_words, prefix)
    hi = bisect.bisect_left(sorted_words, prefix + "{", lo)
    return offset + lo, offset + hi


def top_k_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """``np.argsort(-scores, kind="stable")[:k]`` in O(V) instead of O(V log V): a keystroke must
    not pay for sorting 10,000 words. Ties at the cut keep the lowest ids, as the stable sort does."""
    if k >= scores.size:
        return np.argsort(-scores, kind="stable")
    cut = np.partition(scores, scores.size - k)[scores.size - k]  # the k-th largest value
    candidates = np.flatnonzero(scores >= cut)  # k or more (ties), in id order
    return candidates[np.argsort(-scores[candidates], kind="stable")[:k]]


def _labels(task: str, words: list[str]) -> list[str]:
    return words if task == "autocomplete" else SYMBOLS


class MLXBackend:
    """The trained model of a run directory, stepped in MLX (the reference for every export)."""

    def __init__(self, run_dir: Path, top_k: int = 3):
        import mlx.core as mx  # only this backend needs MLX

        from edge_rnn.model import load

        self._mx = mx
        self.model, vocab = load(Path(run_dir))
        self.task = self.model.config.task
        if vocab is None and self.task == "autocomplete":
            raise EdgeRNNError(f"{run_dir} has no vocab.json; suggestions need the output words")
        self.labels = _labels(self.task, vocab.words if vocab else [])
        self.top_k = top_k

    def initial_state(self) -> Any:
        return self.model.initial_state(1)

    def step(self, char_id: int, state: Any, prefix: str = "") -> tuple[StepOutput, Any]:
        mx = self._mx
        logits, state = self.model.step(mx.array([char_id], dtype=mx.int32), state)
        log_probs = logits[0] - mx.logsumexp(logits[0])
        mx.eval(log_probs, state)
        log_probs = np.array(log_probs)
        top = top_k_stable(log_probs, self.top_k)
        return StepOutput(top, np.exp(log_probs[top]), log_probs), state


class ONNXBackend:
    """An exported ONNX bundle in ONNX Runtime: needs only the bundle, never the run."""

    def __init__(self, bundle_dir: Path, threads: int = 1):
        import onnxruntime as ort

        from edge_rnn.export.bundle import VOCAB, read_manifest

        bundle_dir = Path(bundle_dir)
        manifest = read_manifest(bundle_dir)
        if manifest.get("target") != "onnx":
            raise EdgeRNNError(f"{bundle_dir} is a {manifest.get('target')} bundle; "
                               "this runtime runs ONNX bundles (Core ML runs on Apple devices)")
        self.task = manifest["model"]["task"]
        self.labels = _labels(self.task, json.loads((bundle_dir / VOCAB).read_text())["words"])
        self.state_names = [s["name"] for s in manifest["state"]]
        self.units = manifest["model"]["units"]
        self.prefix_head = bool(manifest["export"].get("prefix_head"))
        self.sorted_words = self._sorted_words(bundle_dir) if self.prefix_head else []
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1  # a keyboard has one core
        path = bundle_dir / manifest["export"]["model"]
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def initial_state(self) -> list[np.ndarray]:
        return [np.zeros((1, self.units), np.float32) for _ in self.state_names]

    def _sorted_words(self, bundle_dir: Path) -> list[str]:
        """The words of a prefix-range head, which must be sorted for the ranges to hold."""
        words = self.labels[2:]
        if any(a >= b for a, b in zip(words, words[1:])):
            raise EdgeRNNError(f"{bundle_dir}: the prefix-range head needs vocab.json's words sorted "
                               "alphabetically; this one is not (re-export the bundle)")
        return words

    def range(self, prefix: str) -> np.ndarray:
        """The ``range`` input of a prefix-range head for the typed ``prefix``."""
        return np.array(prefix_range(self.sorted_words, prefix), np.int32)

    def step(self, char_id: int, state: list[np.ndarray], prefix: str = "") -> tuple[StepOutput, list[np.ndarray]]:
        feed = {"char": np.array([char_id], np.int32), **dict(zip(self.state_names, state))}
        if self.prefix_head:
            feed["range"] = self.range(prefix)
        out = dict(zip(self.output_names, self.session.run(None, feed)))
        log_probs = out["log_probs"][0] if "log_probs" in out else None
        new_state = [out[f"{name}_next"] for name in self.state_names]
        return StepOutput(out["top_ids"][0], out["top_probs"][0], log_probs), new_state


class Session:
    """A text field: feed it keystrokes, ask it for suggestions."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._labels = np.array(backend.labels)
        self._allowed = np.ones(len(backend.labels), bool)  # outputs that may be suggested
        self._allowed[PAD] = False
        if backend.task == "autocomplete":
            self._allowed[UNK] = False
        self.reset()

    def reset(self) -> None:
        """Back to an empty text field (zero state)."""
        self.state = self.backend.initial_state()
        self.typed = ""  # the symbols stepped so far
        self.last: StepOutput | None = None

    def feed(self, text: str) -> None:
        """Normalise ``text`` and step each symbol. The first symbol after ``reset`` is a space
        (every training sequence starts with one), and no two spaces are stepped in a row."""
        symbols = normalise(text)
        if not self.typed and not symbols.startswith(" "):
            symbols = " " + symbols
        if self.typed.endswith(" ") and symbols.startswith(" "):
            symbols = symbols[1:]
        for ch in symbols:
            self.step(SYMBOL_ID[ch])

    def step(self, char_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One keystroke by symbol id -> the model's top-k ids and probabilities (all outputs)."""
        if not 0 <= char_id < len(SYMBOLS):
            raise EdgeRNNError(f"symbol id must be in 0..{len(SYMBOLS) - 1}, got {char_id}")
        typed = self.typed + (SYMBOLS[char_id] if char_id != PAD else "")
        self.last, self.state = self.backend.step(char_id, self.state, self._word(typed))
        self.typed = typed
        return self.last.top_ids, self.last.top_probs

    def prefix(self) -> str:
        """The typed part of the current word ("" right after a space): what suggestions match."""
        return self._word(self.typed)

    def _word(self, typed: str) -> str:
        return typed.rsplit(" ", 1)[-1] if self.backend.task == "autocomplete" else ""

    def suggest(self, k: int = 3) -> list[tuple[str, float]]:
        """Up to ``k`` (word, probability) for the word being typed; [] before anything is fed.

        Autocomplete: words starting with the typed part of the current word (all words right
        after a space). Char LM: the most probable next symbols.
        """
        if self.last is None:
            return []
        allowed = self._allowed
        prefix = self.prefix()
        if prefix:
            allowed = allowed & np.char.startswith(self._labels, prefix)
        if self.last.log_probs is not None:
            ids = np.flatnonzero(allowed)
            probs = np.exp(self.last.log_probs[ids])
            best = np.argsort(-probs, kind="stable")[:k]
            return [(str(self._labels[ids[j]]), float(probs[j])) for j in best]
        top = [(int(i), float(p)) for i, p in zip(self.last.top_ids, self.last.top_probs) if allowed[i]]
        return [(str(self._labels[i]), p) for i, p in top[:k]]

    def complete(self, text: str, k: int = 3) -> list[tuple[str, float]]:
        """One shot: suggestions after typing ``text`` into an empty field."""
        self.reset()
        self.feed(text)
        return self.suggest(k)


def open_session(path: Path, threads: int = 1) -> Session:
    """A session on a run directory (``config.json``: MLX) or a bundle (``manifest.json``: ONNX)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return Session(ONNXBackend(path, threads=threads))
    if (path / "config.json").is_file():
        return Session(MLXBackend(path))
    raise EdgeRNNError(f"{path} is neither a run directory (config.json) nor a bundle (manifest.json)")
