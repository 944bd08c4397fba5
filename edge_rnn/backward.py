"""Hand-written backward passes (BPTT) for the recurrent cells, as ``mx.custom_function``s.

Autodiff through a Python time loop records one small graph per step and, on the way back, one
small weight-gradient matmul per step. Here the sequence call of a cell is one custom function:

* forward: the cell's own ``recur`` in a loop (so outputs are *identical* to the autodiff path);
  it returns the whole sequence of every state tensor, time-major ``(T, B, H)``, so the backward
  knows ``h_{t-1}`` and ``c_{t-1}`` at every step without storing anything else;
* backward: (1) recompute every gate activation for all time steps at once: the recurrent matmul
  ``H_prev Wh`` becomes one ``(T*B, H) x (H, G*H)`` GEMM and each activation one large
  element-wise op; (2) walk back through time doing only the per-step element-wise chain rule and
  one ``(B, G*H) x (G*H, H)`` matmul for ``dh_{t-1}``; (3) the weight gradients
  ``dWh = H_prev^T dA`` as ONE large GEMM over all time steps after the loop.

The input projection ``x Wx + b`` is outside the custom function (``Cell.project``): its gradient
is already two large GEMMs under autodiff. Inside, gradients flow to ``xp`` (the projected input),
the initial state and the recurrent parameters (``Wh``; GRU ``bhn``; Nested LSTM inner levels).

Naming follows ``cells.py``: pre-activations ``i, f, g, o`` (after activation the same letters),
``h``/``c`` states; ``d<name>`` is the gradient of the loss w.r.t. ``<name>``. Upper-case names
are whole sequences (``T, B, ...``).
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from edge_rnn import activations as act

State = tuple[mx.array, ...]


# ---- the generic sequence call -------------------------------------------------------------------

def recurrent_params(cell) -> dict:
    """The parameters used inside the time loop: everything except ``Wx`` and ``b``."""
    return {k: v for k, v in tree_flatten(cell.parameters()) if k not in ("Wx", "b")}


def supports(cell) -> bool:
    """Whether ``cell``'s class has a hand-written backward here (a subclass under another name,
    with its own ``recur``, falls back to autodiff)."""
    return type(cell).__name__ in BACKWARDS


def sequence(cell, xp: mx.array, state: State) -> tuple[mx.array, State]:
    """``(hs, final_state)`` of ``cell`` over the projected inputs ``xp`` (B, T, G*H), with the
    hand-written backward of the cell's class."""
    backward = BACKWARDS[type(cell).__name__]

    @mx.custom_function
    def run(xp, state, params):
        # `recur` reads the cell's parameters: lend it the arrays this function was given (they
        # are not the same objects as the cell's under mx.compile), and put the cell's back after.
        own = recurrent_params(cell)
        cell.update(tree_unflatten(list(params.items())))
        try:
            seqs = [[] for _ in state]
            for t in range(xp.shape[1]):
                _, state = cell.recur(xp[:, t], state)
                for seq, s in zip(seqs, state):
                    seq.append(s)
        finally:
            cell.update(tree_unflatten(list(own.items())))
        return tuple(mx.stack(seq) for seq in seqs)  # each (T, B, H)

    @run.vjp
    def run_vjp(primals, cotangents, outputs):
        xp, state, params = primals
        return backward(cell, xp, state, params, outputs, cotangents)

    seqs = run(xp, tuple(state), recurrent_params(cell))
    return seqs[0].swapaxes(0, 1), tuple(s[-1] for s in seqs)


# ---- helpers -------------------------------------------------------------------------------------

def _previous(seq: mx.array, first: mx.array) -> mx.array:
    """``(T, B, H)`` sequence of the values *before* each step: ``[s_0, s_1, ..., s_{T-1}]``."""
    return mx.concatenate([first[None], seq[:-1]])


def _time_major(xp: mx.array) -> mx.array:
    return xp.swapaxes(0, 1)  # (B, T, ...) -> (T, B, ...)


