"""Keyboard metrics: what a typist sees and saves, for a model and for the non-neural baselines.

The text is typed one character at a time into a fresh text field per observation (each of the
evaluation text's observations of at most 200 characters, as training saw them, or one long
stream). At every (word, letters typed) position, i.e. after the space before a word (0 letters)
and after each of its letters, the keyboard shows its suggestions: the words consistent with the
typed letters (``runtime.WordIndex``: prefix filter by bisection, ties to the lower id, never
``<pad>``/``<unk>``). Every keyboard (a ``runtime.Session`` on a run or bundle, or one of
``edge_rnn.baselines``) is scored by the same code from those suggestions:

- top-1 / top-3: the intended word is the first / among the first three suggestions, over every
  position, and by letters typed (0, 1, 2, 3, 4+: the Distill article's "accuracy vs characters
  seen"; no padding anywhere). A word outside the vocabulary (OOV) is a miss at every position.
- next-word top-3: top-3 at 0 letters (Gboard's next-word recall).
- OOV rate: the share of words that are not in the vocabulary.
- keystroke savings rate (KSR), for a simulated typist with 3 suggestion slots (the protocol):
  without prediction a word of L letters costs L + 1 keystrokes (its letters and a space). With
  prediction the typist looks at the 3 slots after each keystroke and taps the word as soon as it
  is shown: shown after typing j letters (the first such j, 0 <= j <= L) it costs j + 1 (the tap
  inserts the word and its space); never shown (OOV words never are) it costs L + 1.
  KSR = 1 - keystrokes with prediction / keystrokes without.

Accepting a word leaves a Session in the state of typing the word and its space (the runtime's
guarantee), so the suggestions at every position of the gold text are all the simulation needs.

For a run directory, ``RunKeyboard`` computes the same suggestions with the model's sequence call
over a batch of observations instead of one MLX step per keystroke (~5 ms each): a fresh field per
observation is the zero state the sequence call starts from. ``tests/test_keyboard.py`` checks it
against the Session.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from edge_rnn.data import Dataset
from edge_rnn.io import EdgeRNNError
from edge_rnn.runtime import StepOutput, WordIndex, top_k_stable
from edge_rnn.vocab import PAD, SPACE, SYMBOLS, UNK, Vocab

SLOTS = 3  # suggestion slots of the simulated keyboard
LETTER_BUCKETS = ("0", "1", "2", "3", "4+")
Progress = Callable[[int, int], None]  # (words done, words in all)


class Keyboard(Protocol):
    """What the metrics need of a keyboard: a text field and its suggestions (a Session has it)."""

    def reset(self) -> None: ...

    def type(self, text: str) -> None: ...

    def suggestion_ids(self, k: int = 3) -> tuple[np.ndarray, np.ndarray]: ...


# ---- the text to type ------------------------------------------------------------------------


def first_words(data: Dataset, max_words: int | None) -> Dataset:
    """The first ``max_words`` words of ``data``: whole observations, the last one cut after its
    word (a cut observation scores exactly as the first positions of the whole one)."""
    if max_words is None:
        return data
    if max_words < 1:
        raise EdgeRNNError(f"--max-words must be >= 1, got {max_words}")
    counts = np.array([(data.chars[s:s + n] == SPACE).sum() for s, n in zip(data.starts, data.lengths)], np.int64)
    cum = np.cumsum(counts)
    if not len(cum) or cum[-1] <= max_words:
        return data
    last = int(np.searchsorted(cum, max_words))  # the observation holding word number max_words
    need = max_words - (int(cum[last - 1]) if last else 0)  # words of it to keep (>= 1)
    start = int(data.starts[last])
    spaces = np.flatnonzero(data.chars[start:start + int(data.lengths[last])] == SPACE)
    lengths = data.lengths[: last + 1].copy()
    if need < len(spaces):
        lengths[-1] = spaces[need]
    return Dataset(data.chars, data.targets, data.starts[: last + 1], lengths)


def relabel(data: Dataset, source: Vocab, target: Vocab) -> Dataset:
    """``data`` labelled by ``source`` ids, relabelled with ``target``'s (e.g. a prefix-head
    bundle's alphabetical order); the two must hold the same words."""
    if source.words == target.words:
        return data
    if set(source.words) != set(target.words):
        raise EdgeRNNError("the model's vocabulary is not the one its run was trained with")
    table = np.array([target.id(w) for w in source.words], np.int32)
    table[PAD] = PAD
    return Dataset(data.chars, table[data.targets], data.starts, data.lengths)


