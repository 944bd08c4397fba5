"""Bundles ready for mobile runtimes: one copy of the weights for the step and prefill graphs
(fp32, fp16, int8, prefix head), the ORT format with its operator list, fp16 straight from export."""

import mlx.core as mx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlx.utils import tree_map
from onnx import numpy_helper

from edge_rnn.export.bundle import export_bundle, read_manifest
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel, save
from edge_rnn.quantize import quantize
from edge_rnn.runtime import SYMBOL_ID, open_session
from edge_rnn.vocab import Vocab

WORDS = [f"{a}{b}{c}" for a in "abcdefghij" for b in "klmnopqrst" for c in "uvwxyzabcdefghij"]  # 1,600
GRAPHS = ("model.onnx", "prefill.onnx")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A random 2x64 GRU over 1,600 words: the head dominates the bytes, as in the edge presets."""
    mx.random.seed(0)
    model = RNNModel(ModelConfig(cell="gru", layers=2, units=64, embed_dim=16, vocab_size=len(WORDS)))
    rng = np.random.default_rng(0)
    model.update(tree_map(lambda a: mx.array(rng.normal(0, 0.5, a.shape), dtype=mx.float32), model.parameters()))
    path = tmp_path_factory.mktemp("mobile") / "run"
    save(model, path, Vocab.from_counts(WORDS))
    return path


def step_weight_bytes(bundle) -> int:
    """Bytes of the step graph's initializers, loaded with their external data."""
    model = onnx.load(str(bundle / "model.onnx"))
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def shipped_bytes(bundle) -> int:
    """What an app ships for ONNX Runtime: both graphs and their weights (not vocab, manifest)."""
    files = read_manifest(bundle)["files"]
    return sum(v["bytes"] for k, v in files.items() if k in (*GRAPHS, "weights.bin"))


