"""Cells against the plain-NumPy equations, step vs sequence, and gradients vs finite differences."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

import reference as ref
from edge_rnn.cells import make_cell

# (cell name, depth) covering every cell and Nested LSTM at depth 2 and 3
CASES = [("rnn", 2), ("gru", 2), ("lstm", 2), ("cifg", 2), ("nlstm", 2), ("nlstm", 3)]
IDS = [f"{c}-d{d}" if c == "nlstm" else c for c, d in CASES]


def random_cell(name, depth, I=5, H=7, seed=0, dtype=mx.float32):
    """A cell with every parameter random (biases too), so no term can hide behind a zero."""
    mx.random.seed(seed)
    cell = make_cell(name, I, H, depth)
    rng = np.random.default_rng(seed)
    cell.update(tree_map(lambda a: mx.array(rng.normal(0, 0.5, a.shape), dtype=dtype), cell.parameters()))
    return cell


def numpy_params(cell):
    return {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(cell.parameters())}


def random_inputs(B=3, T=9, I=5, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (B, T, I))


def random_state(cell, B=3, seed=2):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(0, 0.5, (B, cell.hidden_size)) for _ in range(cell.n_states))


@pytest.mark.parametrize("name,depth", CASES, ids=IDS)
def test_forward_matches_numpy_equations(name, depth):
    cell = random_cell(name, depth)
    xs, s0 = random_inputs(), random_state(cell)
    hs, state = cell(mx.array(xs, dtype=mx.float32), tuple(mx.array(s, dtype=mx.float32) for s in s0))
    ref_hs, ref_state = ref.run_sequence(name, numpy_params(cell), xs, s0)
    np.testing.assert_allclose(np.array(hs), ref_hs, atol=1e-5, rtol=1e-5)
    assert len(state) == len(ref_state) == cell.n_states
    for got, want in zip(state, ref_state):
        np.testing.assert_allclose(np.array(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,depth", CASES, ids=IDS)
def test_step_over_sequence_equals_sequence_call(name, depth):
    cell = random_cell(name, depth)
    xs = mx.array(random_inputs(), dtype=mx.float32)
    hs, final = cell(xs)
    state = cell.initial_state(xs.shape[0])
    for t in range(xs.shape[1]):
        h, state = cell.step(xs[:, t], state)
        np.testing.assert_allclose(np.array(h), np.array(hs[:, t]), atol=1e-6)
    for a, b in zip(state, final):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6)


@pytest.mark.parametrize("name,depth", CASES, ids=IDS)
def test_gradients_match_finite_differences(name, depth):
    """MLX autodiff (float64) against central differences of the NumPy reference."""
    cell = random_cell(name, depth, I=3, H=4, dtype=mx.float64)
    xs, s0 = random_inputs(B=2, T=5, I=3), random_state(cell, B=2)
    weights = np.random.default_rng(3).normal(size=(2, 5, 4))  # loss = <hs, weights>

    def mlx_loss(params):
        cell.update(params)
        hs, _ = cell(mx.array(xs), tuple(mx.array(s) for s in s0))
        return (hs * mx.array(weights)).sum()

    grads = dict(tree_flatten(mx.grad(mlx_loss)(cell.parameters())))
    params = numpy_params(cell)

    def ref_loss(p):
        return float((ref.run_sequence(name, p, xs, s0)[0] * weights).sum())

    eps = 1e-6
    for key, value in params.items():
        fd = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus, minus = dict(params), dict(params)
            plus[key] = value.copy(); plus[key][idx] += eps
            minus[key] = value.copy(); minus[key][idx] -= eps
            fd[idx] = (ref_loss(plus) - ref_loss(minus)) / (2 * eps)
        np.testing.assert_allclose(np.array(grads[key]), fd, atol=1e-6, rtol=1e-5, err_msg=key)


def test_only_the_lstm_starts_with_a_forget_bias():
    H = 6
    lstm = make_cell("lstm", 3, H)
    np.testing.assert_array_equal(np.array(lstm.b[H : 2 * H]), 1.0)  # i, f, g, o
    np.testing.assert_array_equal(np.array(lstm.b[:H]), 0.0)
    cifg = make_cell("cifg", 3, H)  # f = 1 - sigmoid(i): no forget bias (tests/test_learning.py)
    np.testing.assert_array_equal(np.array(cifg.b), 0.0)
    nlstm = make_cell("nlstm", 3, H, depth=3)  # at every depth (tests/test_learning.py)
    for b in [nlstm.b] + [level.b for level in nlstm.inner]:
        np.testing.assert_array_equal(np.array(b), 0.0)


def test_initialisation_is_glorot_and_orthogonal():
    cell = make_cell("lstm", 50, 40)
    Wx, Wh = np.array(cell.Wx), np.array(cell.Wh)
    limit = np.sqrt(6 / (50 + 160))
    assert np.abs(Wx).max() <= limit and np.abs(Wx).max() > 0.9 * limit
    for k in range(4):
        block = Wh[:, 40 * k : 40 * (k + 1)]
        np.testing.assert_allclose(block.T @ block, np.eye(40), atol=1e-5)


def test_unknown_cell_and_bad_depth():
    with pytest.raises(ValueError, match="unknown cell 'transformer'"):
        make_cell("transformer", 3, 4)
    with pytest.raises(ValueError, match="depth must be >= 2"):
        make_cell("nlstm", 3, 4, depth=1)
