"""Two non-neural keyboards a model must beat: prefix frequency and a Kneser-Ney word trigram.

Both are built from the training split's words over the model's output vocabulary (ids as in
``vocab.json``; a word outside it is ``<unk>``), and both behave like a ``runtime.Session`` as far
as ``edge_rnn.keyboard`` needs one: ``reset()``, ``type(text)``, ``suggestion_ids(k)``. They use
the runtime's own prefix filter (``runtime.WordIndex``: the words starting with the typed letters
are one bisected range of the alphabetical order) and its tie rule (equal scores: lower id first);
``<pad>`` and ``<unk>`` are never suggested. So the three keyboards differ only in their scores.

- ``PrefixFrequency``: the most frequent training words consistent with the typed letters
  (ignores the words before; what a keyboard without a language model shows).
- ``KneserNeyTrigram``: interpolated Kneser-Ney (Chen & Goodman 1998, section 2.7/3), one absolute
  discount per order, ``D = n1 / (n1 + 2 n2)`` from that order's count-of-counts::

      P3(w | u v) = max(c(uvw) - D3, 0) / c(uv.) + D3 N1+(uv.) / c(uv.) * P2(w | v)
      P2(w | v)   = max(N1+(.vw) - D2, 0) / N1+(.v.) + D2 N1+(v.) / N1+(.v.) * P1(w)
      P1(w)       = max(N1+(.w) - D1, 0) / N1+(..) + D1 N1+(w types) / N1+(..) / |V|

  the highest order with raw counts, the lower ones with continuation counts (how many distinct
  words precede), the lowest interpolated with the uniform distribution over the |V| words it can
  predict (``<unk>`` and the vocabulary); an unseen context falls back to the next order whole.
  Each observation (text field) starts with two ``<s>`` so that histories never cross a field,
  like the model, which starts every observation from a zero state. NLTK's ``nltk.lm`` has the
  same model in pure Python, far too slow to score every word at every keystroke; here the counts
  are sorted integer keys and a context's distribution over all words is a few NumPy operations,
  computed once per word (the context does not change while its letters are typed).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from edge_rnn.data import Dataset
from edge_rnn.runtime import WordIndex, normalise, top_k_stable
from edge_rnn.vocab import PAD, SPACE, UNK, Vocab


def training_words(data: Dataset) -> list[np.ndarray]:
    """Word ids of each observation: the target of each space is the word it precedes."""
    at_space = data.chars == SPACE
    ends = data.starts + data.lengths
    return [data.targets[s:e][at_space[s:e]] for s, e in zip(data.starts, ends)]


class _TypedWords:
    """The typing half of a Session: the words finished in this field and the partial word."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.index = WordIndex(vocab.words, "autocomplete")
        self.candidates = lru_cache(maxsize=1 << 16)(self.index.candidates)
        self.reset()

    def reset(self) -> None:
        self.words: list[int] = []  # ids of the finished words of this field
        self.prefix = ""
        self.started = False

    def type(self, text: str) -> None:
        for ch in normalise(text):
            if ch != " ":
                self.prefix += ch
            elif self.prefix:
                self.words.append(self.vocab.id(self.prefix))
                self.prefix = ""
            self.started = True

    def suggestion_ids(self, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best words starting with the partial word, by ``scores()``; ties: lower id."""
        if not self.started:
            return np.zeros(0, np.int64), np.zeros(0)
        ids = self.candidates(self.prefix)
        scores = self.scores()[ids]
        best = top_k_stable(scores, k, ids)  # ties: the lower id, not the alphabetical first
        return ids[best], scores[best]

    def scores(self) -> np.ndarray:
        raise NotImplementedError


class PrefixFrequency(_TypedWords):
    """The most frequent training words consistent with the typed letters."""

    name = "prefix frequency"

    def __init__(self, vocab: Vocab, train_words: list[np.ndarray]):
        super().__init__(vocab)
        ids = np.concatenate(train_words) if train_words else np.zeros(0, np.int64)
        counts = np.bincount(ids, minlength=len(vocab)).astype(np.float64)
        counts[[PAD, UNK]] = 0
        self.counts = counts

    def scores(self) -> np.ndarray:
        return self.counts


def discount(counts: np.ndarray) -> float:
    """``n1 / (n1 + 2 n2)`` (Ney, Essen & Kneser 1994); 0.5 where the data has no singletons."""
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return n1 / (n1 + 2 * n2) if n1 else 0.5


class KneserNeyTrigram(_TypedWords):
    """Interpolated Kneser-Ney word trigrams (module docstring) as a keyboard."""

    name = "KN trigram"

    def __init__(self, vocab: Vocab, train_words: list[np.ndarray],
                 discounts: tuple[float, float, float] | None = None):
        super().__init__(vocab)
        self.n = n = len(vocab)
        self.bos = n  # <s>: a history-only id
        self.base = base = n + 1  # n-gram keys are numbers in base n + 1
        padded = [np.concatenate([[self.bos, self.bos], np.asarray(w, np.int64)]) for w in train_words]
        tri = np.concatenate([(p[:-2] * base + p[1:-1]) * base + p[2:] for p in padded])
        self.tri_keys, self.tri_counts = np.unique(tri, return_counts=True)
        # continuation counts: distinct words before (v, w), distinct words before w
        self.bi_keys, self.bi_counts = np.unique(self.tri_keys % base**2, return_counts=True)
        uni = np.bincount(self.bi_keys % base, minlength=base)[:n].astype(np.float64)
        self.d1, self.d2, self.d3 = discounts or (discount(uni[uni > 0]), discount(self.bi_counts),
                                                  discount(self.tri_counts))
        predictable = np.ones(n, bool)
        predictable[PAD] = False  # <pad> is never a word; <unk> is one (an unknown word)
        total, types = uni.sum(), int((uni > 0).sum())
        self.p1 = np.maximum(uni - self.d1, 0) / total + self.d1 * types / total * predictable / predictable.sum()
        self.tri_context, self.tri_word = self.tri_keys // base, self.tri_keys % base
        self.bi_context, self.bi_word = self.bi_keys // base, self.bi_keys % base
        self._cache: tuple[tuple[int, int], np.ndarray] | None = None

    def distribution(self, u: int, v: int) -> np.ndarray:
        """P(w | u v) for every output id w (``<pad>``: 0); ``u``/``v`` may be ``self.bos``."""
        p = self._interpolate(self.p1, self.bi_context, self.bi_word, self.bi_counts, v, self.d2)
        return self._interpolate(p, self.tri_context, self.tri_word, self.tri_counts, u * self.base + v, self.d3)

    @staticmethod
    def _interpolate(lower: np.ndarray, contexts: np.ndarray, words: np.ndarray, counts: np.ndarray,
                     context: int, d: float) -> np.ndarray:
        """Discounted counts of ``context`` plus its freed mass spread as ``lower``."""
        lo, hi = np.searchsorted(contexts, [context, context + 1])
        if lo == hi:
            return lower
        total = counts[lo:hi].sum()
        p = lower * (d * (hi - lo) / total)
        p[words[lo:hi]] += np.maximum(counts[lo:hi] - d, 0) / total
        return p

    def history(self) -> tuple[int, int]:
        u, v = ([self.bos, self.bos] + self.words)[-2:]
        return u, v

    def scores(self) -> np.ndarray:
        context = self.history()
        if self._cache is None or self._cache[0] != context:
            self._cache = context, self.distribution(*context)
        return self._cache[1]
