"""A word trigram as a teacher at word boundaries (``edge-rnn train --distill ALPHA``).

What a 30-minute model loses to a Kneser-Ney trigram keyboard it loses at the start of a word:
with 0 letters typed the trigram's next word is right more often (issue 14's tables), while with
letters typed the model is better. The trigram has seen each two-word history many times and
smooths the rest by backing off; the model sees one next word per position. So at every space
before a word the training target becomes a mixture (Hinton et al. 2015, with the trigram as the
teacher)::

    target = (1 - alpha) onehot(word) + alpha q,   q = top-K of P_KN(. | u v), renormalised

and the position's loss is its cross-entropy against that target,
``ce + alpha (z[word] - sum_k q_k z[k])`` in terms of the logits ``z``. Only the K teacher words'
logits are needed (``RNNModel.loss`` computes them from the head rows), so the term costs K dot
products per boundary instead of another pass over the 10,002 logits.

The teacher is ``baselines.KneserNeyTrigram`` built from the training split, the keyboard a model
must beat; its history restarts with every observation, as the model's state does. ``<pad>`` and
``<unk>`` are never teacher words (the model is never trained to predict ``<unk>``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edge_rnn.baselines import KneserNeyTrigram, training_words
from edge_rnn.data import Dataset
from edge_rnn.vocab import PAD, SPACE, UNK, Vocab

TEACHER_WORDS = 32  # K: the teacher's best words kept per context (most of its mass; measured below)


@dataclass
class Teacher:
    """The trigram's top-K words and probabilities at each word boundary of a training text.

    ``context_of[p]`` is the row of ``words``/``probs`` for the space at ``data.chars[p]`` (-1 for
    every other position): rows are distinct two-word histories, shared by all their boundaries.
    """

    context_of: np.ndarray  # int32 (n_chars,)
    words: np.ndarray  # int32 (contexts, K), best first
    probs: np.ndarray  # float32 (contexts, K), summing to 1 per row
    mass: float  # mean share of the teacher's probability that its top-K hold (before renormalising)
    seconds: float  # time to build

    @classmethod
    def build(cls, data: Dataset, vocab: Vocab, k: int = TEACHER_WORDS) -> "Teacher":
        """The teacher of ``data`` (the training split): its trigram, then each history's top-K."""
        started = time.perf_counter()
        words = training_words(data)
        trigram = KneserNeyTrigram(vocab, words)
        keys, positions = [], []
        bos, base = trigram.bos, trigram.base
        for start, length, w in zip(data.starts, data.lengths, words):
            history = np.concatenate([[bos, bos], w[:-1]]).astype(np.int64)
            keys.append(history[:-1] * base + history[1:])  # (u, v) before each word
            positions.append(start + np.flatnonzero(data.chars[start:start + length] == SPACE))
        keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        contexts, row = np.unique(keys, return_inverse=True)
        top = np.zeros((len(contexts), k), np.int32)
        probs = np.zeros((len(contexts), k), np.float32)
        mass = np.zeros(len(contexts))
        for i, key in enumerate(contexts):
            p = trigram.distribution(int(key) // base, int(key) % base).copy()
            p[[PAD, UNK]] = 0
            best = np.argpartition(-p, k)[:k] if k < len(p) else np.arange(len(p))
            best = best[np.argsort(-p[best], kind="stable")]
            mass[i] = p[best].sum()
            top[i, :len(best)], probs[i, :len(best)] = best, p[best] / mass[i]
        context_of = np.full(len(data.chars), -1, np.int32)
        if len(keys):
            context_of[np.concatenate(positions)] = row
        weight = np.bincount(row, minlength=len(contexts)) if len(keys) else np.zeros(0)
        return cls(context_of, top, probs, float((mass * weight).sum() / max(weight.sum(), 1)),
                   time.perf_counter() - started)

    def batch(self, data: Dataset, idx: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The teacher of the observations ``idx`` of ``data`` (the text it was built on, or a
        ``rechunked`` cut of it), in fixed shapes so a step compiles once: ``(at (B, S), words
        (B, S, K), probs (B, S, K))`` with ``S = (max_len + 1) // 2`` slots per row, the most
        spaces before a word a row can hold; ``at`` is each slot's column, and an unused slot has
        ``probs`` 0 (and column 0)."""
        slots = (max_len + 1) // 2
        B, K = len(idx), self.words.shape[1]
        at = np.zeros((B, slots), np.int32)
        words = np.zeros((B, slots, K), np.int32)
        probs = np.zeros((B, slots, K), np.float32)
        for b, i in enumerate(idx):
            rows = self.context_of[data.starts[i]:data.starts[i] + data.lengths[i]]
            cols = np.flatnonzero(rows >= 0)[:slots]
            at[b, :len(cols)] = cols
            words[b, :len(cols)], probs[b, :len(cols)] = self.words[rows[cols]], self.probs[rows[cols]]
        return at, words, probs