def _gemm_over_time(A: mx.array, dZ: mx.array) -> mx.array:
    """``sum_t A_t^T dZ_t`` as one GEMM: ``(T*B, K)^T x (T*B, N)``."""
    return A.reshape(-1, A.shape[-1]).T @ dZ.reshape(-1, dZ.shape[-1])


def _batch_major(DA: list[mx.array]) -> mx.array:
    """Per-step gradients collected backwards in time -> ``(B, T, N)``."""
    return mx.stack(DA[::-1], axis=1)


def _transposed(W: mx.array) -> mx.array:
    """``W.T`` laid out row-major once: the per-step ``dA @ W.T`` then skips a strided copy."""
    return mx.contiguous(W.T)


def _dsig(s):  # derivative of sigmoid from its output
    return s * (1 - s)


def _dtanh(y):  # derivative of tanh from its output
    return 1 - y * y


# ---- per-step bodies, compiled: each fuses a step's element-wise work into one kernel ----------

@mx.compile
def _rnn_step(dh, dH_t, F_t):
    return (dh + dH_t) * F_t


@mx.compile
def _gru_step(dh, dH_t, Fz, Fn, Fr, r, z):
    dh = dh + dH_t
    dn = dh * Fn                               # through n = tanh(xn + r * (hn + bhn))
    dr = dn * Fr                               # through r = sigmoid(.)
    dxp = mx.concatenate([dr, dh * Fz, dn], axis=-1)
    dhh = mx.concatenate([dr, dh * Fz, dn * r], axis=-1)  # gradient of h Wh (+ bhn for the n block)
    return dxp, dhh, dh * z


@mx.compile
def _lstm_step(dh, dc, dH_t, dC_t, Po, F, f):
    dh = dh + dH_t
    dc = dc + dC_t + dh * Po                   # c feeds h = o * tanh(c) and the next step
    da = mx.concatenate([dc, dc, dc, dh], axis=-1) * F  # i, f, g from c; o from h
    return da, dc * f


@mx.compile
def _cifg_step(dh, dc, dH_t, dC_t, Po, F, one_minus_i):
    dh = dh + dH_t
    dc = dc + dC_t + dh * Po
    da = mx.concatenate([dc, dc, dh], axis=-1) * F  # i, g from c; o from h
    return da, dc * one_minus_i


# ---- the cells ---------------------------------------------------------------------------------

def rnn_backward(cell, xp, state, params, outputs, cotangents):
    """``h = tanh(xp + h_prev Wh)``."""
    (h0,), (H,), (dH,) = state, outputs, cotangents
    Wh = params["Wh"]
    WhT = _transposed(Wh)
    F = _dtanh(H)
    dh, DA = mx.zeros_like(h0), []
    for t in reversed(range(H.shape[0])):
        da = _rnn_step(dh, dH[t], F[t])
        DA.append(da)
        dh = da @ WhT
    dA = mx.stack(DA[::-1])
    dWh = _gemm_over_time(_previous(H, h0), dA)
    return dA.swapaxes(0, 1), (dh,), {"Wh": dWh}


def gru_backward(cell, xp, state, params, outputs, cotangents):
    """Reset-after GRU: ``r, z = sigmoid(x + h Wh)``, ``n = tanh(xn + r*(hn + bhn))``,
    ``h = (1-z) n + z h_prev``."""
    (h0,), (H,), (dH,) = state, outputs, cotangents
    Wh, bhn = params["Wh"], params["bhn"]
    WhT = _transposed(Wh)
    Hprev = _previous(H, h0)
    xr, xz, xn = mx.split(_time_major(xp), 3, axis=-1)
    hr, hz, hn = mx.split(Hprev @ Wh, 3, axis=-1)          # one GEMM for all steps
    hn = hn + bhn
    r, z = act.sigmoid(xr + hr), act.sigmoid(xz + hz)
    n = act.tanh(xn + r * hn)
    Fz = (Hprev - n) * _dsig(z)                             # dh -> pre-activation of z
    Fn = (1 - z) * _dtanh(n)                                # dh -> pre-activation of n
    Fr = hn * _dsig(r)                                      # that -> pre-activation of r
    dh, DXP, DHH = mx.zeros_like(h0), [], []
    for t in reversed(range(H.shape[0])):
        dxp, dhh, dh_direct = _gru_step(dh, dH[t], Fz[t], Fn[t], Fr[t], r[t], z[t])
        DXP.append(dxp)
        DHH.append(dhh)
        dh = dh_direct + dhh @ WhT
    dHH = mx.stack(DHH[::-1])
    grads = {"Wh": _gemm_over_time(Hprev, dHH), "bhn": dHH[..., 2 * h0.shape[-1]:].sum(axis=(0, 1))}
    return _batch_major(DXP), (dh,), grads