def positions(data: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every scored position (in observation order): its char index, its letters typed, and
    the index of its word. Every observation starts with a space, so each word is one space and
    its letters."""
    idx = np.concatenate([np.arange(s, s + n) for s, n in zip(data.starts, data.lengths)]) \
        if len(data) else np.zeros(0, np.int64)
    space = data.chars[idx] == SPACE
    ar = np.arange(len(idx))
    letters = ar - np.maximum.accumulate(np.where(space, ar, 0))
    return idx, letters, np.cumsum(space) - 1


# ---- suggestions at every position -----------------------------------------------------------


def suggest(keyboard: Keyboard, data: Dataset, k: int = SLOTS,
            progress: Progress | None = None) -> np.ndarray:
    """``(positions, k)`` suggested ids at every position of ``data`` (-1 where fewer were shown),
    typing each observation into a fresh field, one character at a time."""
    if hasattr(keyboard, "suggest"):  # a batched equivalent (RunKeyboard)
        return keyboard.suggest(data, k, progress)
    out = np.full((int(data.lengths.sum()), k), -1, np.int64)
    row, done, total = 0, 0, n_words(data)
    tick = _ticker(progress, total)
    for s, n in zip(data.starts, data.lengths):
        keyboard.reset()
        for c in data.chars[s:s + n]:
            keyboard.type(SYMBOLS[c])
            ids, _ = keyboard.suggestion_ids(k)
            out[row, :len(ids)] = ids
            row += 1
            done += c == SPACE
        tick(done)
    tick(total, force=True)
    return out


def n_words(data: Dataset) -> int:
    """Words in the observations of ``data`` (one space each)."""
    return int(sum((data.chars[s:s + n] == SPACE).sum() for s, n in zip(data.starts, data.lengths)))


def _ticker(progress: Progress | None, total: int, every_s: float = 2.0) -> Callable[..., None]:
    """Call ``progress(done, total)`` at most every ``every_s`` seconds, and once at the end."""
    last, shown = [time.monotonic()], [-1]

    def tick(done: int, force: bool = False) -> None:
        now = time.monotonic()
        if progress is not None and done != shown[0] and (force or now - last[0] >= every_s):
            last[0], shown[0] = now, done
            progress(int(done), total)

    return tick


class RunKeyboard:
    """A run directory's model, batched over observations: the suggestions a ``Session`` on the
    run shows in a fresh field per observation, without stepping MLX once per keystroke."""

    def __init__(self, run_dir: Path, batch_size: int = 16):
        from edge_rnn.model import load

        self.model, vocab = load(Path(run_dir))
        if self.model.config.task != "autocomplete" or vocab is None:
            raise EdgeRNNError(f"{run_dir}: keyboard metrics need an autocomplete model with its vocab.json")
        self.vocab = vocab
        self.index = WordIndex(vocab.words, "autocomplete")
        self.batch_size = batch_size

    def log_probs(self, data: Dataset) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(rows, chars, log_probs)`` per batch of observations: their ``(B, T)`` symbol ids and
        the model's ``(B, T, words)`` log-probabilities from a zero state (a fresh field each)."""
        import mlx.core as mx

        for first in range(0, len(data), self.batch_size):
            rows = np.arange(first, min(first + self.batch_size, len(data)))
            chars, _ = data.batch(rows)
            logits, _ = self.model(mx.array(chars))
            logits = logits.astype(mx.float32)
            yield rows, chars, np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    def suggest(self, data: Dataset, k: int = SLOTS, progress: Progress | None = None) -> np.ndarray:
        out = np.full((int(data.lengths.sum()), k), -1, np.int64)
        row, done, total = 0, 0, n_words(data)
        tick = _ticker(progress, total)
        for rows, chars, log_probs in self.log_probs(data):
            for b, n in enumerate(data.lengths[rows]):
                text = "".join(SYMBOLS[c] for c in chars[b, :n])
                for t in range(n):
                    lp = log_probs[b, t]
                    top = top_k_stable(lp, SLOTS)  # what MLXBackend's step returns
                    prefix = text[: t + 1].rsplit(" ", 1)[-1]
                    ids, _ = self.index.best(StepOutput(top, np.exp(lp[top]), lp), prefix, k, False)
                    out[row, :len(ids)] = ids
                    row += 1
                done += int((chars[b, :n] == SPACE).sum())
            tick(done)
        tick(total, force=True)
        return out


# ---- the metrics -----------------------------------------------------------------------------


def metrics(data: Dataset, suggested: np.ndarray) -> dict:
    """Keyboard metrics (module docstring) from the suggestions at every position of ``data``."""
    idx, letters, word = positions(data)
    targets = data.targets[idx].astype(np.int64)
    if len(suggested) != len(idx):
        raise ValueError(f"{len(suggested)} suggestion rows for {len(idx)} positions")
    if np.isin(suggested, [PAD, UNK]).any():
        raise ValueError("a keyboard suggested <pad> or <unk>")
    hit1 = suggested[:, 0] == targets
    hit3 = (suggested[:, :SLOTS] == targets[:, None]).any(axis=1)
    bucket = np.minimum(letters, len(LETTER_BUCKETS) - 1)
    by_letters = {}
    for b, name in enumerate(LETTER_BUCKETS):
        sel = bucket == b
        by_letters[name] = {"top1": _mean(hit1[sel]), "top3": _mean(hit3[sel]), "positions": int(sel.sum())}
    # KSR: the first position of each word where it is shown; L + 1 keys without prediction
    n_words = int(word[-1]) + 1 if len(word) else 0
    starts = np.flatnonzero(letters == 0)
    length = np.bincount(word, minlength=n_words) - 1  # letters of each word
    first = np.minimum.reduceat(np.where(hit3, letters, np.iinfo(np.int64).max), starts) if n_words else starts
    keys_without = length + 1
    keys_with = np.where(first <= length, first + 1, keys_without)
    oov = targets[starts] == UNK
    return {
        "words": n_words, "positions": int(len(idx)),
        "top1": _mean(hit1), "top3": _mean(hit3),
        "next_word_top3": by_letters["0"]["top3"],
        "by_letters": by_letters,
        "oov_rate": _mean(oov),
        "ksr": float(1 - keys_with.sum() / max(keys_without.sum(), 1)),
        "keystrokes": {"without": int(keys_without.sum()), "with": int(keys_with.sum())},
    }


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else 0.0


def evaluate_keyboard(keyboard: Keyboard, data: Dataset, progress: Progress | None = None) -> dict:
    """Suggestions at every position, then the metrics (and the seconds it took)."""
    t0 = time.perf_counter()
    result = metrics(data, suggest(keyboard, data, SLOTS, progress))
    return {**result, "seconds": time.perf_counter() - t0}


# ---- a model beside its baselines ------------------------------------------------------------


def source_run(source: Path) -> Path:
    """The run directory behind ``source``: itself, or the one a bundle's manifest names."""
    source = Path(source)
    if (source / "config.json").is_file():
        return source
    if (source / "manifest.json").is_file():
        from edge_rnn.export.bundle import read_manifest

        run = (read_manifest(source).get("source") or {}).get("run_dir")
        if run and (Path(run) / "train.json").is_file():
            return Path(run)
        raise EdgeRNNError(f"{source}: the baselines are built from the training split of the bundle's "
                           f"run, and its run directory ({run or 'not recorded'}) is not here")
    raise EdgeRNNError(f"{source} is neither a run directory (config.json) nor a bundle (manifest.json)")


def model_keyboard(source: Path) -> tuple[Keyboard, Vocab, str]:
    """The model as a keyboard, its output vocabulary (ids as its vocab.json) and a label.

    A bundle runs through the real ``runtime.Session`` (what users ship); a field is one
    observation of at most 200 characters, so the session never needs to restart
    (``restart="continuous"``: the zero state each observation started from in training)."""
    import json

    from edge_rnn.runtime import open_session

    source = Path(source)
    if (source / "config.json").is_file():
        keyboard = RunKeyboard(source)
        return keyboard, keyboard.vocab, "model (run, MLX)"
    session = open_session(source, restart="continuous")
    if session.backend.task != "autocomplete":
        raise EdgeRNNError(f"{source}: keyboard metrics need an autocomplete model")
    manifest = session.backend.manifest
    precision = (manifest.get("quantization") or {}).get("to") or manifest["export"].get("precision", "fp32")
    head = ", prefix head" if session.backend.prefix_head else ""
    words = json.loads((source / "vocab.json").read_text())["words"]
    return session, Vocab(words), f"model ({manifest['target']} {precision}{head})"


def keyboard_report(source: Path, corpus: str | None = None, max_words: int | None = None,
                    progress: Callable[[str, int, int], None] | None = None) -> dict:
    """The model of a run or bundle and both baselines (built from the run's training split) on
    the run's test split or on ``corpus`` (normalised like training, labelled with the model's
    vocabulary), the first ``max_words`` words of it."""
    from edge_rnn.baselines import KneserNeyTrigram, PrefixFrequency, training_words
    from edge_rnn.data import encode_autocomplete, load_corpus
    from edge_rnn.evaluate import run_splits

    run = source_run(source)
    model, vocab, label = model_keyboard(source)
    splits = run_splits(run, None)
    if splits.vocab is None:
        raise EdgeRNNError(f"{run}: keyboard metrics need an autocomplete model")
    if corpus is None:
        data, where = relabel(splits.test, splits.vocab, vocab), f"test split of {run}"
    else:
        data, where = encode_autocomplete(load_corpus(corpus), vocab), str(corpus)
    data = first_words(data, max_words)
    train = training_words(relabel(splits.train, splits.vocab, vocab))
    keyboards = {label: model, "prefix frequency": PrefixFrequency(vocab, train),
                 "KN trigram": KneserNeyTrigram(vocab, train)}
    results = {}
    for name, keyboard in keyboards.items():
        tick = (lambda done, total, name=name: progress(name, done, total)) if progress else None
        results[name] = evaluate_keyboard(keyboard, data, tick)
    return {"text": where, "source": str(source), "keyboards": results}
