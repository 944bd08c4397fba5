"""Hand-written BPTT (edge_rnn.backward) and the fused cross-entropy (edge_rnn.loss) against MLX
autodiff, and the optional vectorised kernels (edge_rnn.ext) against NumPy."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from edge_rnn import ext, loss
from edge_rnn.cells import make_cell
from edge_rnn.model import Dropout, ModelConfig, RNNModel

CASES = [("rnn", 2), ("gru", 2), ("lstm", 2), ("cifg", 2), ("nlstm", 2), ("nlstm", 3)]
IDS = [f"{c}-d{d}" if c == "nlstm" else c for c, d in CASES]


def require_ext():
    """The kernels are optional for users, not for the tests: the README's test command builds them."""
    assert ext.available, f"edge_rnn.ext is not usable ({ext.error}); build it: python -m edge_rnn.ext"


@pytest.fixture
def ext_built():
    require_ext()



def random_cell(name, depth, dtype, I=5, H=7, seed=0):
    mx.random.seed(seed)
    cell = make_cell(name, I, H, depth)
    rng = np.random.default_rng(seed)
    cell.update(tree_map(lambda a: mx.array(rng.normal(0, 0.5, a.shape), dtype=dtype), cell.parameters()))
    return cell


def run_both(cell, dtype, B=3, T=9, seed=1):
    """Loss touching every output (all hs and the final state); value, grads and outputs, per path."""
    rng = np.random.default_rng(seed)
    x = mx.array(rng.normal(size=(B, T, cell.input_size)), dtype=dtype)
    s0 = tuple(mx.array(rng.normal(0, 0.5, (B, cell.hidden_size)), dtype=dtype) for _ in range(cell.n_states))
    w_hs = mx.array(rng.normal(size=(B, T, cell.hidden_size)), dtype=dtype)
    w_state = [mx.array(rng.normal(size=(B, cell.hidden_size)), dtype=dtype) for _ in s0]

    def f(params, x, s0):
        cell.update(params)
        hs, state = cell(x, s0)
        return (hs * w_hs).sum() + sum((s * w).sum() for s, w in zip(state, w_state)), (hs, state)

    results = {}
    params = cell.parameters()
    for manual in (True, False):
        cell.manual_backward = manual
        (value, outputs), grads = mx.value_and_grad(f, argnums=(0, 1, 2))(params, x, s0)
        results[manual] = value, outputs, dict(tree_flatten(grads))
    cell.update(params)
    return results


