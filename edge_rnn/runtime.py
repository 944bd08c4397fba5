"""The keyboard-grade runtime: one model step per keystroke, backspace, accept, suggestions.

A ``Session`` is a text field. ``type(text)`` steps one input symbol per character,
``backspace(n)`` takes characters back, ``accept(word)`` puts a suggestion in place of the partly
typed word, ``suggestions(k)`` lists the words consistent with what is typed. Every app-side
runtime (``web/``, ``examples/``) copies these semantics, names and structure.

It runs on a backend with one small interface, so a run directory (MLX, the reference) and an
exported bundle (ONNX Runtime: fp32, quantized, prefix-range head) give the same suggestions
through the same code; ``open_session(path)`` picks the backend from what the folder holds::

    initial_state() -> state
    step(char_id, state, prefix) -> (StepOutput, state)      # one keystroke
    prefill(char_ids, state, prefix) -> (StepOutput, state)  # many symbols in one call

**Backspace.** Before each step the session pushes what it had (text, state, output) on a bounded
stack (``stack_depth``, 64 by default), so a backspace is a pop: the state and suggestions are
bit-identical to having typed the shorter text. Past the stack's bottom the session rebuilds the
state with one ``prefill`` call (the bundle's prefill graph) from a *mark*: the state it had
before each word boundary it stepped (a space) is kept, by absolute position, for the last
``max_chars + stack_depth`` boundaries, so a rebuild prefills at most the last word from the
nearest mark (from the zero state when the retained text has none). Prefill is bit-identical to
stepping for fp32 bundles (the prefill graph computes the same arithmetic) and MLX (the same
steps in one lazy graph), so a rebuild is too (``tests/test_runtime.py``); for quantized
bundles it is equal within quantization noise (dynamic activation scales are taken per call).

**Output ring.** ONNX Runtime's ``run`` allocates every output of every keystroke, and a 64-deep
stack frees one keystroke's outputs (40 KB of ``log_probs`` at 10k words) 64 keystrokes later,
when nothing of them is in any cache: together 15-35 us of a 220-280 us step (README). So a Session
numbers its keystrokes (``slot``: +1 per step, -1 per backspace pop; the stack's entries are the
last ``stack_depth`` slots, consecutive) and an ONNX backend keeps ``stack_depth + 2`` preallocated
slots that ONNX Runtime writes in place through one IOBinding each; a keystroke whose state is the
previous slot's reads it in place. Outputs and states of a slot are valid until the slot comes
round again: what must live longer (the marks) is copied with ``Backend.own``. A prefix-range head
whose range holds fewer than ``top_k`` words (a shorter top-k) runs the plain way. The ring is
this Python backend's alone: ``web/runtime.mjs`` runs onnxruntime-web plainly (its cost there
is not measured), with the same Session otherwise.

**Long input.** Models are trained on observations of at most 200 characters that start from a
zero state. ``restart="continuous"`` (the default) lets the state run on for the whole text,
beyond anything seen in training; it keeps the last ``max_chars`` characters (cut at a marked word
boundary, so backspace stays exact however long the text). ``restart="observation"`` does what
training did: at a word boundary, once the observation since the last restart could not take
another word within ``max_chars``, it restarts from the zero state with the last
``context_chars`` characters of whole words as context, prefilled in one call.
``scripts/bench_keyboard.py`` measures both on held-out text. On 2026-12-04 continuous streaming
was equal within 0.04 pt or ahead on every edge preset (edge-gru, edge-nlstm equal; edge-cifg 0.5 pt
top-1 and 0.2 pt KSR ahead), and it skips the restarts' prefill calls (~5 % of a keystroke, a
2 ms spike at each restart), so it is the default. Restarts were the default from 2026-12-03,
when the CIFG without a head bottleneck drifted running on (restarts +0.3 pt top-1, +1.3 pt KSR);
a model that drifts so can still ask for them.

**Suggestions.** The candidates for a partly typed word are one contiguous range of the
alphabetically sorted words, found by bisection (``prefix_range``); ``<pad>`` and ``<unk>`` are
never suggested; ties in probability keep the lower output id first. With the full distribution
(MLX, or an ONNX bundle exported with ``log_probs``) the k most probable words of the range are
taken; a prefix-range head bundle computes only the range's rows, so its top-k already are the
suggestions (probabilities renormalised over the range); a bundle with neither can only filter
its top-k. Probabilities are otherwise the model's own (not renormalised over the range).
"""

