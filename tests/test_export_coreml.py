"""Core ML export, checked by running the *saved* .mlpackage with the NumPy MIL evaluator.

Core ML cannot run on Linux, so every numeric check here goes MLX ``model.step`` -> export ->
``MILProgram.load(saved package)`` -> evaluator, character by character over real-looking text.

Tolerances (fp16 machine epsilon ``EPS16 = 2**-10``; unit roundoff ``EPS16 / 2``):

- fp32 programs: probabilities and states within ``1e-5`` (float32 arithmetic in a different order;
  measured <= 4e-7), top-k ids identical.
- fp16 state storage (``mlstate`` form, fp32 compute) and fp16 compute: each op (or each stored
  state) is rounded to fp16, a relative error <= EPS16/2 per rounding. The recurrences here are
  contractive, so errors do not grow with the number of steps; measured worst cases over all cells
  and 112 steps: |ds| <= 1.8e-3 with |s| <= 1.03 (1.8 EPS16 relative), |dp| <= 3.8e-4 (0.4 EPS16).
  We allow ``S_TOL16 = 8 EPS16`` relative to ``max(1, max|s|)`` and ``P_TOL16 = 2 EPS16`` absolute:
  4-5x the measured worst case, far below what a wrong gate, weight or state order gives (O(0.1)).
- top-1 under fp16: if every probability moves by at most ``P_TOL16``, the argmax cannot change where
  MLX's top-1/top-2 gap exceeds ``2 P_TOL16``; there the ids must agree, and overall on >= 95 % of
  the positions (measured: all).
"""

from __future__ import annotations

import functools
import json
import struct
import warnings
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from edge_rnn.export import coreml as coreml_export
from edge_rnn.export.bundle import state_names
from edge_rnn.export.coreml import MODEL_FILE, export_coreml
from edge_rnn.export.mil_eval import MILFormatError, MILProgram, UnsupportedOpError
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel
from edge_rnn.vocab import encode_chars

TEXT = ("the history of the english language really started with the arrival of three germanic "
        "tribes who invaded britain")
IDS = encode_chars(TEXT)
H, TOP_K = 32, 3

# (cell, layers, depth): every cell, Nested LSTM at depth 2 and 3, and a 2-layer stack
CASES = [("rnn", 1, 2), ("gru", 1, 2), ("lstm", 1, 2), ("cifg", 1, 2), ("nlstm", 1, 2),
         ("nlstm", 1, 3), ("lstm", 2, 2)]
CASE_IDS = ["rnn", "gru", "lstm", "cifg", "nlstm-d2", "nlstm-d3", "lstm-x2"]

FP32_TOL = 1e-5
EPS16 = float(np.finfo(np.float16).eps)  # 2**-10
P_TOL16 = 2 * EPS16
S_TOL16 = 8 * EPS16


# ---- models and streams ------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def make_model(cell: str, layers: int, depth: int, vocab_size: int = 50) -> RNNModel:
    """A tiny model with random biases (so no term hides behind a zero) and a head scaled x4 so the
    output distribution is peaked like a trained model's, not near-uniform."""
    mx.random.seed(0)
    model = RNNModel(ModelConfig(cell=cell, layers=layers, units=H, embed_dim=8,
                                 vocab_size=vocab_size, depth=depth))
    rng = np.random.default_rng(1)
    biases = [(k, mx.array(rng.normal(0, 0.5, v.shape).astype(np.float32)))
              for k, v in tree_flatten(model.parameters()) if k.rsplit(".", 1)[-1] in ("b", "bhn", "bias")]
    model.update(tree_unflatten(biases))
    model.head.weight = model.head.weight * 4
    mx.eval(model.parameters())
    return model


@functools.lru_cache(maxsize=None)
def mlx_stream(case: tuple) -> tuple[np.ndarray, np.ndarray]:
    """MLX ``model.step`` over TEXT: probabilities (T, V) and every state (T, S, H), contract order."""
    model = make_model(*case)
    state, probs, states = model.initial_state(1), [], []
    for c in IDS:
        logits, state = model.step(mx.array([int(c)]), state)
        probs.append(np.array(mx.softmax(logits, axis=-1))[0])
        states.append([np.array(s)[0] for layer in state for s in layer])
    return np.array(probs, np.float64), np.array(states, np.float64)


