"""Quantization of ONNX bundles: the ONNX Runtime side of ``edge-rnn quantize``.

Our exporter writes ``Gemm`` nodes; ONNX Runtime's dynamic quantizer
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

A prefix-range head bundle (``export --prefix-head``) gets its head rows compressed too
(``quantize_range_head``), in a form the range can slice before anything is dequantised: ONNX
Runtime's quantizers take only constant ``MatMul`` weights, and the narrow branch's weight is a
``Slice``. ``int8``: the rows exactly as ``quantize_dynamic`` stores the full head's (ONNX Runtime's
own quantizer, run on the head alone), multiplied by ``MatMulInteger`` with the ops
``quantize_dynamic`` writes, so the logits are bit-identical to the full-head int8 bundle's and the
suggestions are its prefix-filtered ones. ``fp16``: the rows fp16, sliced, then cast. ``int4`` is
refused: ``MatMulNBits`` needs its whole weight as a constant and opset 18 has no int4
``DequantizeLinear``.

The accuracy check (``edge_rnn.quantize_check``) runs both bundles' step graphs in ONNX Runtime
through ``chunks``, with the head's softmax exposed.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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

    from edge_rnn.export.onnx import (STEP_FILE, WEIGHTS_FILE, read_boundary_candidates, save_shared,
                                      split_range_head)

    record = _onnx_record(source, to)
    tensors, opsets, models = {}, {}, {}
    prefix_head = source.manifest["export"].get("prefix_head")
    for name in source.manifest["export"]["files"]:
        model = onnx.load(str(source.path / name))  # with its external data (weights.bin)
        before = _float_weights(model)
        if prefix_head:
            model = quantize_range_head(model, to)
        models[name] = model = ONNX_METHODS[to][0](model)
        tensors[name] = _onnx_tensor_report(before, model)
        opsets[name] = {op.domain or "ai.onnx": op.version for op in model.opset_import}
    candidates = read_boundary_candidates(source.path) if prefix_head and prefix_head.get("boundary_words") else None
    split = split_range_head(models[STEP_FILE], candidates) if prefix_head and prefix_head.get("split") else {}
    save_shared({**models, **split}, tmp)  # the graphs quantized alike: their weights stored once again
    shutil.copy2(source.path / VOCAB, tmp / VOCAB)
    export = {"precision": to, "opset_imports": opsets, "weights": WEIGHTS_FILE}
    if prefix_head:
        export["prefix_head"] = _prefix_head_fragment(prefix_head, to)
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
        if to not in PREFIX_HEAD_METHODS:
            raise EdgeRNNError(f"{source.path}: a prefix-range head cannot be stored {to}: its rows are "
                               "sliced per keystroke and MatMulNBits takes only a whole constant weight "
                               "(opset 18 has no int4 DequantizeLinear); use --to int8 or fp16")
        record["head"] = PREFIX_HEAD_METHODS[to]
    return record


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



# ---- the prefix-range head: rows stored compressed, sliced before they are dequantised -----------

# Ranges wider than this share of the outputs run the whole int8 head (pre-packed ``MatMulInteger``)
# and slice its logits; narrower ones slice the int8 rows and multiply them as they come. Measured
# on a 10,002 x 256 head (ONNX Runtime 1.32, 1 thread; ``scripts/bench_latency.py --heads``): the
# whole int8 head costs ~80-110 us, a slice of 2,000 rows ~105 us, of 200 rows ~29 us.
INT8_FULL_SHARE = 0.2
PREFIX_HEAD_METHODS = {
    "int8": "rows int8 exactly as quantize_dynamic stores the full head's (per word, 7-bit range), "
            "sliced by the range before MatMulInteger; h quantized once (DynamicQuantizeLinear) for "
            f"both branches; ranges over {INT8_FULL_SHARE:.0%} of the words take the whole pre-packed "
            "int8 head and slice its logits",
    "fp16": "rows fp16, sliced by the range and then cast to fp32 (the wide branch reads the whole "
            "head cast once at session load, as the fp16 full head does)",
}


def _prefix_head_fragment(fragment: dict, to: str) -> dict:
    """The manifest's ``export.prefix_head`` after ``quantize_range_head``: how the rows are stored
    and where the graph switches to the whole head."""
    fragment = {**fragment, "rows": to}
    if to == "int8":
        n_outputs = fragment["word_boundary_range"][1]
        fragment["full_gemm_above_rows"] = int(INT8_FULL_SHARE * n_outputs)
    return fragment


def quantize_range_head(model, to: str):
    """Store the prefix-range head's rows (``edge_rnn.export.onnx.range_head``) compressed.

    The narrow branch slices the compressed rows of the range and computes with them; the wide
    branch (word boundaries) runs the whole compressed head. Each computes the logits of the
    full-head bundle quantized the same way (``--to int8`` of a full head quantizes its weight
    with the same function and multiplies with the same ops), so the suggestions stay that
    bundle's prefix-filtered ones. Modifies ``model`` in place; the cells are left to
    ``ONNX_METHODS``.
    """
    head = _range_head(model.graph)
    if to == "fp16":
        _fp16_rows(model.graph, head)
    else:
        _int8_rows(model.graph, head)
    return model


@dataclass
class _RangeHead:
    """The names ``range_head`` gave its pieces, read back from a saved graph."""

    node: Any  # the If
    h: str
    weight: str  # [H, V], exported ids in the range's (alphabetical) order
    bias: str
    start: str
    end: str
    axis0: str
    axis1: str
    wide_rows: str


def _range_head(graph) -> _RangeHead:
    """Find the ``If`` of the prefix-range head: its wide branch is ``Gemm(h, head.Wt, head.b)``
    followed by ``Slice(logits, start, end, axis1)``."""
    for node in graph.node:
        if node.op_type != "If":
            continue
        branches = {a.name: a.g for a in node.attribute}
        wide = list(branches["then_branch"].node)
        narrow = list(branches["else_branch"].node)
        if [n.op_type for n in wide] != ["Gemm", "Slice"]:
            continue
        gemm, slice_ = wide
        bias_slice = next(n for n in narrow if n.op_type == "Slice" and n.input[0] == gemm.input[2])
        greater = next(n for n in graph.node if n.output[0] == node.input[0])
        return _RangeHead(node, gemm.input[0], gemm.input[1], gemm.input[2], slice_.input[1],
                          slice_.input[2], bias_slice.input[3], slice_.input[3], greater.input[1])
    raise EdgeRNNError("this graph has no prefix-range head (expected an If over Gemm + Slice)")


def _int8_rows(graph, head: _RangeHead) -> None:
    """int8 rows: ``MatMulInteger`` on the whole head (wide) or on the range's columns (narrow)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    q, scale = _dynamic_int8(numpy_helper.to_array(inits[head.weight]), head.weight)
    graph.initializer.remove(inits[head.weight])
    graph.initializer.extend([q, scale])
    hq, hs, hz = (f"{head.h}_head_{k}" for k in ("quantized", "scale", "zero_point"))
    at = list(graph.node).index(head.node)
    graph.node.insert(at, helper.make_node("DynamicQuantizeLinear", [head.h], [hq, hs, hz],
                                           name=f"{head.h}_head_quantize"))

    def logits(body: list, w: str, w_scale: str, bias: str, tag: str) -> str:
        """The ops ``quantize_dynamic`` writes for ``MatMul`` + ``Add``, with these weights (its
        weight zero points are all 0, symmetric: leaving them out changes no integer sum)."""
        body += [helper.make_node("MatMulInteger", [hq, w, hz], [f"{tag}_int32"], name=f"{tag}_matmul"),
                 helper.make_node("Cast", [f"{tag}_int32"], [f"{tag}_float"], name=f"{tag}_cast", to=TensorProto.FLOAT),
                 helper.make_node("Mul", [hs, w_scale], [f"{tag}_scales"], name=f"{tag}_scales"),
                 helper.make_node("Mul", [f"{tag}_float", f"{tag}_scales"], [f"{tag}_mm"], name=f"{tag}_scale"),
                 helper.make_node("Add", [f"{tag}_mm", bias], [f"{tag}_logits"], name=f"{tag}_bias")]
        return f"{tag}_logits"

    def sliced(body: list, name: str, axis: str) -> str:
        body.append(helper.make_node("Slice", [name, head.start, head.end, axis], [f"{name}_range"],
                                     name=f"{name}_range"))
        return f"{name}_range"

    wide: list = []
    full = logits(wide, q.name, scale.name, head.bias, "head_int8_wide")
    wide.append(helper.make_node("Slice", [full, head.start, head.end, head.axis1], ["head_int8_wide_range"],
                                 name="head_int8_wide_range"))
    narrow: list = []
    rows = [sliced(narrow, q.name, head.axis1), sliced(narrow, scale.name, head.axis0),
            sliced(narrow, head.bias, head.axis0)]
    logits(narrow, *rows, "head_int8_narrow")
    _set_branches(head.node, wide, "head_int8_wide_range", narrow, "head_int8_narrow_logits")
    n_outputs = int(q.dims[1])
    _set_int(graph, head.wide_rows, int(INT8_FULL_SHARE * n_outputs))


