"""Recurrent cells in MLX: RNN, GRU, LSTM, CIFG-LSTM and Nested LSTM.

One protocol for every cell:

- ``initial_state(batch)`` -> tuple of ``(batch, hidden)`` zero arrays, ``h`` first;
- ``step(x_t, state) -> (h_t, state)`` for one time step (what a keyboard runs per keystroke);
- ``cell(x, state=None) -> (hs, state)`` for a whole ``(batch, time, input)`` sequence. It computes
  the input projection ``x W_x + b`` for all time steps in one matmul, then runs only the recurrent
  part, ``recur``, in the time loop.

Parameters use one layout everywhere (training, export, references): ``Wx`` is ``(input, G*H)``,
``Wh`` is ``(H, G*H)``, ``b`` is ``(G*H,)`` with the ``G`` gate blocks in the order named by each
cell's ``gates``. Stacking layers is the model's business, not the cells'.

Forget bias: the cells add no hidden constant. The LSTM's forget-gate bias is *initialised* to +1
(TensorFlow's ``forget_bias=1.0`` with the constant folded into the trainable bias); the CIFG and
the Nested LSTM start every bias at 0, because +1 there learned slower (measured: see each).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from edge_rnn import backward
from edge_rnn.activations import sigmoid, tanh  # MLX's, or the optional vectorised CPU kernels

State = tuple[mx.array, ...]


def glorot_uniform(fan_in: int, fan_out: int) -> mx.array:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return mx.random.uniform(-limit, limit, (fan_in, fan_out))


def orthogonal_blocks(hidden: int, blocks: int) -> mx.array:
    """``(H, blocks*H)``: an orthogonal ``H x H`` matrix per gate, so each gate starts norm-preserving."""
    init = nn.init.orthogonal()
    return mx.concatenate([init(mx.zeros((hidden, hidden))) for _ in range(blocks)], axis=1)


@mx.custom_function
def unstack_time(x: mx.array) -> list[mx.array]:
    """``(B, T, D)`` -> ``T`` arrays ``(B, D)``.

    Same values as ``x[:, t]``, but with a gradient that stacks the ``T`` cotangents once: MLX's own
    slice/split gradients materialise a full-size ``(B, T, D)`` array per time step, which made
    autodiff through the time loop quadratic in ``T`` (measured 9x slower at T=100).
    """
    return [x[:, t] for t in range(x.shape[1])]


@unstack_time.vjp
def _unstack_time_vjp(primals, cotangents, outputs):
    return mx.stack(cotangents, axis=1)


class Cell(nn.Module):
    """Base class: owns ``Wx``, ``Wh``, ``b`` and the sequence loop; subclasses write ``recur``."""

    gates: str = ""  # one letter per H-wide block of the projection, e.g. "ifgo"
    n_states: int = 1  # number of (batch, H) state tensors, h first
    # Sequence calls differentiate with the hand-written BPTT of edge_rnn.backward (same forward
    # values, much faster gradients); False: plain autodiff through the time loop (the reference).
    manual_backward: bool = True

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        width = len(self.gates) * hidden_size
        self.Wx = glorot_uniform(input_size, width)
        self.Wh = orthogonal_blocks(hidden_size, len(self.gates))
        self.b = mx.zeros((width,))

    def _set_bias(self, gate: str, value: float) -> None:
        k, H = self.gates.index(gate), self.hidden_size
        self.b[k * H : (k + 1) * H] = value

    def initial_state(self, batch: int) -> State:
        return tuple(mx.zeros((batch, self.hidden_size)) for _ in range(self.n_states))

    def project(self, x: mx.array) -> mx.array:
        """Input part of every gate, ``x Wx + b``; for one step or a whole sequence at once."""
        return x @ self.Wx + self.b

    def recur(self, xp: mx.array, state: State) -> tuple[mx.array, State]:
        """One step from the projected input ``xp``: the only part that must run in time order."""
        raise NotImplementedError

    def step(self, x: mx.array, state: State) -> tuple[mx.array, State]:
        return self.recur(self.project(x), state)

    def __call__(self, x: mx.array, state: State | None = None) -> tuple[mx.array, State]:
        if state is None:
            state = self.initial_state(x.shape[0])
        xp = self.project(x)  # (B, T, G*H): one big matmul instead of T small ones
        if self.manual_backward and backward.supports(self):
            return backward.sequence(self, xp, state)
        hs = []
        for xp_t in unstack_time(xp):
            h, state = self.recur(xp_t, state)
            hs.append(h)
        return mx.stack(hs, axis=1), state


class RNN(Cell):
    """Elman RNN: ``h = tanh(x Wx + h Wh + b)``."""

    gates = "g"

    def recur(self, xp, state):
        (h,) = state
        h = tanh(xp + h @ self.Wh)
        return h, (h,)


class GRU(Cell):
    """GRU with the reset gate applied *after* the recurrent matmul (PyTorch, cuDNN, MLX, Keras
    ``reset_after=True``)::

        r = sigmoid(x Wxr + h Whr + br)
        z = sigmoid(x Wxz + h Whz + bz)
        n = tanh(x Wxn + bn + r * (h Whn + bhn))
        h = (1 - z) * n + z * h

    ``bhn`` is the one bias the reset-before formula (TensorFlow 1's ``GRUCell``, the article's) does
    not have: ``H`` extra parameters per layer, 1,200 for the article's 2x600 GRU.
    """

    gates = "rzn"

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.bhn = mx.zeros((hidden_size,))

    def recur(self, xp, state):
        (h,) = state
        xr, xz, xn = mx.split(xp, 3, axis=-1)
        hr, hz, hn = mx.split(h @ self.Wh, 3, axis=-1)
        r = sigmoid(xr + hr)
        z = sigmoid(xz + hz)
        n = tanh(xn + r * (hn + self.bhn))
        h = (1 - z) * n + z * h
        return h, (h,)


class LSTM(Cell):
    """LSTM without peepholes, gates ``i, f, g, o``::

        c = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h = sigmoid(o) * tanh(c)
    """

    gates = "ifgo"
    n_states = 2

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self._set_bias("f", 1.0)

    def recur(self, xp, state):
        h, c = state
        i, f, g, o = mx.split(xp + h @ self.Wh, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h = sigmoid(o) * tanh(c)
        return h, (h, c)


class CIFG(Cell):
    """Coupled input-forget gate LSTM (Greff et al. 2017; Gboard's cell), gates ``i, g, o``::

        i = sigmoid(i);  f = 1 - i
        c = f * c + i * tanh(g)
        h = sigmoid(o) * tanh(c)

    Every bias starts at 0 (``f = i = 0.5``). The LSTM's forget bias +1 would be an input bias of
    -1 here, and that stalls a two-layer CIFG near the unigram plateau: GRU-sized 2x128 on
    WikiText-2, lr 1e-2, top-1 0.133 after 200 steps with it, 0.383 without (PyTorch 0.284);
    ``tests/test_learning.py`` holds the seeded case.
    """

    gates = "igo"
    n_states = 2

    def recur(self, xp, state):
        h, c = state
        i, g, o = mx.split(xp + h @ self.Wh, 3, axis=-1)
        i = sigmoid(i)
        c = (1 - i) * c + i * tanh(g)
        h = sigmoid(o) * tanh(c)
        return h, (h, c)


class InnerLSTM(nn.Module):
    """The parameters of one inner level of a Nested LSTM (input and hidden are both ``H`` wide)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.Wx = glorot_uniform(hidden_size, 4 * hidden_size)
        self.Wh = orthogonal_blocks(hidden_size, 4)
        self.b = mx.zeros((4 * hidden_size,))


class NestedLSTM(Cell):
    """Nested LSTM (Moniz & Krueger 2018), as the Distill reference computes it.

    State ``(h, c_0, ..., c_{D-1})``. Level ``d`` has gates ``i, f, g, o`` from ``[x_d, h_d]``;
    instead of adding ``f*c + i*g``, it hands both terms to the next level as *its* hidden state and
    input, and that level's output becomes the new memory::

        h~ = sigmoid(f) * c_d                          # inner hidden
        x~ = sigmoid(i) * g        (d = 0: identity)   # inner input
             sigmoid(i) * tanh(g)  (d > 0)
        c_d = h~ + x~                      if d is the innermost level
            = level d+1 run on (x~, h~)    otherwise
        h_d = sigmoid(o) * tanh(c_d)

    The outer level takes the cell's input and previous output (``project``/``Wh``/``b`` of the
    base class); levels ``1..D-1`` are ``inner``.

    Every bias starts at 0. The reference's forget bias +1 at every depth (the LSTM keeps its +1)
    learned slower on real text: 1x128 on WikiText-2, lr 1e-2 warm-up + cosine over 500 steps
    (``scripts/compare_learning.py``), valid top-1 0.199 / 0.462 at 100 / 500 steps with it,
    0.242 / 0.513 without, PyTorch's default init 0.229 / 0.482; most of the gap is the inner
    levels' bias (0.231 / 0.506 with only the outer +1 kept). On the synthetic demo corpus, whose
    facts reward long memory, +1 is ahead early (1x64, 100 steps: valid CE 3.21 vs 3.39).
    """

    gates = "ifgo"

    def __init__(self, input_size: int, hidden_size: int, depth: int = 2):
        if depth < 2:
            raise ValueError(f"Nested LSTM depth must be >= 2 (depth 1 is a plain LSTM), got {depth}")
        super().__init__(input_size, hidden_size)
        self.depth = depth
        self.n_states = 1 + depth
        self.inner = [InnerLSTM(hidden_size) for _ in range(depth - 1)]

    def _level(self, d: int, gates: mx.array, cs: State) -> list[mx.array]:
        """Run level ``d`` from its gate pre-activations; return ``[h_d, c_d, c_{d+1}, ...]``."""
        i, f, g, o = mx.split(gates, 4, axis=-1)
        h_inner = sigmoid(f) * cs[d]
        x_inner = sigmoid(i) * (g if d == 0 else tanh(g))
        if d == self.depth - 1:
            deeper = [h_inner + x_inner]
        else:
            level = self.inner[d]
            deeper = self._level(d + 1, x_inner @ level.Wx + h_inner @ level.Wh + level.b, cs)
        c = deeper[0]
        return [sigmoid(o) * tanh(c), c, *deeper[1:]]

    def recur(self, xp, state):
        h, *cs = state
        h, *cs = self._level(0, xp + h @ self.Wh, cs)
        return h, (h, *cs)


CELLS: dict[str, type[Cell]] = {"rnn": RNN, "gru": GRU, "lstm": LSTM, "cifg": CIFG, "nlstm": NestedLSTM}


def make_cell(name: str, input_size: int, hidden_size: int, depth: int = 2) -> Cell:
    """Build a cell by its CLI name; ``depth`` is used by the Nested LSTM only."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; choose one of: {', '.join(CELLS)}")
    if name == "nlstm":
        return NestedLSTM(input_size, hidden_size, depth)
    return CELLS[name](input_size, hidden_size)