def coreml_stream(prog: MILProgram, names: list[str], form: str) -> dict[str, np.ndarray]:
    """The evaluator over TEXT, carrying the state as the app would (outputs -> inputs, or MLState)."""
    io_state = {n: np.zeros((1, H), np.float32) for n in names}
    ml_state = prog.make_state() if form == "mlstate" else None
    rows: dict[str, list] = {"probs": [], "top_ids": [], "top_probs": [], "states": []}
    for c in IDS:
        inputs = {"char": np.array([c], np.int32), **(io_state if form == "io" else {})}
        out = prog.predict(inputs, ml_state)
        if form == "io":
            io_state = {n: out[f"{n}_next"] for n in names}
        now = io_state if form == "io" else ml_state
        rows["probs"].append(np.exp(out["log_probs"][0].astype(np.float64)))
        rows["top_ids"].append(out["top_ids"][0])
        rows["top_probs"].append(out["top_probs"][0])
        rows["states"].append([now[n][0].astype(np.float64) for n in names])
    return {k: np.array(v) for k, v in rows.items()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(case, form, precision)`` -> (MILProgram of the saved package, manifest, path)."""
    cache: dict = {}

    def get(case: tuple, form: str, precision: str):
        key = (case, form, precision)
        if key not in cache:
            out = tmp_path_factory.mktemp("coreml")
            manifest = export_coreml(make_model(*case), out, top_k=TOP_K, state=form,
                                     precision=precision, with_log_probs=True)
            cache[key] = MILProgram.load(out / MODEL_FILE), manifest, out / MODEL_FILE
        return cache[key]

    return get


@pytest.fixture(autouse=True)
def no_coremltools_predict(monkeypatch):
    """Core ML's own predict/makeState cannot run here: any call is a test bug, not a skip."""
    import coremltools as ct

    def refuse(*args, **kwargs):
        raise AssertionError("coremltools' MLModel.predict/make_state must not be used on Linux")

    monkeypatch.setattr(ct.models.MLModel, "predict", refuse)
    monkeypatch.setattr(ct.models.MLModel, "make_state", refuse)


def load_spec(path: Path):
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def main_ops(spec) -> list:
    func = spec.mlProgram.functions["main"]
    return list(func.block_specializations[func.opset].operations)


def dtype_name(value_type) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(value_type.tensorType.dataType)


def probs_at_top_ids(got: dict, probs: np.ndarray) -> np.ndarray:
    """The reference probabilities of the returned ids (and the returned ones must be sorted)."""
    assert np.all(np.diff(got["top_probs"], axis=1) <= 0)
    return np.take_along_axis(probs, got["top_ids"].astype(np.int64), axis=1)


# ---- numerics: evaluator on the saved package vs MLX ---------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fp32_io_matches_mlx_step(case, exported):
    prog, _, _ = exported(case, "io", "fp32")
    probs, states = mlx_stream(case)
    got = coreml_stream(prog, state_names(make_model(*case).config), "io")
    np.testing.assert_allclose(got["probs"], probs, atol=FP32_TOL, rtol=0)
    np.testing.assert_array_equal(got["top_ids"], np.argsort(-probs, axis=1, kind="stable")[:, :TOP_K])
    np.testing.assert_allclose(got["top_probs"], probs_at_top_ids(got, probs), atol=FP32_TOL)
    np.testing.assert_allclose(got["states"], states, atol=FP32_TOL, rtol=0)


def test_bottleneck_head_exports_factored(tmp_path):
    """A head_dim model: the saved package keeps the projection apart from the head (a (D, H)
    and a (V, D) linear, fp32) and streams like MLX in the evaluator."""
    mx.random.seed(2)
    model = RNNModel(ModelConfig(cell="gru", layers=1, units=H, embed_dim=8, vocab_size=50, head_dim=4))
    export_coreml(model, tmp_path, top_k=TOP_K, state="io", precision="fp32", with_log_probs=True)
    prog = MILProgram.load(tmp_path / MODEL_FILE)
    shapes = {op.name: op.outputs[0][1].shape for op in prog.ops if op.type in ("linear", "const")}
    assert shapes["head_bottleneck"] == (1, 4) and shapes["head_logits"] == (1, 52)
    assert (4, H) in shapes.values() and (52, 4) in shapes.values() and (52, H) not in shapes.values()
    state, probs = model.initial_state(1), []
    for c in IDS:
        logits, state = model.step(mx.array([int(c)]), state)
        probs.append(np.array(mx.softmax(logits, axis=-1))[0])
    got = coreml_stream(MILProgram.load(tmp_path / MODEL_FILE), state_names(model.config), "io")
    np.testing.assert_allclose(got["probs"], np.array(probs, np.float64), atol=FP32_TOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fp32_mlstate_matches_mlx_within_fp16_state_rounding(case, exported):
    """fp32 compute, fp16 state buffers: the only deviation is rounding the stored state."""
    prog, _, _ = exported(case, "mlstate", "fp32")
    probs, states = mlx_stream(case)
    got = coreml_stream(prog, state_names(make_model(*case).config), "mlstate")
    assert all(s.dtype == np.float16 for s in prog.make_state().values())
    np.testing.assert_allclose(got["states"], states, atol=S_TOL16 * max(1.0, np.abs(states).max()), rtol=0)
    np.testing.assert_allclose(got["probs"], probs, atol=P_TOL16, rtol=0)
    check_top1_under_fp16(got, probs)
    assert np.abs(got["states"] - states).max() > 0  # the states really went through fp16


def check_top1_under_fp16(got: dict, probs: np.ndarray) -> None:
    ranked = np.sort(probs, axis=1)
    decided = ranked[:, -1] - ranked[:, -2] > 2 * P_TOL16
    agree = got["top_ids"][:, 0] == probs.argmax(axis=1)
    assert agree[decided].all(), f"top-1 differs at positions {np.flatnonzero(decided & ~agree)}"
    assert agree.mean() >= 0.95
    np.testing.assert_allclose(got["top_probs"], probs_at_top_ids(got, probs), atol=P_TOL16)


@pytest.mark.parametrize("form", ["io", "mlstate"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fp16_matches_mlx_within_tolerance(case, form, exported):
    prog, _, _ = exported(case, form, "fp16")
    probs, states = mlx_stream(case)
    got = coreml_stream(prog, state_names(make_model(*case).config), form)
    np.testing.assert_allclose(got["states"], states, atol=S_TOL16 * max(1.0, np.abs(states).max()), rtol=0)
    np.testing.assert_allclose(got["probs"], probs, atol=P_TOL16, rtol=0)
    check_top1_under_fp16(got, probs)


@pytest.mark.parametrize("form", ["io", "mlstate"])
def test_fp16_program_keeps_head_in_fp32_and_cells_in_fp16(form, exported):
    _, _, path = exported(("lstm", 2, 2), form, "fp16")
    ops = main_ops(load_spec(path))
    out_dtype = {o.name: dtype_name(o.type) for op in ops for o in op.outputs}
    by_type = {}
    for op in ops:
        by_type.setdefault(op.type, set()).update(dtype_name(o.type) for o in op.outputs)
    assert by_type["sigmoid"] == by_type["tanh"] == {"FLOAT16"}
    assert by_type["softmax"] == by_type["reduce_log_sum_exp"] == {"FLOAT32"}
    assert out_dtype["top_probs"] == "FLOAT32" and out_dtype["top_ids"] == "INT32"
    head = [op for op in ops if op.type == "linear" and op.outputs[0].name == "head_logits"]
    assert len(head) == 1 and dtype_name(head[0].outputs[0].type) == "FLOAT32"


# ---- the top-k index guard for > 65,535 outputs --------------------------------------------------


@functools.lru_cache(maxsize=None)
def big_head_model() -> RNNModel:
    """70,000 outputs, the winner at id 69,999 (>= 2**16, so 16-bit indices would wrap)."""
    model = make_model("gru", 1, 2, vocab_size=69_998)
    bias = np.array(model.head.bias)
    bias[69_999] = 12.0
    model.head.bias = mx.array(bias)
    return model


@pytest.mark.parametrize("form", ["io", "mlstate"])
def test_topk_indices_stay_int32_for_70000_outputs_in_fp16(form, tmp_path):
    export_coreml(big_head_model(), tmp_path, state=form, precision="fp16")
    ops = main_ops(load_spec(tmp_path / MODEL_FILE))
    topk = [op for op in ops if op.type == "topk"]
    assert len(topk) == 1 and [dtype_name(o.type) for o in topk[0].outputs] == ["FLOAT32", "INT32"]
    assert not any(dtype_name(o.type) in ("UINT16", "INT16") for op in ops for o in op.outputs)
    prog = MILProgram.load(tmp_path / MODEL_FILE)
    inputs = {"char": np.array([5], np.int32)}
    if form == "io":
        inputs["l0_h"] = np.zeros((1, H), np.float32)
    out = prog.predict(inputs, prog.make_state() if form == "mlstate" else None)
    assert out["top_ids"][0, 0] == 69_999


def test_default_fp16_pipeline_would_wrap_topk_ids(tmp_path):
    """Why the guard exists (and that the evaluator would catch its absence): coremltools' default
    fp16 pipeline narrows top-k ids to uint16, and id 69,999 comes back as 69,999 - 65,536."""
    import coremltools as ct

    prog = coreml_export._build_program(big_head_model(), TOP_K, "mlstate", with_log_probs=False)
    keep_head = ct.transform.FP16ComputePrecision(op_selector=lambda op: not op.name.startswith("head_"))
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                         compute_precision=keep_head, skip_model_load=True)
    mlmodel.save(str(tmp_path / MODEL_FILE))
    topk = [op for op in main_ops(load_spec(tmp_path / MODEL_FILE)) if op.type == "topk"][0]
    assert dtype_name(topk.outputs[1].type) == "UINT16"
    evaluator = MILProgram.load(tmp_path / MODEL_FILE)
    out = evaluator.predict({"char": np.array([5], np.int32)}, evaluator.make_state())
    assert out["top_ids"][0, 0] == 69_999 - 65_536


# ---- the evaluator is not passing trivially --------------------------------------------------------


def head_weight_blob(path: Path) -> tuple[int, int]:
    """Offsets in weight.bin of the head weight's blob record and first data byte, from the spec."""
    ops = main_ops(load_spec(path))
    head = next(op for op in ops if op.type == "linear" and op.outputs[0].name == "head_logits")
    weight_name = head.inputs["weight"].arguments[0].name
    const = next(op for op in ops if op.type == "const" and op.outputs[0].name == weight_name)
    meta = const.attributes["val"].blobFileValue.offset
    data = (path / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()
    sentinel, _, _, start = struct.unpack_from("<IIQQ", data, meta)
    assert sentinel == 0xDEADBEEF
    return meta, start


def copy_package(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupting_one_weight_byte_changes_the_outputs(exported, tmp_path):
    case = ("gru", 1, 2)
    _, _, path = exported(case, "io", "fp32")
    bad = copy_package(path, tmp_path / MODEL_FILE)
    weights = bad / "Data/com.apple.CoreML/weights/weight.bin"
    data = bytearray(weights.read_bytes())
    data[head_weight_blob(bad)[1] + 3] ^= 0x40  # exponent bits of the head's first weight
    weights.write_bytes(bytes(data))
    names = state_names(make_model(*case).config)
    good = coreml_stream(MILProgram.load(path), names, "io")
    corrupted = coreml_stream(MILProgram.load(bad), names, "io")
    assert np.abs(corrupted["probs"] - good["probs"]).max() > 1e-3
    np.testing.assert_array_equal(corrupted["states"], good["states"])  # the head feeds no state


def test_bad_blob_header_raises(exported, tmp_path):
    _, _, path = exported(("gru", 1, 2), "io", "fp32")
    bad = copy_package(path, tmp_path / MODEL_FILE)
    weights = bad / "Data/com.apple.CoreML/weights/weight.bin"
    data = bytearray(weights.read_bytes())
    data[head_weight_blob(bad)[0]] ^= 0xFF  # the blob's sentinel
    weights.write_bytes(bytes(data))
    prog = MILProgram.load(bad)
    with pytest.raises(MILFormatError, match="sentinel"):
        prog.predict({"char": np.array([2], np.int32), "l0_h": np.zeros((1, H), np.float32)})


def test_unknown_op_raises(tmp_path):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec((1, 4))], opset_version=ct.target.iOS15)
    def prog(x):
        return mb.sin(x=x, name="y")

    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
               skip_model_load=True).save(str(tmp_path / MODEL_FILE))
    evaluator = MILProgram.load(tmp_path / MODEL_FILE)
    assert "sin" in evaluator.op_types
    with pytest.raises(UnsupportedOpError, match="'sin'"):
        evaluator.predict({"x": np.ones((1, 4), np.float32)})


def test_evaluator_checks_inputs_and_states(exported):
    io_prog, _, _ = exported(("lstm", 1, 2), "io", "fp32")
    with pytest.raises(EdgeRNNError, match="missing"):
        io_prog.predict({"char": np.array([2], np.int32)})
    with pytest.raises(EdgeRNNError, match="shape"):
        io_prog.predict({"char": np.array([2], np.int32), "l0_h": np.zeros((1, H + 1)),
                         "l0_c": np.zeros((1, H))})
    st_prog, _, _ = exported(("lstm", 1, 2), "mlstate", "fp32")
    with pytest.raises(EdgeRNNError, match="make_state"):
        st_prog.predict({"char": np.array([2], np.int32)})


@pytest.mark.parametrize("compression", ["int8-iOS16", "lut4-iOS16", "lut3-iOS18", "int4-block-iOS18"])
def test_compression_ops_decode_like_coremltools(compression, exported, tmp_path):
    """The constexpr ops (for the quantization work to come) give exactly coremltools' own values."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    kind, *_, target = compression.split("-")
    form = "io" if target == "iOS16" else "mlstate"
    _, _, path = exported(("lstm", 1, 2), form, "fp32")
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    if kind.startswith("lut"):
        op_config = cto.OpPalettizerConfig(mode="uniform", nbits=int(kind[3:]), weight_threshold=100)
        compressed = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))
    else:
        extra = {"granularity": "per_block", "block_size": 8} if "block" in compression else {}
        op_config = cto.OpLinearQuantizerConfig(mode="linear", dtype=kind, weight_threshold=100, **extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the all-zero <pad> row: scale 0
            compressed = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))
    compressed.save(str(tmp_path / MODEL_FILE))
    saved = ct.models.MLModel(str(tmp_path / MODEL_FILE), skip_model_load=True)
    version = ct.target.iOS16 if target == "iOS16" else ct.target.iOS18
    mil = load_mil(saved.get_spec(), specification_version=version, file_weights_dir=saved.weights_dir)
    want = {op.outputs[0].name: op.materialized_val_inference()
            for op in mil.functions["main"].operations if op.op_type.startswith("constexpr_")}
    assert len(want) == 4  # embedding, two cell matrices, head
    evaluator = MILProgram.load(tmp_path / MODEL_FILE)
    got = evaluator.constants()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value)


# ---- the package: interface, targets, metadata ---------------------------------------------------


@pytest.mark.parametrize("form,version", [("io", 6), ("mlstate", 9)])
def test_minimum_deployment_target(form, version, exported):
    import coremltools as ct

    _, manifest, path = exported(("gru", 1, 2), form, "fp32")
    target = ct.target.iOS15 if form == "io" else ct.target.iOS18
    assert load_spec(path).specificationVersion == version == target.value
    assert manifest["minimum_deployment_target"] == ("iOS15" if form == "io" else "iOS18")
    assert manifest["specification_version"] == version


def test_io_interface_follows_the_contract(exported):
    case = ("nlstm", 1, 3)
    _, manifest, path = exported(case, "io", "fp32")
    names = ["l0_h", "l0_c0", "l0_c1", "l0_c2"]
    assert state_names(make_model(*case).config) == names
    desc = load_spec(path).description
    assert [f.name for f in desc.input] == ["char", *names]
    next_names = [f"{n}_next" for n in names]
    assert [f.name for f in desc.output] == ["top_ids", "top_probs", "log_probs", *next_names]
    assert manifest["inputs"][0] == {"name": "char", "dtype": "int32", "shape": [1]}
    assert manifest["inputs"][1] == {"name": "l0_h", "dtype": "float32", "shape": [1, H]}
    assert manifest["outputs"][0] == {"name": "top_ids", "dtype": "int32", "shape": [1, TOP_K]}
    assert manifest["outputs"][1] == {"name": "top_probs", "dtype": "float32", "shape": [1, TOP_K]}
    assert manifest["states"] == [] and manifest["state_form"] == "io"
    assert manifest["files"] == [MODEL_FILE] and manifest["precision"] == "fp32"


def test_mlstate_interface_follows_the_contract(exported):
    case = ("lstm", 2, 2)
    _, manifest, path = exported(case, "mlstate", "fp16")
    desc = load_spec(path).description
    names = ["l0_h", "l0_c", "l1_h", "l1_c"]
    assert [f.name for f in desc.input] == ["char"]
    assert [f.name for f in desc.output] == ["top_ids", "top_probs", "log_probs"]
    assert [s.name for s in desc.state] == names
    assert manifest["states"] == [{"name": n, "dtype": "float16", "shape": [1, H]} for n in names]


def test_without_log_probs_outputs_only_top_k_and_states(tmp_path):
    manifest = export_coreml(make_model("gru", 1, 2), tmp_path, top_k=5)
    assert [o["name"] for o in manifest["outputs"]] == ["top_ids", "top_probs", "l0_h_next"]
    assert manifest["outputs"][0]["shape"] == [1, 5]


def test_metadata(exported):
    case = ("nlstm", 1, 2)
    _, _, path = exported(case, "mlstate", "fp32")
    desc = load_spec(path).description
    meta = desc.metadata
    assert meta.author == "edge-rnn" and meta.versionString and "nlstm" in meta.shortDescription
    user = dict(meta.userDefined)
    assert user["cell"] == "nlstm" and json.loads(user["layers"]) == 1
    assert json.loads(user["units"]) == H and json.loads(user["depth"]) == 2
    assert json.loads(user["top_k"]) == TOP_K and user["state_form"] == "mlstate"
    assert json.loads(user["state_names"]) == ["l0_h", "l0_c0", "l0_c1"]
    for feature in [*desc.input, *desc.output, *desc.state]:
        assert feature.shortDescription, f"{feature.name} has no description"


# ---- arguments and warnings --------------------------------------------------------------------


def test_hidden_size_not_multiple_of_32_warns_for_core_ml_states(tmp_path):
    mx.random.seed(0)
    model = RNNModel(ModelConfig(cell="gru", units=20, embed_dim=8, vocab_size=50))
    with pytest.warns(UserWarning, match="multiple of 32"):
        export_coreml(model, tmp_path / "a", state="mlstate")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        export_coreml(model, tmp_path / "b", state="io")


@pytest.mark.parametrize("kwargs", [{"state": "coreml"}, {"precision": "int8"}, {"top_k": 0}, {"top_k": 53}])
def test_bad_arguments_raise(kwargs, tmp_path):
    with pytest.raises(EdgeRNNError):
        export_coreml(make_model("gru", 1, 2), tmp_path, **kwargs)


def test_coremltools_predict_is_never_called_in_the_sources():
    """It raises off macOS; the exporter and evaluator must not depend on it (the autouse fixture
    catches calls at run time; this catches code paths the tests do not reach)."""
    root = Path(coreml_export.__file__).parent
    assert ".predict(" not in (root / "coreml.py").read_text()
    assert "MLModel(" not in (root / "mil_eval.py").read_text()  # it parses the protobuf itself
