"""Quantization of ONNX bundles: the ONNX Runtime side of ``edge-rnn quantize``.

(ONNX Runtime). Our exporter writes ``Gemm`` nodes; ONNX Runtime's dynamic quantizer
and its 4-bit quantizer only handle ``MatMul``, so every plain ``Gemm`` with a constant weight is
first rewritten as ``MatMul`` + ``Add`` (the same arithmetic). ``int8``: ``quantize_dynamic``
(``MatMulInteger``: int8 weights per output channel, uint8 activations quantized per call) with
``reduce_range``: weights in 7 bits, because x86 CPUs without VNNI (AVX2 only, like this
machine) saturate the 16-bit sums of uint8 x int8 products, which measured as 92 % top-1
agreement instead of 99 %. The folded-embedding ``Gather`` table stays fp32: ONNX Runtime would
quantize it per tensor, which cost more agreement than it saved bytes (it is ~1 % of a
weight-dominated model). ``int4``: ``MatMulNBitsQuantizer`` (``MatMulNBits`` contrib op,
symmetric blocks of 32 along the input axis, ``accuracy_level=4``: int8 arithmetic, 3x faster
here than the fp32 default at the same agreement). The native ``GRU``/``LSTM``/``RNN`` operators
of the prefill graph have no quantized kernel for GRU/RNN in ONNX Runtime: their weights are
stored int8 per row behind a ``DequantizeLinear`` (weight-only; the prefill runs once per
context, not per keystroke). ``fp16``: fp16 storage, fp32 compute (one ``Cast`` per weight, folded when
the session loads), so a step costs what fp32 costs on CPUs without fp16 arithmetic and the
head's softmax and top-k see fp32 logits; written directly, because ONNX Runtime's
``convert_float_to_float16`` also rounds the state inputs/outputs to fp16 (see ``_onnx_fp16``).

The accuracy check (``edge_rnn.quantize_check``) runs both bundles' step graphs in ONNX Runtime
through ``chunks``, with the head's softmax exposed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edge_rnn.data import Dataset
from edge_rnn.export.contract import RANGE_INPUT, VOCAB
from edge_rnn.io import EdgeRNNError, quiet_logs
from edge_rnn.quantize_check import LISTED_ELEMENTS, STEP_BATCH, Chunks, Source, stream

BLOCK = 32  # int4 block size (MatMulNBits)
NATIVE_RNN_OPS = ("GRU", "LSTM", "RNN")
RUNTIME = "ONNX Runtime (CPU), step graph, batched streams"


def quantize(source: Source, to: str, tmp: Path) -> dict:
    """Quantize every ``.onnx`` file of the bundle; copy the vocabulary."""
    import onnx

    from edge_rnn.export.onnx import WEIGHTS_FILE, save_shared

    record = _onnx_record(source, to)
    tensors, opsets, models = {}, {}, {}
    for name in source.manifest["export"]["files"]:
        model = onnx.load(str(source.path / name))  # with its external data (weights.bin)
        before = _float_weights(model)
        models[name] = model = ONNX_METHODS[to][0](model)
        tensors[name] = _onnx_tensor_report(before, model)
        opsets[name] = {op.domain or "ai.onnx": op.version for op in model.opset_import}
    save_shared(models, tmp)  # the graphs quantized alike: their weights stored once again
    shutil.copy2(source.path / VOCAB, tmp / VOCAB)
    export = {"precision": to, "opset_imports": opsets, "weights": WEIGHTS_FILE}
    if source.manifest["export"].get("ort"):  # an --ort bundle: its .ort files from the new graphs
        from edge_rnn.export.ort_format import write_ort_format

        export["ort"] = write_ort_format(tmp, list(models), source.manifest["model"]["n_outputs"])
    record.update(tensors=tensors, export=export)
    return record


def _onnx_record(source: Source, to: str) -> dict:
    """What will be done; a prefix-range head (the bench's opt-in head) is noted or refused."""
    import onnxruntime

    if source.manifest["export"].get("precision", "fp32") != "fp32":
        raise EdgeRNNError(f"{source.path} is a {source.manifest['export']['precision']} bundle; "
                           "quantize the fp32 bundle (export without --precision)")
    record = {"to": to, "source_precision": "fp32", "tool": f"onnxruntime {onnxruntime.__version__}",
              **ONNX_METHODS[to][1]}
    if source.manifest["export"].get("prefix_head"):
        if to == "fp16":
            raise EdgeRNNError(f"{source.path}: fp16 does not support the prefix-range head yet (the "
                               "converter does not type its If branches); use int8/int4 or a full head")
        record["note"] = PREFIX_HEAD_NOTE
    return record


PREFIX_HEAD_NOTE = ("prefix-range head: its weight stays fp32 (the narrow branch slices it, and ONNX "
                    "Runtime's quantizers only take constant MatMul weights); the cells are quantized")


def gemm_as_matmul(model):
    """Rewrite every plain ``Gemm`` (alpha = beta = 1, no transposes) with a constant weight as
    ``MatMul`` (+ ``Add`` of its bias), in subgraphs too: ONNX Runtime's weight quantizers only
    quantize ``MatMul``. The output keeps the ``Gemm``'s name, so nothing downstream changes."""
    from onnx import helper

    constants = {t.name for t in model.graph.initializer}

    def plain(node) -> bool:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return (attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
                and not attrs.get("transA", 0) and not attrs.get("transB", 0))

    def rewrite(graph) -> None:
        nodes = []
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == attr.GRAPH:
                    rewrite(attr.g)
            if node.op_type != "Gemm" or node.input[1] not in constants or not plain(node):
                nodes.append(node)
                continue
            has_bias = len(node.input) > 2 and node.input[2]
            product = node.output[0] + "_matmul" if has_bias else node.output[0]
            nodes.append(helper.make_node("MatMul", node.input[:2], [product], name=node.name + "_matmul"))
            if has_bias:
                nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                              name=node.name + "_bias"))
        del graph.node[:]
        graph.node.extend(nodes)

    rewrite(model.graph)
    return model


