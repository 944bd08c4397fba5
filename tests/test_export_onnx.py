"""ONNX export: the exported graphs in ONNX Runtime against the MLX model, step by step."""

import json

import mlx.core as mx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlx.utils import tree_flatten, tree_map

import reference as ref
from edge_rnn.export.bundle import state_names
from edge_rnn.export.onnx import NATIVE_CELLS, export_onnx
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel
from edge_rnn.vocab import encode_chars

# A normalised English sentence (a-z and single spaces, leading space as in training): 105 symbols
TEXT = " the capital of france is paris and the river that runs through the city is called the seine by most people"
IDS = encode_chars(TEXT).astype(np.int32)

# (cell, depth, layers): every cell, Nested LSTM at depth 2 and 3, and 2-layer stacks
CASES = [("rnn", 2, 1), ("gru", 2, 1), ("lstm", 2, 1), ("cifg", 2, 1), ("nlstm", 2, 1), ("nlstm", 3, 1),
         ("gru", 2, 2), ("cifg", 2, 2), ("nlstm", 2, 2)]
# every case in the matmul form; the cells with an ONNX operator in the native form too
IMPL_CASES = [(*case, impl) for case in CASES for impl in ("matmul", "native")
              if impl == "matmul" or case[0] in NATIVE_CELLS]
IMPL_IDS = [f"{c}{f'-d{d}' if c == 'nlstm' else ''}-{n}l-{impl}" for c, d, n, impl in IMPL_CASES]
H, E, V, K = 16, 8, 40, 4


def random_model(cell: str, depth: int = 2, layers: int = 1, seed: int = 0) -> RNNModel:
    """Every parameter random, biases included, so no term can hide behind a zero."""
    mx.random.seed(seed)
    model = RNNModel(ModelConfig(cell=cell, layers=layers, units=H, depth=depth, embed_dim=E, vocab_size=V))
    rng = np.random.default_rng(seed)
    model.update(tree_map(lambda a: mx.array(rng.normal(0, 0.5, a.shape), dtype=mx.float32), model.parameters()))
    return model


def session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def mlx_stream(model: RNNModel, ids: np.ndarray):
    """Log-probs per step (T, V) and the final state (flat list), stepping MLX one char at a time."""
    state, log_probs = model.initial_state(1), []
    for c in ids:
        logits, state = model.step(mx.array([int(c)], dtype=mx.int32), state)
        log_probs.append(np.array(logits[0] - mx.logsumexp(logits[0])))
    return np.stack(log_probs), [np.array(s) for layer in state for s in layer]


