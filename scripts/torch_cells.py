"""PyTorch equivalents of edge_rnn's cells and model, for the benchmark scripts only.

GRU, LSTM and RNN are PyTorch's own ``nn.GRU``/``nn.LSTM``/``nn.RNN`` (same gate orders as
``edge_rnn.cells``: GRU r,z,n with the reset gate after the recurrent matmul; LSTM i,f,g,o).
CIFG and the Nested LSTM, which PyTorch does not have, are written here once from the equations of
``edge_rnn.cells`` (``cifg_update``, ``nlstm_level``, names as there). One module for every script:
``bench_train.py`` and ``compare_learning.py`` train ``Model`` from PyTorch's init;
``bench_latency.py`` loads our trained weights into ``Recurrent`` (``load_edge_weights``) and runs
it one keystroke at a time (``Recurrent.step``).

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

    def step(self, xp: torch.Tensor, h: torch.Tensor, cs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One time step from the input projection ``xp = x2h(x)``: the new ``h`` and memories."""
        gates = xp + self.h2h(h)
        if self.cell == "cifg":
            h, c = cifg_update(gates, cs[0])
            return h, [c]
        h, *cs = nlstm_level(self.inner, 0, gates, cs)
        return h, cs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        xp = self.x2h(x)  # input projection for all steps at once, like edge_rnn.cells.Cell
        h = x.new_zeros(B, self.H)
        cs = [x.new_zeros(B, self.H) for _ in range(self.n_cs)]
        hs = []
        for t in range(T):
            h, cs = self.step(xp[:, t], h, cs)
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

    def step(self, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """One keystroke from ``x (B, I)``. ``state``: ``(h,)`` or ``(h, c)`` of shape ``(layers, B, H)``
        for PyTorch's modules; per layer ``h, c_0, ...`` of shape ``(B, H)`` for the hand-written ones."""
        if self.builtin is not None:
            y, new = self.builtin(x[:, None], state if len(state) == 2 else state[0])
            return y[:, 0], (tuple(new) if isinstance(new, tuple) else (new,))
        per_layer, new = 1 + self.stack[0].n_cs, []
        for k, layer in enumerate(self.stack):
            h, *cs = state[k * per_layer : (k + 1) * per_layer]
            x, cs = layer.step(layer.x2h(x), h, cs)
            new += [x, *cs]
        return x, tuple(new)

    def state_shapes(self, layers: int, units: int) -> list[tuple[int, ...]]:
        """The ``state`` tensors ``step`` takes, batch 1."""
        if self.builtin is not None:
            return [(layers, 1, units)] * (2 if isinstance(self.builtin, nn.LSTM) else 1)
        return [(1, units)] * (layers * (1 + self.stack[0].n_cs))


@torch.no_grad()
def load_edge_weights(rnn: Recurrent, cfg, p: dict[str, torch.Tensor]) -> None:
    """Copy an ``edge_rnn`` model's recurrent weights (``p``: ``layers.{k}.Wx`` ... as tensors) into
    ``rnn``. Same gate orders; ours compute ``x @ Wx``, ``nn.Linear``/``nn.RNNBase`` store ``W^T``.
    PyTorch splits the bias into ``b_ih`` (ours ``b``) and ``b_hh``, zero except the GRU's ``b_hn``,
    which is our ``bhn`` (inside the reset product in both)."""
    for k in range(cfg.layers):
        Wx, Wh, b = (p[f"layers.{k}.{n}"] for n in ("Wx", "Wh", "b"))
        if rnn.builtin is not None:
            getattr(rnn.builtin, f"weight_ih_l{k}").copy_(Wx.T)
            getattr(rnn.builtin, f"weight_hh_l{k}").copy_(Wh.T)
            getattr(rnn.builtin, f"bias_ih_l{k}").copy_(b)
            bh = torch.zeros_like(b)
            if cfg.cell == "gru":
                bh[2 * cfg.units:] = p[f"layers.{k}.bhn"]
            getattr(rnn.builtin, f"bias_hh_l{k}").copy_(bh)
            continue
        layer = rnn.stack[k]
        layer.x2h.weight.copy_(Wx.T)
        layer.x2h.bias.copy_(b)
        layer.h2h.weight.copy_(Wh.T)
        for d, (wx, wh) in enumerate(layer.inner):
            wx.weight.copy_(p[f"layers.{k}.inner.{d}.Wx"].T)
            wx.bias.copy_(p[f"layers.{k}.inner.{d}.b"])
            wh.weight.copy_(p[f"layers.{k}.inner.{d}.Wh"].T)


class Model(nn.Module):
    """Embedding (row 0 = <pad>, zero) -> recurrent stack -> [bias-free bottleneck] -> linear head:
    ``edge_rnn.model.RNNModel``, with its ``head_dim`` projection when the config has one."""

    def __init__(self, cfg):
        super().__init__()
        self.task = cfg.task
        self.embedding = nn.Embedding(N_SYMBOLS, cfg.embed_dim, padding_idx=PAD)
        self.rnn = Recurrent(cfg)
        head_dim = getattr(cfg, "head_dim", 0)
        self.bottleneck = nn.Linear(cfg.units, head_dim, bias=False) if head_dim else nn.Identity()
        self.head = nn.Linear(head_dim or cfg.units, cfg.n_outputs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.bottleneck(self.rnn(self.embedding(ids))))

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