def _onnx_int8(model):
    """int8: ONNX Runtime's dynamic quantization, per output channel; native RNN ops weight-only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_logs(), tempfile.TemporaryDirectory() as work:
        out = Path(work) / "int8.onnx"
        quantize_dynamic(gemm_as_matmul(model), out, per_channel=True, reduce_range=True,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True})
        import onnx

        model = onnx.load(str(out))
    return int8_weight_only(model, NATIVE_RNN_OPS)


def _onnx_int4(model):
    """int4: ``MatMulNBits`` (symmetric blocks of 32); native RNN ops weight-only int8."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with quiet_logs():
        quantizer = MatMulNBitsQuantizer(gemm_as_matmul(model), bits=4, block_size=BLOCK, is_symmetric=True,
                                         accuracy_level=4, op_types_to_quantize=("MatMul",))
        quantizer.process()
    return int8_weight_only(quantizer.model.model, NATIVE_RNN_OPS)


def _onnx_fp16(model):
    """fp16 storage, fp32 compute: each float weight is stored fp16 behind one ``Cast`` to fp32,
    which ONNX Runtime folds when the session loads, so a step costs what fp32 costs and the
    head's softmax and top-k see fp32 logits.

    Not ``onnxruntime.transformers.float16.convert_float_to_float16``: even with every op blocked
    and the initializers forced to fp16, it casts the state inputs and outputs to fp16 and back
    (rounding the recurrent state every keystroke) and, with shape inference, every intermediate
    value too; measured 1.4x slower than fp32 per step on the edge GRU (ONNX Runtime 1.32, x86).
    """
    from edge_rnn.export.onnx import fp16_weights  # the same as export --precision fp16

    return fp16_weights(model)


def _prepend(graph, nodes: list) -> None:
    """Put constant-producing nodes first: the graph stays topologically sorted."""
    if nodes:
        rest = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes + rest)


def _op_types(graph) -> set[str]:
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                found |= _op_types(attr.g)
    return found