@pytest.fixture(scope="module")
def bundles(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    fp32 = export_bundle(run, out / "fp32", with_log_probs=True, ort_format=True)
    prefix = export_bundle(run, out / "prefix", prefix_head=True)
    return {"fp32": fp32, "prefix": prefix,
            "fp16": export_bundle(run, out / "fp16", with_log_probs=True, precision="fp16"),
            "int8": quantize(fp32, "int8", out=out / "int8")[0],
            "prefix-int8": quantize(prefix, "int8", out=out / "prefix-int8")[0]}


@pytest.mark.parametrize("kind", ["fp32", "prefix", "fp16", "int8", "prefix-int8"])
def test_step_and_prefill_share_one_copy_of_the_weights(bundles, kind):
    bundle = bundles[kind]
    for graph in GRAPHS:  # the graphs themselves hold no weight of any size
        model = onnx.load(str(bundle / graph), load_external_data=False)
        inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
        assert sum(t.ByteSize() for t in inline) < 4096, graph
        assert {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"} == {"weights.bin"}
    # one copy of the weights; the graphs' own bytes are structure, a fixed ~10 kB each whatever
    # the model size (the int8 prefix head's If branches and MatMulInteger nodes weigh most)
    files = read_manifest(bundle)["files"]
    assert files["weights.bin"]["bytes"] <= 1.1 * step_weight_bytes(bundle)
    assert all(files[g]["bytes"] < 16_384 for g in GRAPHS)
    assert shipped_bytes(bundle) <= 1.1 * step_weight_bytes(bundle) + 2 * 16_384


def test_weights_file_is_covered_by_the_manifest(bundles, tmp_path):
    import shutil

    damaged = shutil.copytree(bundles["fp32"], tmp_path / "b")
    data = bytearray((damaged / "weights.bin").read_bytes())
    data[100] ^= 1
    (damaged / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(EdgeRNNError, match="weights.bin is damaged"):
        read_manifest(damaged)


def test_prefill_equals_stepping_with_shared_weights(bundles):
    """The prefill graph reads the step graph's tensors: the same state after the same text."""
    for kind in ("fp32", "fp16"):  # int8: dynamic activation scales differ per call (quantize's check)
        bundle = bundles[kind]
        ids = np.array([SYMBOL_ID[ch] for ch in " abk lmu ckv"], np.int32)
        step = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
        prefill = ort.InferenceSession(str(bundle / "prefill.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in step.get_inputs() if i.name != "char"]
        state = {n: np.zeros((1, 64), np.float32) for n in names}
        for t in range(len(ids)):
            out = dict(zip([o.name for o in step.get_outputs()], step.run(None, {"char": ids[t : t + 1], **state})))
            state = {n: out[f"{n}_next"] for n in names}
        whole = dict(zip([o.name for o in prefill.get_outputs()],
                         prefill.run(None, {"chars": ids[None], **{n: np.zeros((1, 64), np.float32) for n in names}})))
        for n in names:
            np.testing.assert_array_equal(whole[f"{n}_next"], state[n])


def test_fp16_export_stores_half_and_suggests_like_fp32(bundles):
    fp16, fp32 = bundles["fp16"], bundles["fp32"]
    manifest = read_manifest(fp16)
    assert manifest["export"]["precision"] == "fp16"
    model = onnx.load(str(fp16 / "model.onnx"))
    big = [t for t in model.graph.initializer if numpy_helper.to_array(t).size >= 1024]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    assert {i.name: i.type.tensor_type.elem_type for i in model.graph.input}["l0_h"] == onnx.TensorProto.FLOAT
    assert 0.45 < shipped_bytes(fp16) / shipped_bytes(fp32) < 0.55
    a, b = open_session(fp32), open_session(fp16)
    for text in ["abk ", "abk cl", "dmw fq", "j"]:
        wa, wb = a.complete(text, 3), b.complete(text, 3)
        assert [w for w, _ in wa][:1] == [w for w, _ in wb][:1]
        assert np.allclose([p for _, p in wa], [p for _, p in wb], atol=2e-2)
    with pytest.raises(EdgeRNNError, match="fp16 bundle"):
        quantize(fp16, "int8")


def test_ort_format_runs_like_the_onnx_graphs(bundles):
    for kind in ("fp32", "int8"):
        bundle = bundles[kind]
        manifest = read_manifest(bundle)
        fragment = manifest["export"]["ort"]
        assert fragment["files"] == {"model.onnx": "model.ort", "prefill.onnx": "prefill.ort"}
        assert {"model.ort", "prefill.ort", "required_operators.config"} <= set(manifest["files"])
        # independent of the exporter's own check: stream a text through both in ONNX Runtime
        sessions = [ort.InferenceSession(str(bundle / f), providers=["CPUExecutionProvider"])
                    for f in ("model.onnx", "model.ort")]
        names = [i.name for i in sessions[0].get_inputs() if i.name != "char"]
        states = [{n: np.zeros((1, 64), np.float32) for n in names} for _ in sessions]
        for ch in " fmw gqx":
            outs = []
            for k, s in enumerate(sessions):
                out = dict(zip([o.name for o in s.get_outputs()],
                               s.run(None, {"char": np.array([SYMBOL_ID[ch]], np.int32), **states[k]})))
                states[k] = {n: out[f"{n}_next"] for n in names}
                outs.append(out)
            np.testing.assert_array_equal(outs[0]["top_ids"], outs[1]["top_ids"])
            np.testing.assert_allclose(outs[0]["log_probs"], outs[1]["log_probs"], atol=1e-5)
        ops = (bundle / "required_operators.config").read_text()
        assert "ai.onnx;18;Split" in ops and "Scan" in ops and "TopK" in ops and "/tmp" not in ops
        if kind == "int8":
            assert "DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops


def test_ort_format_is_for_onnx_only(run, tmp_path):
    with pytest.raises(EdgeRNNError, match="ORT format is for ONNX"):
        export_bundle(run, tmp_path / "x", fmt="coreml", ort_format=True)