from __future__ import annotations

import bisect
import json
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from edge_rnn import data
from edge_rnn.io import EdgeRNNError
from edge_rnn.vocab import PAD, SPACE, SYMBOLS, UNK

SYMBOL_ID = {s: k for k, s in enumerate(SYMBOLS) if k != PAD}
RESTARTS = ("continuous", "observation")
RESTART = "continuous"  # the default policy (module docstring: equal or better on every edge preset)
STACK_DEPTH = 64  # keystrokes a backspace can take back without a rebuild
MAX_CHARS = 200  # the longest observation training saw (edge_rnn.data)
WORD_ROOM = 16  # characters kept free for the next word when deciding to restart
CONTEXT_CHARS = 30  # trailing whole words carried into a restarted observation (README: measured)
# ranges this small are sorted outright (top_k_stable: 2 us vs 7 us at 15); a suggestion search's
# range on WikiText-2: median 2 words, 99 % <= 32
SORT_BELOW = 32


def normalise(text: str) -> str:
    """Training's normalisation (``edge_rnn.data.normalise``: ASCII-lowercase, a-z kept, any other
    run of characters one space), keeping a space at either end where ``text`` has a non-letter:
    typed text is a fragment, and a trailing space means "this word is finished"."""
    if text in _KEYSTROKE:  # one plain key: the common case, without the vectorised machinery
        return _KEYSTROKE[text]
    core = data.normalise(text)
    if not core:
        return " " if text else ""
    lead = "" if _is_letter(text[0]) else " "
    trail = "" if _is_letter(text[-1]) else " "
    return lead + core + trail