def lstm_backward(cell, xp, state, params, outputs, cotangents):
    """``c = sigmoid(f) c_prev + sigmoid(i) tanh(g)``, ``h = sigmoid(o) tanh(c)``."""
    (h0, c0), (H, C), (dH, dC) = state, outputs, cotangents
    Wh = params["Wh"]
    WhT = _transposed(Wh)
    Hprev, Cprev = _previous(H, h0), _previous(C, c0)
    i, f, g, o = mx.split(_time_major(xp) + Hprev @ Wh, 4, axis=-1)
    i, f, g, o = act.sigmoid(i), act.sigmoid(f), act.tanh(g), act.sigmoid(o)
    tc = act.tanh(C)
    Po = o * _dtanh(tc)                                     # dh -> dc
    F = mx.concatenate([g * _dsig(i), Cprev * _dsig(f), i * _dtanh(g), tc * _dsig(o)], axis=-1)
    dh, dc, DA = mx.zeros_like(h0), mx.zeros_like(c0), []
    for t in reversed(range(H.shape[0])):
        da, dc = _lstm_step(dh, dc, dH[t], dC[t], Po[t], F[t], f[t])
        DA.append(da)
        dh = da @ WhT
    dA = mx.stack(DA[::-1])
    return dA.swapaxes(0, 1), (dh, dc), {"Wh": _gemm_over_time(Hprev, dA)}


def cifg_backward(cell, xp, state, params, outputs, cotangents):
    """``i = sigmoid(i)``, ``c = (1-i) c_prev + i tanh(g)``, ``h = sigmoid(o) tanh(c)``."""
    (h0, c0), (H, C), (dH, dC) = state, outputs, cotangents
    Wh = params["Wh"]
    WhT = _transposed(Wh)
    Hprev, Cprev = _previous(H, h0), _previous(C, c0)
    i, g, o = mx.split(_time_major(xp) + Hprev @ Wh, 3, axis=-1)
    i, g, o = act.sigmoid(i), act.tanh(g), act.sigmoid(o)
    tc = act.tanh(C)
    Po = o * _dtanh(tc)
    F = mx.concatenate([(g - Cprev) * _dsig(i), i * _dtanh(g), tc * _dsig(o)], axis=-1)
    dh, dc, DA = mx.zeros_like(h0), mx.zeros_like(c0), []
    for t in reversed(range(H.shape[0])):
        da, dc = _cifg_step(dh, dc, dH[t], dC[t], Po[t], F[t], 1 - i[t])
        DA.append(da)
        dh = da @ WhT
    dA = mx.stack(DA[::-1])
    return dA.swapaxes(0, 1), (dh, dc), {"Wh": _gemm_over_time(Hprev, dA)}