def _fp16_rows(graph, head: _RangeHead) -> None:
    """fp16 rows: the whole head cast to fp32 once (wide; folded at session load), the range's
    fp16 columns sliced and then cast (narrow)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    half = numpy_helper.from_array(numpy_helper.to_array(inits[head.weight]).astype(np.float16), head.weight + "_fp16")
    graph.initializer.remove(inits[head.weight])
    graph.initializer.append(half)
    _prepend(graph, [helper.make_node("Cast", [half.name], [head.weight], name=head.weight + "_to_fp32",
                                      to=TensorProto.FLOAT)])
    narrow = [helper.make_node("Slice", [half.name, head.start, head.end, head.axis1], ["head_fp16_range"],
                               name="head_fp16_range"),
              helper.make_node("Cast", ["head_fp16_range"], ["head_fp16_range_fp32"], name="head_fp16_range_fp32",
                               to=TensorProto.FLOAT),
              helper.make_node("Slice", [head.bias, head.start, head.end, head.axis0], ["head_bias_range"],
                               name="head_bias_range"),
              helper.make_node("Gemm", [head.h, "head_fp16_range_fp32", "head_bias_range"], ["head_fp16_narrow_logits"],
                               name="head_fp16_narrow_logits")]
    branches = {a.name: a.g for a in head.node.attribute}
    wide = list(branches["then_branch"].node)
    _set_branches(head.node, wide, branches["then_branch"].output[0].name, narrow, "head_fp16_narrow_logits")


def _set_branches(node, wide: list, wide_out: str, narrow: list, narrow_out: str) -> None:
    from onnx import TensorProto, helper

    for attr in node.attribute:
        nodes, out, name = (wide, wide_out, "wide_range") if attr.name == "then_branch" else (narrow, narrow_out, "narrow_range")
        attr.g.CopyFrom(helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                                                                          ["batch", "n"])]))


def _set_int(graph, name: str, value: int) -> None:
    from onnx import numpy_helper

    for k, t in enumerate(graph.initializer):
        if t.name == name:
            graph.initializer[k].CopyFrom(numpy_helper.from_array(np.array([value], np.int64), name))
            return
    raise EdgeRNNError(f"no initializer {name!r} in the graph")


def _dynamic_int8(w: np.ndarray, name: str):
    """``w [H, V]`` as ``quantize_dynamic`` stores a ``MatMul`` weight (per output column, the
    7-bit range, the settings of ``_onnx_int8``): ONNX Runtime's own quantizer run on a one-node
    graph, so the rows are bit-identical to those of the same model's full-head int8 bundle.
    Returns the initializers ``{name}_quantized`` and ``{name}_scale`` (the zero points are 0)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    H = w.shape[0]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", name], ["y"])], "head",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])],
                              [numpy_helper.from_array(w, name)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    with quiet_logs(), tempfile.TemporaryDirectory() as work:
        out = Path(work) / "head.onnx"
        quantize_dynamic(model, out, per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
        inits = {t.name: t for t in onnx.load(str(out)).graph.initializer}
    if np.any(numpy_helper.to_array(inits[f"{name}_zero_point"])):
        raise EdgeRNNError(f"{name}: expected symmetric int8 rows (zero points 0) from quantize_dynamic")
    return inits[f"{name}_quantized"], inits[f"{name}_scale"]
