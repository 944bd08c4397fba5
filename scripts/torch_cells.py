"""PyTorch equivalents of edge_rnn's cells and model, for the benchmark scripts only.

GRU, LSTM and RNN are PyTorch's own ``nn.GRU``/``nn.LSTM``/``nn.RNN`` (same gate orders as
``edge_rnn.cells``: GRU r,z,n with the reset gate after the recurrent matmul; LSTM i,f,g,o).
CIFG and the Nested LSTM, which PyTorch does not have, are written here once from the equations of
``edge_rnn.cells`` (``cifg_update``, ``nlstm_level``, names as there); ``bench_latency.py`` loads our
weights into them, ``bench_train.py`` and ``compare_learning.py`` train them from PyTorch's init.

Initialisation is PyTorch's default everywhere, as a PyTorch user would get it: ``nn.Embedding``
N(0, 1); every recurrent weight and bias U(-1/sqrt(H), 1/sqrt(H)) (what ``nn.RNNBase`` does; the
hand-written cells apply the same rule); ``nn.Linear`` head U(-1/sqrt(in), 1/sqrt(in)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edge_rnn.vocab import N_SYMBOLS, PAD, UNK


def cifg_update(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """i = sigmoid(i);  c = (1 - i) * c + i * tanh(g);  h = sigmoid(o) * tanh(c)"""
    i, g, o = gates.chunk(3, dim=-1)
    i = torch.sigmoid(i)
    c = (1 - i) * c + i * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def nlstm_level(inner, d: int, gates: torch.Tensor, cs) -> list[torch.Tensor]:
    """Nested LSTM level ``d`` (see ``edge_rnn.cells.NestedLSTM._level``): ``[h_d, c_d, c_{d+1}, ...]``.

    ``inner[d]`` is the ``(Wx, Wh)`` pair of ``nn.Linear`` of level ``d + 1``; depth = len(inner) + 1.
    """
    i, f, g, o = gates.chunk(4, dim=-1)
    h_inner = torch.sigmoid(f) * cs[d]
    x_inner = torch.sigmoid(i) * (g if d == 0 else torch.tanh(g))
    if d == len(inner):
        deeper = [h_inner + x_inner]
    else:
        wx, wh = inner[d]
        deeper = nlstm_level(inner, d + 1, wx(x_inner) + wh(h_inner), cs)
    c = deeper[0]
    return [torch.sigmoid(o) * torch.tanh(c), c, *deeper[1:]]


class HandwrittenLayer(nn.Module):
    """One CIFG or Nested LSTM layer over a ``(B, T, I)`` sequence, from a zero state."""

    def __init__(self, cell: str, input_size: int, hidden: int, depth: int = 2):
        super().__init__()
        self.cell, self.H = cell, hidden
        gates = 3 if cell == "cifg" else 4
        self.x2h = nn.Linear(input_size, gates * hidden)
        self.h2h = nn.Linear(hidden, gates * hidden, bias=False)
        levels = range(depth - 1) if cell == "nlstm" else range(0)
        self.inner = nn.ModuleList(nn.ModuleList([nn.Linear(hidden, 4 * hidden), nn.Linear(hidden, 4 * hidden, bias=False)])
                                   for _ in levels)
        self.n_cs = 1 if cell == "cifg" else depth
        bound = 1 / math.sqrt(hidden)  # nn.RNNBase.reset_parameters' rule
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        xp = self.x2h(x)  # input projection for all steps at once, like edge_rnn.cells.Cell
        h = x.new_zeros(B, self.H)
        cs = [x.new_zeros(B, self.H) for _ in range(self.n_cs)]
        hs = []
        for t in range(T):
            gates = xp[:, t] + self.h2h(h)
            if self.cell == "cifg":
                h, c = cifg_update(gates, cs[0])
                cs = [c]
            else:
                h, *cs = nlstm_level(self.inner, 0, gates, cs)
            hs.append(h)
        return torch.stack(hs, dim=1)


class Recurrent(nn.Module):
    """``layers`` stacked cells: PyTorch's fused module where it has one, else hand-written layers."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.cell in ("gru", "lstm", "rnn"):
            kind = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cfg.cell]
            self.builtin = kind(cfg.embed_dim, cfg.units, cfg.layers, batch_first=True)
        else:
            self.builtin = None
            self.stack = nn.ModuleList(HandwrittenLayer(cfg.cell, cfg.embed_dim if k == 0 else cfg.units,
                                                        cfg.units, cfg.depth) for k in range(cfg.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.builtin is not None:
            return self.builtin(x)[0]
        for layer in self.stack:
            x = layer(x)
        return x


class Model(nn.Module):
    """Embedding (row 0 = <pad>, zero) -> recurrent stack -> linear head: ``edge_rnn.model.RNNModel``."""

    def __init__(self, cfg):
        super().__init__()
        self.task = cfg.task
        self.embedding = nn.Embedding(N_SYMBOLS, cfg.embed_dim, padding_idx=PAD)
        self.rnn = Recurrent(cfg)
        self.head = nn.Linear(cfg.units, cfg.n_outputs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embedding(ids)))

    def loss_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """Never <pad>; for autocomplete not <unk> either (``RNNModel.loss_weights``)."""
        weights = targets != PAD
        if self.task == "autocomplete":
            weights &= targets != UNK
        return weights

    def loss(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the tokens that carry loss (``RNNModel.loss``)."""
        logits = self(ids)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), reduction="none")
        weights = self.loss_weights(targets).reshape(-1).float()
        return (ce * weights).sum() / weights.sum().clamp(min=1)
