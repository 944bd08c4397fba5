"""The model: character embedding -> stacked recurrent cells -> dense head over the outputs.

A run directory holds everything needed to rebuild a model exactly:

    config.json         ModelConfig (this file)
    weights.safetensors MLX's own safetensors writer, never pickle
    vocab.json          input symbols and output words (edge_rnn.vocab)
    metrics.jsonl       one JSON object per logged training/validation event
    train.json          training settings, written by edge_rnn.train
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from edge_rnn.cells import CELLS, State, make_cell
from edge_rnn.io import EdgeRNNError, atomic_path, atomic_write_text, check_safetensors
from edge_rnn.loss import cross_entropy, mask_outside
from edge_rnn.vocab import N_SYMBOLS, PAD, UNK, Vocab

TASKS = ("autocomplete", "charlm")
CONFIG, WEIGHTS, VOCAB, METRICS = "config.json", "weights.safetensors", "vocab.json", "metrics.jsonl"
TRAIN = "train.json"  # the training settings (corpus, seed, ...): how to rebuild the run's data
QUANTIZATION = "quantization.json"  # written by edge-rnn quantize: which modules hold quantized weights


@dataclass
class ModelConfig:
    """Architecture of a model; round-trips through JSON."""

    cell: str = "gru"
    layers: int = 1
    units: int = 256
    depth: int = 2  # Nested LSTM only
    embed_dim: int = 64
    vocab_size: int = 10_000  # output words, not counting <pad> and <unk>
    task: str = "autocomplete"
    head_dim: int = 0  # > 0: a bias-free projection to this width before the head (0: none)

    def __post_init__(self):
        if self.cell not in CELLS:
            raise EdgeRNNError(f"unknown cell {self.cell!r}; choose one of: {', '.join(CELLS)}")
        if self.task not in TASKS:
            raise EdgeRNNError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        for name in ("layers", "units", "embed_dim", "vocab_size"):
            if getattr(self, name) < 1:
                raise EdgeRNNError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim < 0:
            raise EdgeRNNError(f"head_dim must be >= 0 (0: no bottleneck), got {self.head_dim}")
        if self.cell == "nlstm" and self.depth < 2:
            raise EdgeRNNError(f"Nested LSTM depth must be >= 2, got {self.depth}")

    @property
    def n_outputs(self) -> int:
        """Autocomplete: <pad>, <unk> and the words. Char LM: the 28 input symbols."""
        return self.vocab_size + 2 if self.task == "autocomplete" else N_SYMBOLS

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise EdgeRNNError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class Dropout:
    """Inverted dropout on the non-recurrent connections only: the embedding's output, between
    layers and before the head, never the recurrent state (Zaremba et al., 2014, "Recurrent Neural
    Network Regularization": masks on h_{t-1} would erase the memory the cell exists to keep).

    A mask is a pure function of ``key``, the site and the *global* batch row: a data-parallel rank
    draws the global batch's mask and keeps its own ``rows``, so 2 ranks train exactly as one
    process does, and a resumed run draws the masks the uninterrupted run drew. (``nn.Dropout``
    draws from MLX's global RNG and its own batch, so it can promise neither.)
    """

    rate: float
    key: mx.array
    batch: int  # rows of the global batch
    rows: slice | None = None  # this rank's rows of it (None: all)

    def __call__(self, x: mx.array, site: int) -> mx.array:
        """``x`` (B, T, D) at connection ``site`` (0: the embedding, k: layer k's output)."""
        key = mx.random.split(self.key, site + 1)[site]
        keep = mx.random.bernoulli(1 - self.rate, (self.batch, *x.shape[1:]), key=key)
        keep = keep[self.rows or slice(None)]
        return mx.where(keep, x * (1 / (1 - self.rate)), 0)


class RNNModel(nn.Module):
    """Embedding -> ``layers`` cells -> linear head, with the same step protocol as the cells."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        E, H = config.embed_dim, config.units
        # 27 trainable rows; symbol 0 (<pad>) embeds to a constant zero vector (the article's recipe).
        # N(0, 1) like nn.Embedding / tf.keras: rows of norm ~sqrt(E), so that a Glorot input kernel
        # passes a unit-scale signal to the gates (rows of norm 1 starved a 2-layer stack: issue 14)
        self.embedding = mx.random.normal((N_SYMBOLS - 1, E))
        self.layers = [make_cell(config.cell, E if k == 0 else H, H, config.depth)
                       for k in range(config.layers)]
        # The head is most of a step's arithmetic (10k words x 256 units against ~0.6M MACs for a
        # 2x256 GRU); a bottleneck (Gboard's 96-wide projection) makes it H*D + D*V instead of H*V
        if config.head_dim:
            self.bottleneck = nn.Linear(H, config.head_dim, bias=False)
        self.head = nn.Linear(config.head_dim or H, config.n_outputs)

    def output(self, h: mx.array, rows: mx.array | None = None) -> mx.array:
        """Logits from the last layer's output ``h`` (..., H); of the head's ``rows`` only, in
        that order, when given (the prefix objective takes them in sorted-word order)."""
        return self.head_logits(self.head_input(h), rows)

    def head_input(self, h: mx.array) -> mx.array:
        """What the head reads: ``h`` through the bottleneck when there is one."""
        return self.bottleneck(h) if self.config.head_dim else h

    def head_logits(self, x: mx.array, rows: mx.array | None = None) -> mx.array:
        if rows is None:
            return self.head(x)
        return x @ self.head.weight[rows].T + self.head.bias[rows]

    def embed(self, ids: mx.array) -> mx.array:
        table = mx.concatenate([mx.zeros((1, self.config.embed_dim)), self.embedding])
        return table[ids]

    def initial_state(self, batch: int) -> list[State]:
        return [cell.initial_state(batch) for cell in self.layers]

    def __call__(self, ids: mx.array, state: list[State] | None = None,
                 dropout: Dropout | None = None) -> tuple[mx.array, list[State]]:
        """``ids`` (B, T) -> logits (B, T, n_outputs) and the final state of every layer.

        ``dropout`` is for training only; evaluation and export never pass it.
        """
        h, new_state = self.features(ids, state, dropout)
        return self.output(h), new_state

    def features(self, ids: mx.array, state: list[State] | None = None,
                 dropout: Dropout | None = None) -> tuple[mx.array, list[State]]:
        """``ids`` (B, T) -> the last layer's outputs (B, T, H) and the final state of every layer."""
        drop = dropout or (lambda x, site: x)
        x = drop(self.embed(ids), 0)
        state = state or [None] * len(self.layers)
        new_state = []
        for k, (cell, s) in enumerate(zip(self.layers, state), start=1):
            x, s = cell(x, s)
            x = drop(x, k)
            new_state.append(s)
        return x, new_state

    def step(self, ids: mx.array, state: list[State]) -> tuple[mx.array, list[State]]:
        """One character per batch row, ``ids`` (B,) -> logits (B, n_outputs): one keystroke."""
        x = self.embed(ids)
        new_state = []
        for cell, s in zip(self.layers, state):
            x, s = cell.step(x, s)
            new_state.append(s)
        return self.output(x), new_state

    @property
    def first_target(self) -> int:
        """The first class that carries loss: never <pad>; for autocomplete not <unk> either (the
        article's). Both come first in the vocabulary, so the rest is one column range."""
        return UNK + 1 if self.config.task == "autocomplete" else PAD + 1

    def loss_weights(self, targets: mx.array) -> mx.array:
        """Which targets carry loss (``first_target`` and after)."""
        return targets >= self.first_target

    def loss(self, ids: mx.array, targets: mx.array, dropout: Dropout | None = None,
             prefix: tuple[mx.array, mx.array] | None = None, teacher: tuple | None = None,
             smoothing: float = 0.0) -> tuple[mx.array, tuple[mx.array, mx.array]]:
        """Mean cross-entropy over the tokens that carry loss; also (their count, top-1 hits).

        The extra outputs ride along so that training can show accuracy without a second forward.
        ``prefix``: ``(order, ranges)`` of the prefix objective (``edge_rnn.prefix``): the head's
        rows in ``order``, each token's softmax over its ``ranges`` (B, T, 2) of them, and
        ``targets`` given as positions in ``order``. ``teacher``: ``(alpha, at, words, probs)`` of
        ``edge_rnn.distill`` (``teacher_term``). ``smoothing``: label smoothing (``smoothing_term``).
        """
        loss, (n, hits, _) = self.stream_loss(ids, targets, None, dropout, prefix, teacher, smoothing)
        return loss, (n, hits)

    def stream_loss(self, ids: mx.array, targets: mx.array, state: list[State] | None,
                    dropout: Dropout | None = None, prefix: tuple[mx.array, mx.array] | None = None,
                    teacher: tuple | None = None,
                    smoothing: float = 0.0) -> tuple[mx.array, tuple[mx.array, mx.array, list[State]]]:
        """``loss`` from ``state`` (None: zero), also returning the final state: stateful
        training carries it into the next window of the same text (truncated BPTT)."""
        h, state = self.features(ids, state, dropout=dropout)
        order, ranges = prefix if prefix is not None else (None, None)
        x = self.head_input(h)
        logits = self.head_logits(x, order)
        weights = self.loss_weights(targets)
        if all(cell.manual_backward for cell in self.layers):  # fast path: fused softmax backward
            ce, top1 = cross_entropy(logits, targets, ranges)
        else:  # the autodiff reference path (ranges: the words outside them masked)
            if ranges is not None:
                logits = mask_outside(logits, ranges)
            ce, top1 = nn.losses.cross_entropy(logits, targets, reduction="none"), logits.argmax(axis=-1)
        n = mx.maximum(weights.sum(), 1)
        hits = ((top1 == targets) & weights).sum()
        total = (ce * weights).sum()
        if teacher is not None:
            total = total + self.teacher_term(x, targets, weights, *teacher)
        if smoothing:
            total = total + self.smoothing_term(x, targets, weights, smoothing)
        return total / n, (n, hits, state)

    def teacher_term(self, x: mx.array, targets: mx.array, weights: mx.array, alpha: float, at: mx.array,
                     words: mx.array, probs: mx.array) -> mx.array:
        """What the trigram teacher adds to the summed loss (``edge_rnn.distill``): at each slot's
        column ``at`` (B, S), ``alpha (z[target] - sum_k probs_k z[words_k])``, which turns that
        position's target into ``(1 - alpha) onehot + alpha probs``. ``x``: the head's input."""
        W, b = self.head.weight, self.head.bias
        x = mx.take_along_axis(x, at[..., None], axis=1)  # (B, S, D)
        gold = mx.take_along_axis(targets, at, axis=1)
        z_gold = (x * W[gold]).sum(-1) + b[gold]
        z_teacher = (x[..., None, :] @ W[words].swapaxes(-1, -2))[..., 0, :] + b[words]  # (B, S, K)
        used = mx.take_along_axis(weights, at, axis=1) & (probs.sum(-1) > 0)
        return alpha * (used * (z_gold - (probs * z_teacher).sum(-1))).sum()

    def smoothing_term(self, x: mx.array, targets: mx.array, weights: mx.array, epsilon: float) -> mx.array:
        """What label smoothing (Szegedy et al. 2016) adds to the summed loss: ``epsilon (z[target] -
        mean_w z[w])``, the mean over the classes that carry loss (``first_target`` on), which turns
        each target into ``(1 - epsilon) onehot + epsilon uniform``. That mean is ``x . mean(W) +
        mean(b)``: one dot per position, no second pass over the logits."""
        W, b = self.head.weight, self.head.bias
        words = slice(self.first_target, None)
        z_gold = (x * W[targets]).sum(-1) + b[targets]
        z_mean = x @ W[words].mean(0) + b[words].mean()
        return epsilon * (weights * (z_gold - z_mean)).sum()

    def recurrent_parameters(self) -> int:
        return sum(v.size for cell in self.layers for _, v in tree_flatten(cell.parameters()))

    def num_parameters(self) -> int:
        return sum(v.size for _, v in tree_flatten(self.parameters()))


def numpy_parameters(model: RNNModel, dtype=np.float32) -> dict[str, np.ndarray]:
    """The parameters as exporters read them: NumPy, keyed like ``tree_flatten``.

    A ``head_dim`` model keeps its ``bottleneck.weight`` ``(D, H)`` beside the ``(V, D)`` head, and
    the exporters keep the two matmuls apart: a keystroke then reads ``H*D + V*D`` head weights
    instead of the ``V*H`` of their product (2.6x fewer on the edge presets), and a bundle is that
    much smaller.
    """
    return {k: np.array(v, dtype=dtype) for k, v in tree_flatten(model.parameters())}


def save(model: RNNModel, run_dir: Path, vocab: Vocab | None = None) -> None:
    """Write config, weights (and vocab) atomically; a crash leaves the previous files intact."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / WEIGHTS) as tmp:
        mx.save_safetensors(str(tmp), dict(tree_flatten(model.parameters())))
        check_safetensors(tmp)
    atomic_write_text(run_dir / CONFIG, model.config.to_json())
    if vocab is not None:
        vocab.save(run_dir / VOCAB)


def load_config(run_dir: Path) -> ModelConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise EdgeRNNError(f"{run_dir} is not a run directory (no {CONFIG})")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise EdgeRNNError(f"{path} is not a valid model config: {err}") from None


def load(run_dir: Path) -> tuple[RNNModel, Vocab | None]:
    """Rebuild the model of a run directory with its exact weights, and its vocabulary."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    model = RNNModel(config)
    _quantize_like_saved(model, run_dir)
    path = run_dir / WEIGHTS
    if not path.is_file():
        raise EdgeRNNError(f"{run_dir} has no weights ({WEIGHTS} missing)")
    try:
        weights = mx.load(str(path))
        model.load_weights(list(weights.items()), strict=True)
    except Exception as err:  # MLX raises several types for truncated/mismatched files
        raise EdgeRNNError(f"{path} is damaged or does not match {CONFIG}: {err}") from None
    mx.eval(model.parameters())
    vocab = None
    if (run_dir / VOCAB).is_file():
        try:
            vocab = Vocab.load(run_dir / VOCAB)
        except (ValueError, KeyError, json.JSONDecodeError) as err:
            raise EdgeRNNError(f"{run_dir / VOCAB} is not a valid vocabulary: {err}") from None
        if config.task == "autocomplete" and len(vocab) != config.n_outputs:
            raise EdgeRNNError(f"{run_dir}: vocab.json has {len(vocab)} words but the model outputs "
                               f"{config.n_outputs}; they do not belong together")
    return model, vocab


def _quantize_like_saved(model: RNNModel, run_dir: Path) -> None:
    """Swap in ``nn.QuantizedLinear`` where the run was saved quantized (``quantization.json``,
    written by ``edge_rnn.quantize``), so the packed weights, scales and biases load strictly."""
    path = run_dir / QUANTIZATION
    if not path.is_file():
        return
    try:
        spec = json.loads(path.read_text())
        modules, bits, group_size = set(spec["modules"]), int(spec["bits"]), int(spec["group_size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise EdgeRNNError(f"{path} is not a valid quantization record: {err}") from None
    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=lambda name, _: name in modules)


# ---- presets ---------------------------------------------------------------------------------

PRESETS_DIR = Path(__file__).resolve().parent.parent / "models"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> ModelConfig:
    """A named configuration from ``models/NAME.json`` (its model card is ``models/NAME.md``)."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise EdgeRNNError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return ModelConfig.from_dict(json.loads(path.read_text()))
