"""What a trained model uses: connectivity, cell states over a text, accuracy by letters typed.

- ``connectivity``: the Distill article's measure ("Visualizing memorization in RNNs"). For the
  output at position ``n`` it is, for every input position ``t <= n``, the squared L2 norm of the
  gradient of the target word's logit at ``n`` with respect to the *one-hot* input at ``t``. The
  embedding is a linear map of the one-hot (``x_t = onehot_t @ table``), so that gradient is
  ``dlogit/dx_t @ table^T``: one value per input symbol, 28 of them.
- ``cell_states``: every state tensor of every layer after every character, by stepping the cells
  exactly as a keyboard does (``cell.step``); for a Nested LSTM that is ``h`` and each memory
  ``c_0 .. c_{D-1}`` (outer to inner), the quantities of the Nested LSTM paper's figures 3 and 4.
- ``context_accuracy``: top-1/top-3 accuracy as a function of how many letters of the current word
  have been typed (0 = the space before it), the article's "context accuracy" figure. Padding is
  never scored; a ``<unk>`` target is a miss, as in ``edge_rnn.evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from edge_rnn.data import Dataset, normalise
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import RNNModel
from edge_rnn.vocab import PAD, SPACE, UNK, Vocab, encode_chars


@dataclass
class Encoded:
    """A user's text as the model sees it: ``text`` starts with a space, one symbol per character."""

    text: str
    ids: np.ndarray  # (T,) int32 input symbols
    targets: np.ndarray  # (T,) int32 the output whose logit connectivity differentiates
    known: np.ndarray  # (T,) bool: the target is the true label (False: the model's own top-1)


def encode_text(model: RNNModel, vocab: Vocab | None, text: str) -> Encoded:
    """Normalise ``text`` the text8 way, prefix the space every observation starts with, and label it.

    Autocomplete: the target at each character is the word it belongs to (a space: the word after
    it), as in training. Char LM: the next symbol. Where that is unknown (a word outside the
    vocabulary, the last character of a char-LM text) the model's own top-1 prediction is used.
    """
    body = normalise(text)
    if not body:
        raise EdgeRNNError(f"no usable characters (a-z) in {text!r}")
    text = " " + body
    ids = encode_chars(text).astype(np.int32)
    if model.config.task == "autocomplete":
        if vocab is None:
            raise EdgeRNNError("this run has no vocab.json; cannot name the target words")
        targets = np.concatenate([[vocab.id(w)] * (len(w) + 1) for w in body.split(" ")]).astype(np.int32)
        known = targets != UNK
    else:
        targets = np.append(ids[1:], PAD).astype(np.int32)
        known = np.arange(len(ids)) < len(ids) - 1
    if not known.all():
        logits, _ = model(mx.array(ids[None]))
        top1 = np.array(logits[0].argmax(axis=-1)).astype(np.int32)
        targets = np.where(known, targets, top1)
    return Encoded(text, ids, targets, known)


def _embedding_table(model: RNNModel) -> mx.array:
    """``(28, E)``: the one-hot -> embedding matrix, the constant zero row of ``<pad>`` first."""
    return mx.concatenate([mx.zeros((1, model.config.embed_dim)), model.embedding])


def connectivity(model: RNNModel, ids: np.ndarray, targets: np.ndarray,
                 positions: np.ndarray | None = None) -> np.ndarray:
    """``C[k, t]``: squared L2 norm of d logit[n_k, targets[n_k]] / d onehot[t]; zero for ``t > n_k``.

    ``positions`` are the output positions ``n_k`` (default: all). All of them are differentiated
    in one backward pass: the text is repeated once per output position as a batch, and row ``k``
    contributes only its own output's logit, so row ``k`` of the input gradient belongs to ``n_k``.
    """
    ids = np.asarray(ids, dtype=np.int32)
    T = len(ids)
    positions = np.arange(T) if positions is None else np.asarray(positions, dtype=np.int64)
    if len(positions) == 0 or positions.min() < 0 or positions.max() >= T:
        raise EdgeRNNError(f"target positions must lie in 0..{T - 1}")
    table = _embedding_table(model)
    x = mx.broadcast_to(table[mx.array(ids)][None], (len(positions), T, table.shape[1]))
    rows, cols = mx.arange(len(positions)), mx.array(positions)
    chosen = mx.array(np.asarray(targets)[positions].astype(np.int32))

    def picked_logits(x: mx.array) -> mx.array:
        for cell in model.layers:
            x, _ = cell(x)
        logits = model.output(x[rows, cols])  # only the K outputs that are differentiated
        return mx.take_along_axis(logits, chosen[:, None], axis=-1).sum()

    grad_x = mx.grad(picked_logits)(x)  # (K, T, E)
    grad_onehot = grad_x @ table.T  # (K, T, 28): the chain rule through x_t = onehot_t @ table
    C = np.array((grad_onehot * grad_onehot).sum(axis=-1), dtype=np.float64)
    C[np.arange(T)[None, :] > positions[:, None]] = 0.0  # causal: exactly zero already, made explicit
    return C


