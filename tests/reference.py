"""Plain-NumPy reference implementations of the cell equations, used only by tests.

Written from the papers' equations, independently of ``edge_rnn.cells`` (which is MLX): gates are
computed from the concatenation ``[x, h] W + b`` as the papers write them, with explicit slicing.
Parameters come as a dict of NumPy arrays in the layout documented in ``edge_rnn.cells``.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gates(p, x, h, n):
    """``[x, h] W + b`` split into ``n`` blocks (W stacked from Wx over Wh)."""
    W = np.concatenate([p["Wx"], p["Wh"]], axis=0)
    z = np.concatenate([x, h], axis=-1) @ W + p["b"]
    return np.split(z, n, axis=-1)


def rnn_step(p, x, state):
    (h,) = state
    (a,) = _gates(p, x, h, 1)
    h = np.tanh(a)
    return h, (h,)


def gru_step(p, x, state):
    """Reset-after GRU (Cho et al. 2014 with PyTorch/cuDNN placement of r)."""
    (h,) = state
    H = h.shape[-1]
    xr, xz, xn = np.split(x @ p["Wx"] + p["b"], 3, axis=-1)
    Wh = p["Wh"]
    r = sigmoid(xr + h @ Wh[:, :H])
    z = sigmoid(xz + h @ Wh[:, H : 2 * H])
    n = np.tanh(xn + r * (h @ Wh[:, 2 * H :] + p["bhn"]))
    h = (1.0 - z) * n + z * h
    return h, (h,)


def lstm_step(p, x, state):
    h, c = state
    i, f, g, o = _gates(p, x, h, 4)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return h, (h, c)


def cifg_step(p, x, state):
    h, c = state
    i, g, o = _gates(p, x, h, 3)
    i = sigmoid(i)
    c = (1.0 - i) * c + i * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return h, (h, c)


def nlstm_step(p, x, state):
    """Nested LSTM of depth D = len(state) - 1, written iteratively (outer -> inner, then back).

    Level d's gates come from (x_d, h_d); it passes x~ = i*act(g) and h~ = f*c_d down as the next
    level's (x, h); the innermost level adds them; each level's output h is the memory of the level
    above it.
    """
    h, *cs = state
    D = len(cs)
    levels = [{"Wx": p["Wx"], "Wh": p["Wh"], "b": p["b"]}]
    levels += [{k: p[f"inner.{d}.{k}"] for k in ("Wx", "Wh", "b")} for d in range(D - 1)]
    outs = []  # sigmoid(o) of each level, applied on the way back up
    xd, hd = x, h
    for d in range(D):
        i, f, g, o = _gates(levels[d], xd, hd, 4)
        hd = sigmoid(f) * cs[d]
        xd = sigmoid(i) * (g if d == 0 else np.tanh(g))
        outs.append(sigmoid(o))
    new_cs = [None] * D
    c = hd + xd  # innermost memory update
    for d in reversed(range(D)):
        new_cs[d] = c
        c = outs[d] * np.tanh(c)  # h of level d = memory of level d-1
    return c, (c, *new_cs)


STEPS = {"rnn": rnn_step, "gru": gru_step, "lstm": lstm_step, "cifg": cifg_step, "nlstm": nlstm_step}


def run_sequence(cell: str, p, xs, state):
    """xs (B, T, I) -> hs (B, T, H), final state."""
    step = STEPS[cell]
    hs = []
    for t in range(xs.shape[1]):
        h, state = step(p, xs[:, t], state)
        hs.append(h)
    return np.stack(hs, axis=1), state


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def model_logits(cfg, params: dict, ids: np.ndarray):
    """Whole-model reference: embedding (pad row zero) -> stacked cells -> head. ids (B, T)."""
    E = cfg.embed_dim
    table = np.concatenate([np.zeros((1, E)), params["embedding"]])
    x = table[ids]
    for k in range(cfg.layers):
        p = {name[len(f"layers.{k}.") :]: v for name, v in params.items() if name.startswith(f"layers.{k}.")}
        n_states = {"rnn": 1, "gru": 1, "lstm": 2, "cifg": 2, "nlstm": 1 + cfg.depth}[cfg.cell]
        state = tuple(np.zeros((ids.shape[0], cfg.units)) for _ in range(n_states))
        x, _ = run_sequence(cfg.cell, p, x, state)
    if getattr(cfg, "head_dim", 0):  # the bottleneck projection, no bias
        x = x @ params["bottleneck.weight"].T
    return x @ params["head.weight"].T + params["head.bias"]