def ort_stream(sess: ort.InferenceSession, config: ModelConfig, ids: np.ndarray, state=None):
    """Outputs of every step ({name: (T*B, ...)}) and the final state, streaming the step graph;
    ``ids`` is (T,) for one row or (T, B) for a batch."""
    names = state_names(config)
    state = state or [np.zeros((1, config.units), np.float32) for _ in names]
    out_names = [o.name for o in sess.get_outputs()]
    steps = []
    for c in ids:
        out = dict(zip(out_names, sess.run(None, {"char": np.atleast_1d(c).astype(np.int32), **dict(zip(names, state))})))
        state = [out[f"{n}_next"] for n in names]
        steps.append(out)
    return {k: np.concatenate([s[k] for s in steps]) for k in out_names}, state


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export each (case, impl) once per module: {key: (model, out_dir, fragment)}."""
    cache = {}

    def get(cell, depth, layers, impl):
        key = (cell, depth, layers, impl)
        if key not in cache:
            model = random_model(cell, depth, layers)
            out = tmp_path_factory.mktemp("onnx")
            cache[key] = model, out, export_onnx(model, out, top_k=K, with_log_probs=True, impl=impl)
        return cache[key]

    return get


@pytest.mark.parametrize("cell,depth,layers,impl", IMPL_CASES, ids=IMPL_IDS)
def test_step_graph_streams_like_mlx(exported, cell, depth, layers, impl):
    model, out, fragment = exported(cell, depth, layers, impl)
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")), full_check=True)
    assert fragment["implementation"]["step"] == (impl if cell in NATIVE_CELLS else "matmul")
    want_log_probs, want_state = mlx_stream(model, IDS)
    got, got_state = ort_stream(session(out / "model.onnx"), model.config, IDS)
    np.testing.assert_allclose(got["log_probs"], want_log_probs, atol=1e-5, rtol=1e-5)
    want_ids = np.argsort(-want_log_probs, axis=-1, kind="stable")[:, :K]
    np.testing.assert_array_equal(got["top_ids"], want_ids)
    assert got["top_ids"].dtype == np.int32
    np.testing.assert_allclose(got["top_probs"], np.exp(np.take_along_axis(want_log_probs, want_ids, -1)), atol=1e-5)
    assert np.all(np.diff(got["top_probs"], axis=-1) <= 0)  # sorted descending
    assert len(got_state) == len(want_state) == len(state_names(model.config))
    for g, w in zip(got_state, want_state):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_bottleneck_model_exports_factored(tmp_path):
    """A head_dim model keeps its projection apart from the head: the step graph reads a (H, D)
    and a (D, V) weight, no (H, V) product, and streams like MLX."""
    mx.random.seed(1)
    D = 5
    model = RNNModel(ModelConfig(cell="gru", layers=2, units=H, embed_dim=E, vocab_size=V, head_dim=D))
    export_onnx(model, tmp_path, top_k=K, with_log_probs=True)
    shapes = {t.name: tuple(t.dims) for t in onnx.load(str(tmp_path / "model.onnx")).graph.initializer}
    assert shapes["bottleneck.Pt"] == (H, D) and shapes["head.Wt"] == (D, V + 2)
    assert (H, V + 2) not in shapes.values()
    want_log_probs, want_state = mlx_stream(model, IDS)
    got, got_state = ort_stream(session(tmp_path / "model.onnx"), model.config, IDS)
    np.testing.assert_allclose(got["log_probs"], want_log_probs, atol=1e-5, rtol=1e-5)
    for g, w in zip(got_state, want_state):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_step_graph_matches_numpy_reference(tmp_path):
    """Independent of MLX: the plain-NumPy equations of tests/reference.py, two LSTM layers."""
    model = random_model("lstm", layers=2, seed=3)
    export_onnx(model, tmp_path, top_k=K, with_log_probs=True)
    params = {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(model.parameters())}
    want = ref.log_softmax(ref.model_logits(model.config, params, IDS[None].astype(np.int64))[0])
    got, _ = ort_stream(session(tmp_path / "model.onnx"), model.config, IDS)
    np.testing.assert_allclose(got["log_probs"], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell,depth,layers,impl", IMPL_CASES, ids=IMPL_IDS)
def test_prefill_final_state_equals_streaming(exported, cell, depth, layers, impl):
    model, out, _ = exported(cell, depth, layers, impl)
    onnx.checker.check_model(onnx.load(str(out / "prefill.onnx")), full_check=True)
    names = state_names(model.config)
    rng = np.random.default_rng(7)  # a non-zero start state, so the state inputs are exercised too
    start = [rng.normal(0, 0.5, (1, H)).astype(np.float32) for _ in names]
    streamed, state = ort_stream(session(out / "model.onnx"), model.config, IDS, start)
    prefill = session(out / "prefill.onnx")
    got = dict(zip([o.name for o in prefill.get_outputs()],
                   prefill.run(None, {"chars": IDS[None], **dict(zip(names, start))})))
    for name, want in zip(names, state):
        np.testing.assert_allclose(got[f"{name}_next"], want, atol=1e-5)
    np.testing.assert_array_equal(got["top_ids"][0], streamed["top_ids"][-1])
    np.testing.assert_allclose(got["log_probs"][0], streamed["log_probs"][-1], atol=1e-5)


@pytest.mark.parametrize("impl", ["matmul", "native"])
def test_dynamic_batch_equals_single_rows(exported, impl):
    model, out, _ = exported("lstm", 2, 1, impl)
    names = state_names(model.config)
    rows = np.stack([IDS[:40], IDS[40:80], IDS[65:105]])  # three different strings
    step, prefill = session(out / "model.onnx"), session(out / "prefill.onnx")
    batched, state = ort_stream(step, model.config, rows.T,
                                [np.zeros((3, H), np.float32) for _ in names])
    zeros3 = {n: np.zeros((3, H), np.float32) for n in names}
    pre = prefill.run(None, {"chars": rows, **zeros3})
    for b in range(3):
        single, single_state = ort_stream(step, model.config, rows[b][:, None])
        batched_row = batched["log_probs"].reshape(rows.shape[1], 3, -1)[:, b]
        np.testing.assert_allclose(batched_row, single["log_probs"], atol=1e-6)
        for s_b, s_1, s_pre in zip(state, single_state, pre[3:]):
            np.testing.assert_allclose(s_b[b], s_1[0], atol=1e-6)
            np.testing.assert_allclose(s_pre[b], s_1[0], atol=1e-5)


def test_fragment_and_metadata_describe_the_graph(exported):
    model, out, fragment = exported("nlstm", 3, 1, "matmul")
    names = state_names(model.config)
    assert names == ["l0_h", "l0_c0", "l0_c1", "l0_c2"]
    assert [i["name"] for i in fragment["inputs"]] == ["char", *names]
    assert fragment["inputs"][0] == {"name": "char", "dtype": "int32", "shape": ["batch"]}
    assert [o["name"] for o in fragment["outputs"]] == ["top_ids", "top_probs", "log_probs",
                                                         *[f"{n}_next" for n in names]]
    assert fragment["outputs"][1] == {"name": "top_probs", "dtype": "float32", "shape": ["batch", K]}
    assert fragment["prefill"]["inputs"][0]["shape"] == ["batch", "time"]
    assert fragment["opset"] >= 17
    for file in ("model.onnx", "prefill.onnx"):
        proto = onnx.load(str(out / file))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(meta["edge_rnn.state_names"]) == names
        assert (meta["edge_rnn.cell"], meta["edge_rnn.depth"], meta["edge_rnn.top_k"]) == ("nlstm", "3", str(K))
        assert proto.opset_import[0].version == fragment["opset"]
    # the Nested LSTM has no ONNX operator: never a native node
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert not ops & {"LSTM", "GRU", "RNN"} and "Gather" in ops and "TopK" in ops


def test_without_log_probs_has_no_log_probs_output(tmp_path):
    export_onnx(random_model("gru"), tmp_path, top_k=2)
    sess = session(tmp_path / "model.onnx")
    assert [o.name for o in sess.get_outputs()] == ["top_ids", "top_probs", "l0_h_next"]
    assert sess.get_outputs()[0].shape == ["batch", 2]


def test_bad_arguments_raise_one_line_errors(tmp_path):
    model = random_model("gru")
    with pytest.raises(EdgeRNNError, match="unknown ONNX precision"):
        export_onnx(model, tmp_path, precision="int3")
    with pytest.raises(EdgeRNNError, match="top_k"):
        export_onnx(model, tmp_path, top_k=V + 3)
    assert not any(tmp_path.iterdir())