def state_names(model: RNNModel) -> list[str]:
    """Names of one layer's state tensors, in the cells' order: ``h``, then the memories."""
    cell = model.layers[0]
    if model.config.cell == "nlstm":
        return ["h"] + [f"c{d}" for d in range(cell.depth)]
    return ["h", "c"][: cell.n_states]


def memory_names(model: RNNModel) -> list[str]:
    """The states worth a heat map: the memories (``c``, or ``c0..c{D-1}``), else ``h`` (GRU, RNN)."""
    names = state_names(model)
    return names[1:] or names


def cell_states(model: RNNModel, ids: np.ndarray) -> dict[tuple[int, str], np.ndarray]:
    """``{(layer, name): (T, H)}``: every state after every character, from ``cell.step`` (the
    keyboard's path; the cells' equations are untouched). Layers count from 1."""
    names = state_names(model)
    state = model.initial_state(1)
    x_all = model.embed(mx.array(np.asarray(ids, dtype=np.int32)[None]))
    trace: dict[tuple[int, str], list[mx.array]] = {(k + 1, n): [] for k in range(len(model.layers)) for n in names}
    for t in range(x_all.shape[1]):
        x = x_all[:, t]
        new_state = []
        for k, (cell, s) in enumerate(zip(model.layers, state)):
            x, s = cell.step(x, s)
            new_state.append(s)
            for name, value in zip(names, s):
                trace[(k + 1, name)].append(value[0])
        state = new_state
    return {key: np.array(mx.stack(values)) for key, values in trace.items()}


def letters_typed(ids: np.ndarray) -> np.ndarray:
    """``(B, T)`` -> how many letters of the current word precede-and-include each position:
    0 at a space (the model must guess the next word unseen), 1 at the word's first letter, ..."""
    t = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    last_space = np.maximum.accumulate(np.where(ids == SPACE, t, 0), axis=1)
    return t - last_space


def context_accuracy(model: RNNModel, data: Dataset, max_letters: int = 12, batch_size: int = 64,
                     max_batches: int | None = None) -> dict[str, np.ndarray]:
    """Accuracy by letters typed: ``letters`` 0..max_letters (the last bucket holds all longer
    prefixes), ``count`` scored positions, ``top1``, ``top3``. Only non-pad targets are scored."""
    counts, hits1, hits3 = (np.zeros(max_letters + 1, dtype=np.int64) for _ in range(3))
    for k, (ids, targets) in enumerate(data.batches(batch_size, shuffle=False)):
        if max_batches is not None and k >= max_batches:
            break
        logits, _ = model(mx.array(ids))
        target_logit = mx.take_along_axis(logits, mx.array(targets)[..., None], axis=-1)
        rank = np.array((logits > target_logit).sum(axis=-1))
        scored = targets != PAD
        right = scored & (targets != UNK) if model.config.task == "autocomplete" else scored
        bucket = np.minimum(letters_typed(ids), max_letters)[scored]
        counts += np.bincount(bucket, minlength=max_letters + 1)
        hits1 += np.bincount(bucket, weights=(right & (rank < 1))[scored], minlength=max_letters + 1).astype(np.int64)
        hits3 += np.bincount(bucket, weights=(right & (rank < 3))[scored], minlength=max_letters + 1).astype(np.int64)
    n = np.maximum(counts, 1)
    return {"letters": np.arange(max_letters + 1), "count": counts, "top1": hits1 / n, "top3": hits3 / n}