def int8_weight_only(model, op_types: tuple[str, ...]):
    """Store the float weights (inputs 1 and 2: ``W``, ``R``) of ``op_types`` nodes as int8, one
    symmetric scale per row of their gate axis, behind a ``DequantizeLinear`` that restores the
    original name. For operators ONNX Runtime has no quantized kernel for (``GRU``, ``RNN``)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    names = {node.input[i] for node in graph.node if node.op_type in op_types
             for i in (1, 2) if len(node.input) > i}
    nodes = []
    for name in sorted(n for n in names if n in inits and inits[n].data_type == TensorProto.FLOAT):
        w = numpy_helper.to_array(inits[name])
        q, scale = _symmetric_int8(w, axis=1)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                  numpy_helper.from_array(scale, name + "_int8_scale")])
        nodes.append(helper.make_node("DequantizeLinear", [name + "_int8", name + "_int8_scale"],
                                      [name], name=name + "_dequantize", axis=1))
    _prepend(graph, nodes)
    return model


def _symmetric_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``w ~= q * scale`` with one scale per index of ``axis``; an all-zero row gets scale 1."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    scale = np.abs(w).max(axis=other) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def _float_weights(model) -> dict[str, list[int]]:
    from onnx import TensorProto

    return {t.name: list(t.dims) for t in model.graph.initializer
            if t.data_type == TensorProto.FLOAT and np.prod(t.dims) >= LISTED_ELEMENTS}


def _onnx_tensor_report(before: dict[str, list[int]], model) -> dict:
    """Which of the source's float weights were compressed and which are still float32."""
    from onnx import TensorProto

    still = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    return {"compressed": sorted(n for n in before if n not in still),
            "kept_fp32": sorted(n for n in before if n in still),
            "ops": sorted(_op_types(model.graph))}


ONNX_METHODS: dict[str, tuple[Callable, dict]] = {
    "int8": (_onnx_int8, {
        "method": "onnxruntime.quantization.quantize_dynamic (MatMul; per_channel, reduce_range) after "
                  "Gemm -> MatMul + Add; native GRU/LSTM/RNN weights int8 weight-only (DequantizeLinear)",
        "dtype": "int8", "granularity": "symmetric per output channel, 7-bit range (MatMul); "
                                        "per gate row (native RNN weights); the Gather table stays fp32",
        "activations": "uint8, quantized per call (dynamic)"}),
    "int4": (_onnx_int4, {
        "method": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer after "
                  "Gemm -> MatMul + Add; native GRU/LSTM/RNN weights int8 weight-only (DequantizeLinear)",
        "dtype": "int4", "granularity": f"symmetric blocks of {BLOCK} along the input axis; "
                                        "the Gather table stays fp32",
        "activations": "int8 per block inside MatMulNBits (accuracy_level 4)"}),
    "fp16": (_onnx_fp16, {
        "method": "float initializers stored float16, each behind one Cast to float32 (ONNX Runtime "
                  "folds them at session load)",
        "dtype": "float16", "granularity": "every float initializer",
        "activations": "fp32; the state inputs/outputs stay fp32"}),
}



# ---- the check's runner -------------------------------------------------------------------------

def chunks(bundle: Path, data: Dataset, manifest: dict) -> Chunks:
    """The step graph in ONNX Runtime with its softmax exposed, many observations per call
    (``manifest``: the source's; a quantized bundle keeps its file names and I/O)."""
    import onnxruntime as ort

    states = [s["name"] for s in manifest["state"]]
    units = manifest["model"]["units"]
    session = ort.InferenceSession(_with_probs(bundle / manifest["export"]["model"]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    extra = _range_feed(session, manifest)

    def step(chars, state):
        out = session.run(["eval_probs", *(f"{s}_next" for s in states)],
                          {"char": chars.astype(np.int32), **dict(zip(states, state)), **extra})
        return out[0], out[1:]

    yield from stream(data, STEP_BATCH, step,
                       lambda b: [np.zeros((b, units), np.float32) for _ in states])


def _range_feed(session, manifest: dict) -> dict:
    """A prefix-range head (``range`` input) computes the full head for ``[0, V)``."""
    names = {i.name for i in session.get_inputs()}
    if RANGE_INPUT in names:
        return {RANGE_INPUT: np.array([0, manifest["model"]["n_outputs"]], np.int32)}
    return {}


def _with_probs(path: Path):
    """The graph with the softmax that feeds top-k also exposed, as fp32, as ``eval_probs``."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if len(softmax) != 1:
        raise EdgeRNNError(f"{path}: expected one Softmax (the head) in the step graph, found {len(softmax)}")
    model.graph.node.append(helper.make_node("Cast", [softmax[0].output[0]], ["eval_probs"],
                                             name="eval_probs", to=TensorProto.FLOAT))
    model.graph.output.append(helper.make_tensor_value_info("eval_probs", TensorProto.FLOAT, None))
    return model