@pytest.mark.parametrize("dtype", [mx.float64, mx.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,depth", CASES, ids=IDS)
def test_manual_gradients_equal_autodiff(name, depth, dtype):
    """Gradients w.r.t. inputs, the (non-zero) initial state and every parameter."""
    cell = random_cell(name, depth, dtype)
    res = run_both(cell, dtype)
    (v_m, _, g_m), (v_a, _, g_a) = res[True], res[False]
    assert set(g_m) == set(g_a)
    assert {k for k in g_m if k.startswith("0.")} == {k for k, _ in tree_flatten(cell.parameters(), prefix=".0")}
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == mx.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(v_m), np.array(v_a), **tol)
    for key in g_a:
        want = np.array(g_a[key])
        got = np.array(g_m[key])
        scale = max(np.abs(want).max(), 1e-12)  # relative to the gradient's size
        np.testing.assert_allclose(got / scale, want / scale, **tol, err_msg=key)


@pytest.mark.parametrize("name,depth", CASES, ids=IDS)
def test_manual_forward_is_identical(name, depth):
    cell = random_cell(name, depth, mx.float32)
    res = run_both(cell, mx.float32)
    (_, (hs_m, st_m), _), (_, (hs_a, st_a), _) = res[True], res[False]
    np.testing.assert_array_equal(np.array(hs_m), np.array(hs_a))
    assert len(st_m) == len(st_a) == cell.n_states
    for a, b in zip(st_m, st_a):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_flag_is_per_instance_and_class_default():
    a, b = make_cell("gru", 3, 4), make_cell("gru", 3, 4)
    assert a.manual_backward and b.manual_backward
    a.manual_backward = False
    assert not a.manual_backward and b.manual_backward
    assert "manual_backward" not in dict(tree_flatten(a.parameters()))


def tiny_model(cell, depth=2):
    mx.random.seed(0)
    cfg = ModelConfig(cell=cell, layers=1 if cell == "nlstm" else 2, units=8, depth=depth, embed_dim=5,
                      vocab_size=30)
    return RNNModel(cfg)


@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["", "dropout"])
@pytest.mark.parametrize("name,depth", CASES, ids=IDS)
def test_model_loss_gradients_manual_equal_autodiff(name, depth, dropout):
    """Whole model: embedding -> (dropout) -> cells -> head -> masked cross-entropy (fused on the
    manual path); with dropout both paths see the same masks."""
    model = tiny_model(name, depth)
    masks = Dropout(dropout, mx.random.key(2), batch=4) if dropout else None
    rng = np.random.default_rng(4)
    ids = mx.array(rng.integers(0, 28, (4, 11)))
    targets = mx.array(rng.integers(0, model.config.n_outputs, (4, 11)))  # includes <pad>/<unk>
    results = {}
    for manual in (True, False):
        for cell in model.layers:
            cell.manual_backward = manual
        (value, (n, hits)), grads = nn.value_and_grad(model, model.loss)(ids, targets, masks)
        results[manual] = value, n, hits, dict(tree_flatten(grads))
    (v_m, n_m, h_m, g_m), (v_a, n_a, h_a, g_a) = results[True], results[False]
    np.testing.assert_allclose(v_m.item(), v_a.item(), rtol=1e-6)
    assert n_m.item() == n_a.item() and h_m.item() == h_a.item()
    assert set(g_m) == set(g_a)
    for key in g_a:
        want, got = np.array(g_a[key]), np.array(g_m[key])
        scale = max(np.abs(want).max(), 1e-12)
        np.testing.assert_allclose(got / scale, want / scale, rtol=1e-5, atol=1e-6, err_msg=key)


def test_compiled_training_step_matches_eager():
    """The manual backward under mx.compile (as train.py runs it) gives the eager result."""
    rng = np.random.default_rng(5)
    ids = mx.array(rng.integers(1, 28, (3, 7)))
    targets = mx.array(rng.integers(2, 32, (3, 7)))
    finals = []
    for compiled in (False, True):
        model = tiny_model("lstm")
        opt = optim.Adam(learning_rate=1e-2)
        loss_and_grad = nn.value_and_grad(model, model.loss)
        state = [model.state, opt.state]

        def step(ids, targets):
            (value, _), grads = loss_and_grad(ids, targets)
            opt.update(model, grads)
            return value

        if compiled:
            step = mx.compile(step, inputs=state, outputs=state)
        values = []
        for _ in range(3):
            values.append(step(ids, targets))
            mx.eval(state)
        finals.append(([v.item() for v in values], dict(tree_flatten(model.parameters()))))
    (v_e, p_e), (v_c, p_c) = finals
    np.testing.assert_allclose(v_c, v_e, rtol=1e-5)
    for key in p_e:
        np.testing.assert_allclose(np.array(p_c[key]), np.array(p_e[key]), rtol=1e-4, atol=1e-6, err_msg=key)


# ---- cross-entropy -------------------------------------------------------------------------------

@pytest.fixture(params=["ext", "mlx"])
def ce_path(request, monkeypatch):
    if request.param == "ext":
        require_ext()
    else:
        monkeypatch.setattr(ext, "usable", lambda x: False)
    return request.param