def nlstm_backward(cell, xp, state, params, outputs, cotangents):
    """Nested LSTM of any depth D (see ``cells.NestedLSTM``).

    Level ``d`` has gates from pre-activation ``a_d``; it hands ``x~_d = i * G_d`` (``G_0 = g``,
    else ``tanh(g)``) and ``h~_d = f * c_d,prev`` down as level ``d+1``'s input and hidden state;
    ``c_d,new`` is level ``d+1``'s output (innermost: ``h~ + x~``); level ``d`` outputs
    ``o * tanh(c_d,new)``. Backward per step: down the levels for the output path, then up the
    levels for the gate path, which is where the inner levels' matmuls are.
    """
    h0, *c0 = state
    Hseq, *Cseq = outputs
    dHseq, *dCseq = cotangents
    D = len(c0)
    Wh = params["Wh"]
    WhT = _transposed(Wh)
    inner = [(params[f"inner.{d}.Wx"], params[f"inner.{d}.Wh"], params[f"inner.{d}.b"])
             for d in range(D - 1)]
    Hprev = _previous(Hseq, h0)
    Cprev = [_previous(C, c) for C, c in zip(Cseq, c0)]

    # (1) recompute every level's activations for all steps; factors for the per-step chain rule
    Fi, Ff, Fg, Fo, Po, F_carry, Xin, Hin = [], [], [], [], [], [], [], []
    a = _time_major(xp) + Hprev @ Wh
    for d in range(D):
        i, f, g, o = mx.split(a, 4, axis=-1)
        i, f, o = act.sigmoid(i), act.sigmoid(f), act.sigmoid(o)
        G = g if d == 0 else act.tanh(g)
        tc = act.tanh(Cseq[d])
        Fi.append(G * _dsig(i))                                   # dx~ -> pre-activation of i
        Fg.append(i if d == 0 else i * _dtanh(G))                 # dx~ -> pre-activation of g
        Ff.append(Cprev[d] * _dsig(f))                            # dh~ -> pre-activation of f
        Fo.append(tc * _dsig(o))                                  # dout -> pre-activation of o
        Po.append(o * _dtanh(tc))                                 # dout -> dc_d,new
        F_carry.append(f)                                         # dh~ -> dc_d,prev
        x_in, h_in = i * G, f * Cprev[d]
        if d < D - 1:
            Wx_d, Wh_d, b_d = inner[d]
            a = x_in @ Wx_d + h_in @ Wh_d + b_d                   # two GEMMs for all steps
            Xin.append(x_in)
            Hin.append(h_in)
    # level d >= 1 sends its gate gradient up through [Wx_d; Wh_d]: one matmul per step
    W_up = [_transposed(mx.concatenate([Wx_d, Wh_d], axis=0)) for Wx_d, Wh_d, _ in inner]  # (4H, 2H)

    # (2) back through time
    dh = mx.zeros_like(h0)
    dc = [mx.zeros_like(c) for c in c0]
    DA = [[] for _ in range(D)]
    for t in reversed(range(Hseq.shape[0])):
        dout = dh + dHseq[t]
        dso = []
        for d in range(D):                     # down: each level's output is the c of the level above
            dso.append(dout * Fo[d][t])
            dout = dc[d] + dCseq[d][t] + dout * Po[d][t]
        dx_in = dh_in = dout                   # innermost: c_new = h~ + x~
        for d in reversed(range(D)):           # up: gate gradients, handed to the level above
            da = mx.concatenate([dx_in * Fi[d][t], dh_in * Ff[d][t], dx_in * Fg[d][t], dso[d]], axis=-1)
            DA[d].append(da)
            dc[d] = dh_in * F_carry[d][t]
            if d > 0:
                dx_in, dh_in = mx.split(da @ W_up[d - 1], 2, axis=-1)
            else:
                dh = da @ WhT
    dA = [mx.stack(seq[::-1]) for seq in DA]

    # (3) weight gradients: one GEMM each over all time steps
    grads = {"Wh": _gemm_over_time(Hprev, dA[0])}
    for d in range(D - 1):
        grads[f"inner.{d}.Wx"] = _gemm_over_time(Xin[d], dA[d + 1])
        grads[f"inner.{d}.Wh"] = _gemm_over_time(Hin[d], dA[d + 1])
        grads[f"inner.{d}.b"] = dA[d + 1].sum(axis=(0, 1))
    return dA[0].swapaxes(0, 1), (dh, *dc), grads


BACKWARDS = {"RNN": rnn_backward, "GRU": gru_backward, "LSTM": lstm_backward, "CIFG": cifg_backward,
             "NestedLSTM": nlstm_backward}
