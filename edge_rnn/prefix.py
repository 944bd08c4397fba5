"""The prefix objective: train each position to rank only the words its typed letters allow.

A keyboard never shows a word that does not start with what was typed: the runtime filters by
the typed prefix (``edge_rnn.runtime``), and the prefix-range head computes only those rows. The
article's loss still makes the model spell: after ``th`` it pays for every word not starting
with ``th``, a cost a keyboard never sees. The prefix objective asks only what is used:

    loss = -log p(word | typed text, word starts with the typed prefix)

i.e. the softmax of each position runs over the words starting with the letters typed so far of
the current word (all words at the space before a word, where the prefix is empty). The full
cross-entropy is this loss plus ``-log P(prefix)``, the spelling term; dropping it leaves the
model's whole capacity for choosing among the words a keyboard can show.

To make each position's words one contiguous range, the head's rows are taken in the prefix-range
head's order (``prefix_order``: <pad>, <unk>, then the words sorted), so a position's words are
the columns ``[lo, hi)`` of ``prefix_range`` and the kernels of ``edge_rnn.loss`` skip the rest.
A model trained this way is meant for prefix-filtered suggestions (every runtime here filters);
its unfiltered top-1, the article's metric, is not what it optimises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rnn.export.contract import prefix_order
from edge_rnn.runtime import prefix_range
from edge_rnn.vocab import SPACE, Vocab

OBJECTIVES = ("word", "prefix")  # TrainConfig.objective: the article's loss, or this one


@dataclass
class PrefixRanges:
    """Where each training position's words lie in the head's sorted order.

    ``order[i]``: the word id at sorted position ``i``; ``position`` is its inverse.
    ``lo[w, j]``, ``hi[w, j]``: the sorted positions ``[lo, hi)`` of the words sharing the first
    ``j`` letters of word ``w`` (``j`` = 0 is every word). <pad> and <unk> get every word: they carry
    no loss, and a non-empty range keeps their rows finite.
    """

    order: np.ndarray  # (V,) int32
    position: np.ndarray  # (V,) int32
    lo: np.ndarray  # (V, L + 1) int32, L = the longest word
    hi: np.ndarray

    @classmethod
    def from_vocab(cls, vocab: Vocab) -> "PrefixRanges":
        order = np.array(prefix_order(vocab.words), np.int32)
        position = np.argsort(order).astype(np.int32)
        sorted_words = [vocab.words[i] for i in order[2:]]
        V, L = len(vocab), max(len(w) for w in vocab.words[2:])
        lo = np.full((V, L + 1), 2, np.int32)
        hi = np.full((V, L + 1), V, np.int32)
        for w in range(2, V):
            word = vocab.words[w]
            for j in range(1, len(word) + 1):
                lo[w, j], hi[w, j] = prefix_range(sorted_words, word[:j])
        return cls(order, position, lo, hi)

    def batch(self, ids: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Targets as sorted positions (B, T) and each position's ``[lo, hi)`` (B, T, 2).

        The letters typed of the current word at position ``t`` are those since the last space at
        or before ``t``: none at a space (the position that predicts the next word). Every
        observation starts with a space, so a last space always exists.
        """
        t = np.arange(ids.shape[1])
        last_space = np.maximum.accumulate(np.where(ids == SPACE, t, 0), axis=1)
        typed = np.minimum(t - last_space, self.lo.shape[1] - 1)
        ranges = np.stack([self.lo[targets, typed], self.hi[targets, typed]], axis=-1)
        return self.position[targets], ranges


def run_objective(run_dir: Path) -> str:
    """The training objective of a run (``train.json``): "word" when it says none (older runs)."""
    try:  # edge_rnn.model.TRAIN, named here to keep MLX out of bundle reading
        objective = json.loads((Path(run_dir) / "train.json").read_text()).get("objective", "word")
    except (OSError, ValueError, AttributeError):
        return "word"
    return objective if objective in OBJECTIVES else "word"