def test_cross_entropy_equals_mlx(ce_path):
    rng = np.random.default_rng(6)
    logits = mx.array(rng.normal(0, 4, (3, 5, 1003)), dtype=mx.float32)
    targets = mx.array(rng.integers(0, 1003, (3, 5)))
    w = mx.array(rng.normal(size=(3, 5)), dtype=mx.float32)
    w = w * (targets % 4 != 0)  # some rows carry no loss, as <pad> doesn't

    def f(fn, logits):
        return (fn(logits, targets) * w).sum()

    ours = lambda z, t: loss.cross_entropy(z, t)[0]  # noqa: E731
    ref = lambda z, t: nn.losses.cross_entropy(z, t, reduction="none")  # noqa: E731
    ce, top1 = loss.cross_entropy(logits, targets)
    np.testing.assert_allclose(np.array(ce), np.array(ref(logits, targets)), rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(np.array(top1), np.array(logits.argmax(axis=-1)))
    assert ce.shape == top1.shape == targets.shape
    v_o, g_o = mx.value_and_grad(lambda z: f(ours, z))(logits)
    v_r, g_r = mx.value_and_grad(lambda z: f(ref, z))(logits)
    np.testing.assert_allclose(v_o.item(), v_r.item(), rtol=1e-6)
    np.testing.assert_allclose(np.array(g_o), np.array(g_r), rtol=1e-5, atol=1e-7)


def test_cross_entropy_float64_matches_numpy():
    rng = np.random.default_rng(7)
    z = rng.normal(0, 3, (6, 50))
    t = rng.integers(0, 50, 6)
    ce = np.array(loss.cross_entropy(mx.array(z, dtype=mx.float64), mx.array(t))[0])
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
    # MLX's CPU exp computes in float32 even for float64 arrays, hence not 1e-12
    np.testing.assert_allclose(ce, lse - z[np.arange(6), t], rtol=1e-7)


# ---- the optional kernels ------------------------------------------------------------------------

def ulp_error(got, want):
    want32 = np.abs(want).astype(np.float32)
    return np.abs(got.astype(np.float64) - want) / np.spacing(np.maximum(want32, np.float32(1e-30)))


@pytest.mark.usefixtures("ext_built")
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_ext_activations_within_few_ulp(name):
    x = np.concatenate([np.linspace(-90, 90, 40_001), np.random.default_rng(8).normal(0, 2, 20_003),
                        [0.0, -0.0, 1e-30, -1e-7, 0.59999, 0.6, 0.60001, 20.0, -20.0]]).astype(np.float32)
    got = np.array(getattr(ext._ext, name)(mx.array(x)))
    x64 = x.astype(np.float64)
    want = 1 / (1 + np.exp(-x64)) if name == "sigmoid" else np.tanh(x64)
    normal = np.abs(want) > 1e-30
    assert ulp_error(got[normal], want[normal]).max() <= 4
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=1e-37)
    special = np.array([np.inf, -np.inf, np.nan, 200.0, -200.0], dtype=np.float32)
    got = np.array(getattr(ext._ext, name)(mx.array(special)))
    want = [1, 0, np.nan, 1, 0] if name == "sigmoid" else [1, -1, np.nan, 1, -1]
    np.testing.assert_array_equal(got, np.array(want, dtype=np.float32))


@pytest.mark.usefixtures("ext_built")
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_ext_activation_gradients_and_layouts(name):
    fast, ref = getattr(ext._ext, name), getattr(mx, name)
    x = mx.random.normal((6, 5))
    np.testing.assert_allclose(np.array(mx.grad(lambda a: (fast(a) * a).sum())(x)),
                               np.array(mx.grad(lambda a: (ref(a) * a).sum())(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(fast(x.T)), np.array(ref(x.T)), rtol=1e-6, atol=1e-7)  # strided input
    np.testing.assert_allclose(np.array(mx.vmap(fast)(x)), np.array(ref(x)), rtol=1e-6, atol=1e-7)
    _, jvp = mx.jvp(fast, [x], [mx.ones_like(x)])
    np.testing.assert_allclose(np.array(jvp[0]), np.array(mx.grad(lambda a: ref(a).sum())(x)), rtol=1e-5, atol=1e-7)


@pytest.mark.usefixtures("ext_built")
def test_ext_softmax_kernels_match_numpy():
    rng = np.random.default_rng(9)
    z = rng.normal(0, 5, (33, 1001)).astype(np.float32)  # 1001: not a multiple of 8
    z[3, :] = -np.inf
    z[3, 7] = 2.0
    t = rng.integers(0, 1001, 33).astype(np.int32)
    t[3] = 7
    z[4, [10, 20]] = 100.0  # a tie: the first index wins, as in MLX's argmax
    scale = rng.normal(size=33).astype(np.float32)
    scale[5] = 0.0
    z64 = z.astype(np.float64)
    m = z64.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z64 - m).sum(-1))
    every = mx.array(np.tile([0, 1001], (33, 1)).astype(np.int32))
    got_lse, top1 = (np.array(a) for a in ext._ext.logsumexp_rows(mx.array(z), every))
    np.testing.assert_allclose(got_lse, lse, rtol=1e-6)
    np.testing.assert_array_equal(top1, z.argmax(-1))
    grad = np.exp(z64 - lse[:, None])
    grad[np.arange(33), t] -= 1
    grad *= scale[:, None]
    got = np.array(ext._ext.softmax_xent_grad(mx.array(z), mx.array(got_lse), mx.array(t), mx.array(scale), every))
    np.testing.assert_allclose(got, grad, rtol=1e-5, atol=1e-6)
    assert not got[5].any()


