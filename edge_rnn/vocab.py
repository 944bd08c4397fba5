"""Input symbols and output words: the two vocabularies a model and an app must agree on.

Input: 28 fixed symbols, ``<pad>`` (0), space (1), ``a``-``z`` (2-27), as in the Distill article.
Output (autocomplete): ``<pad>`` (0), ``<unk>`` (1), then the N most frequent training words in
frequency order. Both special ids carry no loss. Saved as ``vocab.json`` in run dirs and bundles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rnn.io import atomic_write_text

PAD, UNK = 0, 1
SPECIAL_WORDS = ["<pad>", "<unk>"]
SYMBOLS = ["<pad>", " "] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
N_SYMBOLS = len(SYMBOLS)  # 28
SPACE = 1

# byte -> symbol id for normalised text (anything else maps to 0 and must not occur)
_BYTE_TO_SYMBOL = np.zeros(256, dtype=np.uint8)
_BYTE_TO_SYMBOL[ord(" ")] = SPACE
_BYTE_TO_SYMBOL[ord("a") : ord("z") + 1] = np.arange(2, 28, dtype=np.uint8)


def encode_chars(text: str) -> np.ndarray:
    """Normalised text (a-z and spaces) -> uint8 symbol ids, vectorised."""
    return _BYTE_TO_SYMBOL[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]


def decode_chars(ids) -> str:
    return "".join(SYMBOLS[int(i)] for i in ids if int(i) != PAD)


@dataclass
class Vocab:
    """Output words in id order; ``words[0:2]`` are ``<pad>``, ``<unk>``."""

    words: list[str]

    def __post_init__(self):
        if self.words[:2] != SPECIAL_WORDS:
            raise ValueError("vocabulary must start with <pad>, <unk>")
        self.index = {w: k for k, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        return self.index.get(word, UNK)

    @classmethod
    def from_counts(cls, words: list[str]) -> "Vocab":
        """``words`` already sorted by descending frequency."""
        return cls(SPECIAL_WORDS + list(words))

    def to_json(self) -> dict:
        return {"symbols": SYMBOLS, "words": self.words}

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        data = json.loads(Path(path).read_text())
        if data.get("symbols") != SYMBOLS:
            raise ValueError(f"{path}: input symbols differ from edge-rnn's 28 symbols")
        return cls(data["words"])