_KEYSTROKE = {ch: ch.lower() for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"} | {" ": " "}


def field_symbols(raw: str) -> str:
    """The symbols a fresh session steps for ``raw``: normalised, a leading space, no two spaces."""
    symbols = normalise(raw)
    return symbols if not symbols or symbols.startswith(" ") else " " + symbols


def _is_letter(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


@dataclass(slots=True)
class StepOutput:
    """What one keystroke yields: the top-k, and the full distribution where available."""

    top_ids: np.ndarray  # (k,) output ids, most probable first
    top_probs: np.ndarray  # (k,)
    log_probs: np.ndarray | None  # (n_outputs,) or None


class Backend(Protocol):
    """What a Session needs from a model; the state is opaque to the Session."""

    labels: list[str]  # output id -> word (autocomplete) or symbol (char LM)
    task: str
    prefix_head: bool  # True: top-k is computed over the prefix's id range only

    def initial_state(self) -> Any: ...

    def step(self, char_id: int, state: Any, prefix: str = "", slot: int | None = None) -> tuple[StepOutput, Any]:
        """One keystroke. ``prefix``: the typed part of the current word after it ("" at a word
        boundary); a prefix-range head computes only those words, other backends ignore it.
        ``slot``: the keystroke's number in a Session (module docstring, "Output ring"); a backend
        may write the outputs into its ring slot instead of new arrays."""
        ...

    def ring(self, depth: int) -> None:
        """Keep the outputs of the last ``depth`` slots valid (a Session's stack depth)."""
        ...

    def own(self, state: Any) -> Any:
        """``state``, safe to keep for any number of later steps (a copy where it lives in a ring)."""
        ...

    def prefill(self, char_ids: list[int], state: Any, prefix: str = "") -> tuple[StepOutput, Any]:
        """Many symbols at once (at least one): the state and output after the last of them."""
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


def top_k_stable(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``k`` largest ``scores``, largest first; ties go to the lower ``ids``
    (default: the positions themselves, i.e. ``np.argsort(-scores, kind="stable")[:k]``). O(V), not
    O(V log V): a keystroke must not pay for sorting 10,000 words."""
    n = scores.size
    if n <= max(SORT_BELOW, k):  # a few candidates (3+ typed letters): one sort is cheaper than partitioning
        return np.lexsort((np.arange(n) if ids is None else ids, -scores))[:k]
    cut = np.partition(scores, n - k)[n - k]  # the k-th largest value
    positions = np.flatnonzero(scores >= cut)  # k or more (ties)
    tie = positions if ids is None else ids[positions]
    return positions[np.lexsort((tie, -scores[positions]))[:k]]


_CHAR_INPUT = [np.array([k], np.int32) for k in range(len(SYMBOLS))]  # the ``char`` feed of each symbol


def _labels(task: str, words: list[str]) -> list[str]:
    return words if task == "autocomplete" else SYMBOLS


class MLXBackend:
    """The trained model of a run directory, stepped in MLX (the reference for every export)."""

    prefix_head = False

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

    def step(self, char_id: int, state: Any, prefix: str = "", slot: int | None = None) -> tuple[StepOutput, Any]:
        mx = self._mx
        logits, state = self.model.step(mx.array([char_id], dtype=mx.int32), state)
        return self._output(logits[0], state), state

    def ring(self, depth: int) -> None:
        """MLX arrays are immutable: every step's outputs are new, nothing to keep."""

    def own(self, state: Any) -> Any:
        return state

    def prefill(self, char_ids: list[int], state: Any, prefix: str = "") -> tuple[StepOutput, Any]:
        """Every step in one lazy graph, evaluated once. Not the sequence call: its input
        projection is one (T, E) matmul, and BLAS rounds that differently from T (1, E) ones
        (OpenBLAS: up to 2e-6 here), which would break "backspace equals typing the shorter text"."""
        mx = self._mx
        for char_id in char_ids:
            logits, state = self.model.step(mx.array([char_id], dtype=mx.int32), state)
        return self._output(logits[0], state), state

    def _output(self, logits, state) -> StepOutput:
        mx = self._mx
        log_probs = logits - mx.logsumexp(logits)
        mx.eval(log_probs, state)
        log_probs = np.array(log_probs)
        top = top_k_stable(log_probs, self.top_k)
        return StepOutput(top, np.exp(log_probs[top]), log_probs)


class ONNXBackend:
    """An exported ONNX bundle in ONNX Runtime: needs only the bundle, never the run."""

    def __init__(self, bundle_dir: Path, threads: int = 1, in_place: bool = True):
        """``in_place=False``: never keep a ring, every step returns new arrays (how a
        benchmark runs graphs that have no ring, like for like)."""
        import onnxruntime as ort

        from edge_rnn.export.bundle import VOCAB, read_manifest

        self._ort = ort
        self.bundle_dir = bundle_dir = Path(bundle_dir)
        self.manifest = manifest = read_manifest(bundle_dir)
        if manifest.get("target") != "onnx":
            raise EdgeRNNError(f"{bundle_dir} is a {manifest.get('target')} bundle; "
                               "this runtime runs ONNX bundles (Core ML runs on Apple devices)")
        self.task = manifest["model"]["task"]
        self.labels = _labels(self.task, json.loads((bundle_dir / VOCAB).read_text())["words"])
        self.state_names = [s["name"] for s in manifest["state"]]
        self.units = manifest["model"]["units"]
        self.prefix_head = bool(manifest["export"].get("prefix_head"))
        self.top_k = manifest["top_k"]
        self.sorted_words = self._sorted_words(bundle_dir) if self.prefix_head else []
        self.options = ort.SessionOptions()
        # a keyboard has one core to spare
        self.options.intra_op_num_threads, self.options.inter_op_num_threads = threads, 1
        # a prefix-range head split by its If's branches: the session picks the graph per range
        split = self.prefix_head and manifest["export"]["prefix_head"].get("split")
        self.session = self._load(split["narrow"] if split else manifest["export"]["model"])
        self._wide = self._load(split["wide"]) if split else None
        self._wide_above = manifest["export"]["prefix_head"]["full_gemm_above_rows"] if split else 0
        # a word-boundary list: its own graph for the range of every word
        self._boundary = self._load(split["boundary"]) if split and split.get("boundary") else None
        self._boundary_range = manifest["export"]["prefix_head"]["word_boundary_range"] if self._boundary else None
        self._has_log_probs = "log_probs" in {o.name for o in self.session.get_outputs()}
        # fixed fetch order, so a keystroke unpacks a list instead of building a dict; states last
        self._n_fixed = 3 if self._has_log_probs else 2
        self._fetch = ["top_ids", "top_probs", *(["log_probs"] if self._has_log_probs else []),
                       *(f"{name}_next" for name in self.state_names)]
        self._prefill = None  # loaded on first use: most sessions never need it
        self.in_place = in_place
        self._slots: list[Slot] = []  # the output ring (``ring``): none until a Session asks

    def _load(self, file: str):
        return self._ort.InferenceSession(str(self.bundle_dir / file), self.options,
                                          providers=["CPUExecutionProvider"])

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

    def step(self, char_id: int, state: list[np.ndarray], prefix: str = "",
             slot: int | None = None) -> tuple[StepOutput, list[np.ndarray]]:
        """One keystroke; a split prefix-range head runs its wide graph for wide ranges (the
        branch its ``If`` would take), its narrow graph otherwise. With a ``slot`` and a ring, in
        place (``_step_in_ring``); otherwise the outputs are new arrays."""
        return self.step_range(char_id, state, self.range(prefix) if self.prefix_head else None, slot)

    def step_range(self, char_id: int, state: list[np.ndarray], span: np.ndarray | None,
                   slot: int | None = None) -> tuple[StepOutput, list[np.ndarray]]:
        """``step`` with the prefix range already computed (``None`` without a prefix-range head)."""
        graph = self.graph_for(span) if self.prefix_head else self.session
        if slot is not None and self._slots and (span is None or span[1] - span[0] >= self.top_k):
            return self._step_in_ring(graph, char_id, state, span, slot % len(self._slots))
        feed = dict(zip(self.state_names, state))
        feed["char"] = _CHAR_INPUT[char_id]
        if span is not None:
            feed["range"] = span
        return self._run(graph, feed)

    # ---- the output ring -----------------------------------------------------------------------

    def ring(self, depth: int) -> None:
        """Preallocate ``depth + 2`` output slots (module docstring, "Output ring")."""
        if not self.in_place or any(o["dtype"] not in _DTYPES for o in self.manifest["outputs"]):
            return  # every step runs the plain way
        shape = {"batch": 1, "k": self.top_k}
        self._slots = [Slot.new(self.manifest["outputs"], shape, self.state_names) for _ in range(depth + 2)]
        self._char = np.zeros(1, np.int32)  # the inputs every binding reads, set before each run
        self._range = np.zeros(2, np.int32)
        self._loose = [np.zeros((1, self.units), np.float32) for _ in self.state_names]  # a state from elsewhere
        self._bindings: dict[tuple[Any, int, bool], Any] = {}  # (graph, slot, chained) -> IOBinding

    def own(self, state: list[np.ndarray]) -> list[np.ndarray]:
        return [a.copy() for a in state] if self._slots else state

    def _step_in_ring(self, graph, char_id: int, state: list[np.ndarray], span: np.ndarray | None,
                      k: int) -> tuple[StepOutput, list[np.ndarray]]:
        """Write the keystroke's outputs into slot ``k``: its graph reads the state in place when
        ``state`` is slot ``k - 1``'s (the keystroke before), else from a copy (after a rebuild,
        a restart, a backspace into a state from elsewhere)."""
        chained = state is self._slots[k - 1].state
        if not chained:
            for loose, a in zip(self._loose, state):
                loose[...] = a
        self._char[0] = char_id
        if span is not None:
            self._range[...] = span
        binding = self._bindings.get((graph, k, chained))
        if binding is None:
            binding = self._bindings[graph, k, chained] = self._bind(graph, k, chained)
        graph.run_with_iobinding(binding)
        slot = self._slots[k]
        return slot.out, slot.state

    def _bind(self, graph, k: int, chained: bool):
        """The IOBinding of slot ``k`` on ``graph``: buffers by address, so each run reads and
        writes them in place (``_step_in_ring`` makes each on first use and keeps it)."""
        binding = graph.io_binding()

        def bind(name: str, a: np.ndarray, output: bool = False) -> None:
            how = binding.bind_output if output else binding.bind_input
            how(name, "cpu", 0, a.dtype.type, list(a.shape), a.ctypes.data)

        bind("char", self._char)
        if self.prefix_head:
            bind("range", self._range)
        for name, a in zip(self.state_names, self._slots[k - 1].state if chained else self._loose):
            bind(name, a)
        for name, a in self._slots[k].buffers.items():
            bind(name, a, output=True)
        return binding

    def graph_for(self, span: np.ndarray):
        """The step graph for a prefix range: the boundary list's graph for the range of every
        word, if the bundle has one; a split head's wide graph when the range is wider than
        ``full_gemm_above_rows`` (the branch its ``If`` would take); else ``session``."""
        if self._boundary is not None and span[0] == self._boundary_range[0] and span[1] == self._boundary_range[1]:
            return self._boundary
        wide = self._wide is not None and span[1] - span[0] > self._wide_above
        return self._wide if wide else self.session

    def prefill(self, char_ids: list[int], state: list[np.ndarray], prefix: str = "") -> tuple[StepOutput, list[np.ndarray]]:
        """The bundle's prefill graph: the whole string in one call."""
        prefill = self.manifest["export"].get("prefill")
        if not prefill:
            raise EdgeRNNError(f"{self.bundle_dir} has no prefill graph; re-export the bundle")
        if self._prefill is None:
            self._prefill = self._load(prefill["file"])
        feed = {"chars": np.array([list(char_ids)], np.int32), **dict(zip(self.state_names, state))}
        if self.prefix_head:
            feed["range"] = self.range(prefix)
        return self._run(self._prefill, feed)

    def _run(self, session, feed: dict) -> tuple[StepOutput, list[np.ndarray]]:
        out = session.run(self._fetch, feed)
        return StepOutput(out[0][0], out[1][0], out[2][0] if self._has_log_probs else None), out[self._n_fixed:]


_DTYPES = {"float32": np.float32, "int32": np.int32, "int64": np.int64}


class Slot(NamedTuple):
    """One keystroke's outputs in an ONNXBackend's ring: ONNX Runtime writes them in place."""

    buffers: dict[str, np.ndarray]  # every output of the step graph, by name
    out: StepOutput  # views of the buffers
    state: list[np.ndarray]  # views of the ``*_next`` buffers: the state after the keystroke

    @classmethod
    def new(cls, outputs: list[dict], shape: dict[str, int], state_names: list[str]) -> Slot:
        buffers = {o["name"]: np.zeros([shape.get(d, d) for d in o["shape"]], _DTYPES[o["dtype"]])
                   for o in outputs}
        log_probs = buffers["log_probs"][0] if "log_probs" in buffers else None
        out = StepOutput(buffers["top_ids"][0], buffers["top_probs"][0], log_probs)
        return cls(buffers, out, [buffers[f"{name}_next"] for name in state_names])


class Snapshot(NamedTuple):
    """Everything a keystroke changes: what a backspace restores."""

    text: str
    state: Any
    last: StepOutput | None
    start: int  # absolute position of text[0] in everything typed (continuous mode drops the front)


class Mark(NamedTuple):
    """The state before the space at absolute position ``pos``: where a rebuild may start."""

    pos: int
    state: Any


class Session:
    """A text field: type into it, take characters back, accept suggestions."""

    def __init__(self, backend: Backend, stack_depth: int = STACK_DEPTH, restart: str = RESTART,
                 max_chars: int = MAX_CHARS, context_chars: int = CONTEXT_CHARS):
        if restart not in RESTARTS:
            raise EdgeRNNError(f"unknown restart policy {restart!r}; choose one of: {', '.join(RESTARTS)}")
        if stack_depth < 1 or max_chars < 2 * WORD_ROOM or not 0 <= context_chars < max_chars - WORD_ROOM:
            raise EdgeRNNError(f"impossible session sizes: stack_depth={stack_depth}, "
                               f"max_chars={max_chars}, context_chars={context_chars}")
        self.backend = backend
        self.stack_depth, self.restart = stack_depth, restart
        self.max_chars, self.context_chars = max_chars, context_chars
        self._index = WordIndex(backend.labels, backend.task)
        self._words = backend.task == "autocomplete"  # suggestions are words: a prefix filters them
        backend.ring(stack_depth)
        self.reset()

    # ---- the text field ------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to an empty text field (zero state)."""
        self.text = ""  # the retained symbols: the state is a function of them (and of _start's mark)
        self.state = self.backend.initial_state()
        self.last: StepOutput | None = None
        self._start = 0  # absolute position of text[0]
        self._slot = 0  # the keystroke's ring slot: +1 per step, -1 per pop (module docstring)
        self._stack: deque[Snapshot] = deque(maxlen=self.stack_depth)
        # spaces are >= 2 symbols apart: this many marks reach back past the stack's oldest text
        self._marks: deque[Mark] = deque(maxlen=self.max_chars + self.stack_depth)

    def type(self, text: str) -> None:
        """Normalise ``text`` and step each symbol. The first symbol after ``reset`` is a space
        (every training observation starts with one), and no two spaces are stepped in a row."""
        for ch in normalise(text):
            if ch == " ":
                if not self.text.endswith(" "):
                    self.step(SPACE)
                continue
            if not self.text:
                self.step(SPACE)
            self.step(SYMBOL_ID[ch])

    def backspace(self, n: int = 1) -> None:
        """Take back the last ``n`` symbols: from the stack while it holds them, then one rebuild
        from the retained text (``prefill``). The leading space goes last, leaving an empty field."""
        if n < 0:
            raise EdgeRNNError(f"backspace needs n >= 0, got {n}")
        while n and self._stack:
            self.text, self.state, self.last, self._start = self._stack.pop()
            self._slot -= 1
            n -= 1
        self._forget(self._start + len(self.text))
        if n:
            self._rebuild(self.text[: max(len(self.text) - n, 0)])

    def edit(self, before: str, after: str) -> None:
        """Follow a text box whose raw text went from ``before`` to ``after``: type what was
        appended, backspace what was deleted at the end, retype after an edit in the middle."""
        old, new = field_symbols(before), field_symbols(after)
        if new.startswith(old):
            self.type(after[len(before):] if after.startswith(before) else new[len(old):])
        elif old.startswith(new):
            self.backspace(len(old) - len(new))
        else:
            self.reset()
            self.type(after)

    def accept(self, word: str) -> None:
        """Put ``word`` in place of the partly typed word and finish it with a space."""
        if self.backend.task != "autocomplete" or not word or not all("a" <= ch <= "z" for ch in word):
            raise EdgeRNNError(f"cannot accept {word!r}: suggestions are words of a-z")
        partial = self.prefix
        if not word.startswith(partial):
            self.backspace(len(partial))
            partial = ""
        self.type(word[len(partial):] + " ")

    def step(self, char_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One symbol by id (no normalisation) -> the model's top-k ids and probabilities (on an
        ONNX backend, views of its output ring: valid for the next ``stack_depth`` keystrokes;
        copy what you keep longer)."""
        if not 0 < char_id < len(SYMBOLS):
            raise EdgeRNNError(f"symbol id must be in 1..{len(SYMBOLS) - 1}, got {char_id}")
        self._stack.append(Snapshot(self.text, self.state, self.last, self._start))
        self._slot += 1
        text = self.text + SYMBOLS[char_id]
        if char_id == SPACE and self._must_restart(text):
            self._restart(self._context(text))
            return self.last.top_ids, self.last.top_probs
        if char_id == SPACE:
            self._mark(self._start + len(self.text))
        self.last, self.state = self.backend.step(char_id, self.state, self._word(text), self._slot)
        self.text = text if len(text) <= self.max_chars else self._retain(text)
        return self.last.top_ids, self.last.top_probs

    def complete(self, text: str, k: int = 3) -> list[tuple[str, float]]:
        """One shot: suggestions after typing ``text`` into an empty field."""
        self.reset()
        self.type(text)
        return self.suggestions(k)

    # ---- what is typed -------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """The typed part of the current word ("" right after a space): what suggestions match."""
        return self._word(self.text)

    def _word(self, text: str) -> str:
        return text[text.rfind(" ") + 1:] if self._words else ""

    def _must_restart(self, text: str) -> bool:
        return self.restart == "observation" and len(text) + WORD_ROOM > self.max_chars

    def _context(self, text: str) -> str:
        """The restarted observation: a space, the last whole words fitting ``context_chars``, and
        the space just typed (an observation's text, as training saw them)."""
        words, size = [], 0
        for word in reversed(text.split()):
            size += len(word) + 1
            if size > self.context_chars:
                break
            words.append(word)
        return " " + " ".join(reversed(words)) + " " if words else " "

    def _retain(self, text: str) -> str:
        """Continuous mode keeps only the last ``max_chars`` symbols (``text`` is longer), cut at a
        word boundary (whose mark then stands for everything before it)."""
        cut = text.find(" ", len(text) - self.max_chars)
        cut = cut if cut >= 0 else len(text) - self.max_chars  # no boundary: a rebuild is approximate
        self._start += cut
        return text[cut:]

    def _mark(self, pos: int) -> None:
        """Keep the current state as the one before the space at ``pos``."""
        self._forget(pos)
        self._marks.append(Mark(pos, self.backend.own(self.state)))

    def _forget(self, end: int) -> None:
        """Drop the marks at or after absolute position ``end``: that text was taken back."""
        while self._marks and self._marks[-1].pos >= end:
            self._marks.pop()

    def _restart(self, text: str) -> None:
        """A new observation from the zero state (``restart="observation"``): its absolute
        positions start past everything typed, so no earlier mark applies to it."""
        self._start += len(self.text) + 1
        self._marks.clear()
        self.text = ""
        self._rebuild(text)

    def _rebuild(self, text: str) -> None:
        """State and output after ``text`` (the retained text or a prefix of it), in one prefill
        call from the last mark inside it (else from the zero state)."""
        self._forget(self._start + len(text))
        mark = self._marks[-1] if self._marks and self._marks[-1].pos >= self._start else None
        self.text, self.last = text, None
        self.state = mark.state if mark else self.backend.initial_state()
        if text:
            ids = [SYMBOL_ID[ch] for ch in text[mark.pos - self._start if mark else 0:]]
            self.last, self.state = self.backend.prefill(ids, self.state, self._word(text))

    # ---- suggestions ---------------------------------------------------------------------------

    def suggestion_ids(self, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Output ids and probabilities of the up to ``k`` suggestions (module docstring)."""
        ids, probs = self._best(k)
        return np.array(ids, np.int64), np.array(probs, np.float32)

    def suggestions(self, k: int = 3) -> list[tuple[str, float]]:
        """Up to ``k`` (word, probability), most probable first; [] before anything is typed.

        Autocomplete: words starting with the typed part of the current word (any word right
        after a space). Char LM: the most probable next symbols.
        """
        labels = self.backend.labels
        return [(labels[i], p) for i, p in zip(*self._best(k))]

    def _best(self, k: int) -> tuple[list[int], list[float]]:
        if self.last is None:
            return [], []
        return self._index.best(self.last, self.prefix, k, self.backend.prefix_head)


class WordIndex:
    """The output words sorted once, so a prefix's candidates are one bisected range."""

    def __init__(self, labels: list[str], task: str):
        self.labels = labels
        self.allowed = [True] * len(labels)  # outputs that may be suggested at all
        self.allowed[PAD] = False
        if task == "autocomplete":
            self.allowed[UNK] = False
        # alphabetical rank -> output id (char LM: no words, the prefix is always "")
        self.order = 2 + np.argsort(np.array(labels[2:]), kind="stable") if task == "autocomplete" else None
        self.order_list = self.order.tolist() if self.order is not None else []
        self.sorted_words = [labels[i] for i in self.order_list]

    def candidates(self, prefix: str) -> np.ndarray:
        """Output ids of the words starting with ``prefix``, in alphabetical order."""
        lo, hi = prefix_range(self.sorted_words, prefix, offset=0)
        return self.order[lo:hi]

    def best(self, out: StepOutput, prefix: str, k: int, prefix_head: bool) -> tuple[list[int], list[float]]:
        """The ``k`` most probable allowed words consistent with ``prefix`` (ids, probabilities);
        ties: lower id. Python lists, and pure Python for a small range: every NumPy call costs
        microseconds here, as the model step has just evicted its code and data from the caches
        (``scripts/bench_keyboard.py`` measures this runtime's cost per keystroke)."""
        labels, allowed = self.labels, self.allowed
        top = out.top_ids.tolist()
        shown = [j for j, i in enumerate(top) if allowed[i] and labels[i].startswith(prefix)][:k]
        # the graph's top-k is the global top-k: if k of it match, they are the range's best k
        if prefix_head or len(shown) == k or out.log_probs is None:
            probs = out.top_probs.tolist()
            return [top[j] for j in shown], [probs[j] for j in shown]
        if prefix:
            lo, hi = prefix_range(self.sorted_words, prefix, offset=0)
            if hi - lo <= SORT_BELOW:  # most ranges (median 2 words): a sort of (-log p, id), ties to the lower id
                score = out.log_probs.item
                ranked = sorted([(-score(i), i) for i in self.order_list[lo:hi]])[:k]
                return [i for _, i in ranked], [math.exp(-neg) for neg, _ in ranked]
            ids = self.order[lo:hi]
            best = ids[top_k_stable(out.log_probs[ids], k, ids)]
        else:  # two more than asked for, then <pad> and <unk> out
            best = top_k_stable(out.log_probs, k + 2)
            best = best[[allowed[i] for i in best.tolist()]][:k]
        return best.tolist(), np.exp(out.log_probs[best]).tolist()


def open_session(path: Path, threads: int = 1, **options) -> Session:
    """A session on a run directory (``config.json``: MLX) or a bundle (``manifest.json``: ONNX);
    ``options`` go to ``Session`` (``stack_depth``, ``restart``, ``max_chars``, ``context_chars``)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return Session(ONNXBackend(path, threads=threads), **options)
    if (path / "config.json").is_file():
        return Session(MLXBackend(path), **options)
    raise EdgeRNNError(f"{path} is neither a run directory (config.json) nor a bundle (manifest.json)")