def _ranged_case(seed: int = 4):
    """Logits, targets inside their rows' ranges, ranges of every width (1 column to all), and
    the same logits with the columns outside each range set to -inf (the reference's input)."""
    rng = np.random.default_rng(seed)
    N, V = 40, 1001
    z = rng.normal(0, 3, (N, V)).astype(np.float32)
    lo = rng.integers(0, V, N)
    hi = np.minimum(lo + rng.integers(1, 300, N), V)
    lo[:3], hi[:3] = [0, 5, 1000], [V, 6, 1001]  # the whole row, one column, the last column
    t = rng.integers(lo, hi).astype(np.int32)
    cols = np.arange(V)[None, :]
    masked = np.where((cols >= lo[:, None]) & (cols < hi[:, None]), z, -np.inf).astype(np.float32)
    return z, t, np.stack([lo, hi], 1).astype(np.int32), masked


@pytest.mark.usefixtures("ext_built")
def test_ext_softmax_kernels_ranges_match_numpy():
    """With ranges the kernels equal the full-row ones on logits that are -inf outside each range."""
    z, t, ranges, masked = _ranged_case()
    scale = np.linspace(-1, 1, len(t)).astype(np.float32)
    lse, top1 = ext._ext.logsumexp_rows(mx.array(z), mx.array(ranges))
    z64 = masked.astype(np.float64)
    m = z64.max(-1, keepdims=True)
    want_lse = m[:, 0] + np.log(np.exp(z64 - m).sum(-1))
    np.testing.assert_allclose(np.array(lse), want_lse, rtol=1e-6)
    np.testing.assert_array_equal(np.array(top1), masked.argmax(-1))
    grad = np.exp(z64 - want_lse[:, None])
    grad[np.arange(len(t)), t] -= 1
    grad *= scale[:, None]
    got = np.array(ext._ext.softmax_xent_grad(mx.array(z), lse, mx.array(t), mx.array(scale), mx.array(ranges)))
    np.testing.assert_allclose(got, grad, rtol=1e-5, atol=1e-6)
    assert (got[masked == -np.inf] == 0).all()


@pytest.mark.parametrize("kernels", ["ext", "mlx"])
def test_cross_entropy_ranges_equal_masked_logits(kernels, monkeypatch, request):
    """``cross_entropy(z, t, ranges)``: values, top-1 and gradient of MLX's own cross-entropy of
    the masked logits, through the extension and through the MLX fallback alike."""
    if kernels == "ext":
        request.getfixturevalue("ext_built")
    else:
        monkeypatch.setattr(ext, "usable", lambda x: False)
    z, t, ranges, masked = _ranged_case(5)
    w = mx.array(np.linspace(0, 1, len(t)).astype(np.float32))

    def ours(a):
        ce, _ = loss.cross_entropy(a, mx.array(t), mx.array(ranges))
        return (ce * w).sum()

    def ref(a):
        a = mx.where(mx.array(masked) == -mx.inf, -mx.inf, a)
        return (nn.losses.cross_entropy(a, mx.array(t), reduction="none") * w).sum()

    x = mx.array(z)
    np.testing.assert_allclose(float(ours(x)), float(ref(x)), rtol=1e-5)
    np.testing.assert_array_equal(np.array(loss.cross_entropy(x, mx.array(t), mx.array(ranges))[1]), masked.argmax(-1))
    got, want = np.array(mx.grad(ours)(x)), np.array(mx.grad(ref)(x))
    np.testing.assert_allclose(got, np.nan_to_num(want), rtol=1e-5, atol=1e-6)
