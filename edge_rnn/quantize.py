"""Post-training weight quantization of bundles and run directories, and a built-in check of its cost.

``quantize(path, to)`` compresses the weights of an ONNX bundle, a Core ML bundle or an MLX run
directory to ``int8``, ``int4`` or ``fp16`` with each library's own tools where they fit, writes the result beside
it (atomically), and records in the manifest (``quantization``; ``quantization.json`` for a run)
what was done and what it cost: model bytes and their ratio to the source, and, streaming held-out
text through the source and the quantized model on the same runtime, the top-1/top-3 accuracy of
both, how often their top-1 (and top-3 set) agree and the largest absolute difference of any
output probability at any position.

What each target gets, and why:

- **ONNX** (ONNX Runtime). Our exporter writes ``Gemm`` nodes; ONNX Runtime's dynamic quantizer
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
- **Core ML** (``coremltools.optimize.coreml``; checked with the NumPy MIL evaluator, Core ML
  itself runs only on macOS). ``int8``: ``linear_quantize_weights``, symmetric per output channel
  (``constexpr_affine_dequantize``, iOS 16). ``int4``: for an iOS 18 bundle (Core ML states),
  ``linear_quantize_weights`` int4 per block of 32 (``constexpr_blockwise_shift_scale``); for an
  iOS 15 bundle, which cannot hold per-block ops, ``palettize_weights`` with a uniform 16-entry
  table per tensor (``constexpr_lut_to_dense``, iOS 16; k-means would need scikit-learn).
  ``fp16``: the cells computed in fp16 as ``export --precision fp16`` does, and the head's weight
  stored fp16 behind a ``constexpr_cast`` so the logits, softmax and top-k stay fp32 (iOS 16).
  Tensors under coremltools' ``weight_threshold`` (2,048 elements) stay as they are, which keeps
  the small embedding table, whose ``<pad>`` row is all zeros, out of per-channel scaling.
  Any compression raises the minimum OS to at least iOS 16; the manifest says so.
- **MLX** (run directories). ``mlx.nn.quantize`` of the output head (``nn.Linear``; the embedding
  and the cells hold raw arrays MLX does not quantize), affine, groups of 64 (32 when the hidden
  size needs it), 8 or 4 bits. The run directory gets ``quantization.json``, which
  ``edge_rnn.model.load`` reads to rebuild the quantized modules before loading the weights.

The check streams text labelled with the bundle's own vocabulary: ``eval_text`` if given, else the
source run's test split when the manifest names a run directory that still has it (a run directory
is its own source), else the first ~20,000 characters of ``demo_corpus(seed=12345)``. Accuracy
follows ``edge_rnn.evaluate``: argmax over all outputs at every non-pad position, ``<unk>``
targets count as misses.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edge_rnn.data import Dataset, demo_corpus, encode_autocomplete, encode_charlm, load_corpus
from edge_rnn.export.bundle import MANIFEST, VOCAB, read_manifest, write_manifest
from edge_rnn.io import EdgeRNNError, atomic_dir, quiet_logs
from edge_rnn.vocab import PAD, UNK, Vocab

TARGETS = ("int8", "int4", "fp16")
EVAL_CHARS = 20_000
DEMO_SEED, DEMO_SENTENCES = 12_345, 2_000  # 2,000 demo sentences are ~100k characters
BLOCK = 32  # int4 block size (ONNX MatMulNBits, Core ML per-block)
MLX_GROUPS = (64, 32)  # nn.quantize group sizes, preferred first
STEP_BATCH = 256  # observations streamed in parallel through a step graph
MLX_BATCH = 16  # observations per MLX forward (B x T x V logits in memory)
NATIVE_RNN_OPS = ("GRU", "LSTM", "RNN")
LISTED_ELEMENTS = 1024  # tensors smaller than this are left out of the manifest's tensor lists


# ---- the entry point -----------------------------------------------------------------------------

@dataclass
class Source:
    """What is being quantized: an ONNX or Core ML bundle, or an MLX run directory."""

    kind: str  # "onnx" | "coreml" | "mlx"
    path: Path
    manifest: dict | None  # bundles only


def quantize(path: Path, to: str, out: Path | None = None, force: bool = False,
             eval_text: Path | None = None, max_chars: int = EVAL_CHARS) -> tuple[Path, dict]:
    """Quantize the bundle or run directory ``path`` to ``to`` (int8, int4, fp16) into ``out``
    (default ``PATH-TO``), check it against the source, and return ``(out, record)``; the record
    is also stored in the manifest (``quantization``) or in a run's ``quantization.json``."""
    if to not in TARGETS:
        raise EdgeRNNError(f"unknown quantization target {to!r}; choose one of: {', '.join(TARGETS)}")
    source = open_source(Path(path))
    out = Path(out) if out is not None else default_out(source.path, to)
    if out.resolve() == source.path.resolve():
        raise EdgeRNNError(f"--out {out} is the source itself; choose another directory")
    with atomic_dir(out, force=force) as tmp:
        record = QUANTIZERS[source.kind](source, to, tmp)
        record["check"] = check(source, tmp, eval_text, max_chars)
        _finish(source, tmp, record)
    return out, record


def default_out(path: Path, to: str) -> Path:
    """``bundles/x`` -> ``bundles/x-int8`` (absolute, so ``.`` works too)."""
    path = Path(path).resolve()
    return path.with_name(f"{path.name}-{to}")


def open_source(path: Path) -> Source:
    """Classify ``path`` (a bundle has manifest.json, a run config.json); refuse quantized ones."""
    if (path / MANIFEST).is_file():
        manifest = read_manifest(path)
        if "quantization" in manifest:
            raise EdgeRNNError(f"{path} is already quantized ({manifest['quantization'].get('to')}); "
                               "quantize the fp32 bundle it came from")
        if manifest.get("target") not in ("onnx", "coreml"):
            raise EdgeRNNError(f"{path}: unknown bundle target {manifest.get('target')!r}")
        return Source(manifest["target"], path, manifest)
    if (path / "config.json").is_file():
        from edge_rnn.model import QUANTIZATION

        if (path / QUANTIZATION).is_file():
            raise EdgeRNNError(f"{path} is already quantized; quantize the fp32 run it came from")
        return Source("mlx", path, None)
    raise EdgeRNNError(f"{path} is neither a bundle (manifest.json) nor a run directory (config.json)")


def _finish(source: Source, tmp: Path, record: dict) -> None:
    """Sizes, then the manifest (bundles, with fresh sha256s) or quantization.json (runs)."""
    record["size"] = _size(model_bytes(source.path, source.kind), model_bytes(tmp, source.kind))
    if source.kind == "mlx":
        from edge_rnn.model import QUANTIZATION

        (tmp / QUANTIZATION).write_text(json.dumps(record, indent=2))
        return
    manifest = dict(source.manifest)
    manifest.pop("files", None)
    manifest["export"] = {**manifest["export"], **record.pop("export", {})}
    manifest["quantization"] = record
    write_manifest(tmp, manifest)


def model_bytes(path: Path, kind: str) -> dict[str, int]:
    """Bytes of each model file (weights and graph; not vocab.json, manifest.json, logs)."""
    path = Path(path)
    if kind == "mlx":
        from edge_rnn.model import WEIGHTS

        return {WEIGHTS: (path / WEIGHTS).stat().st_size}
    return {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, VOCAB)}


def _size(source: dict[str, int], quantized: dict[str, int]) -> dict:
    total, q_total = sum(source.values()), sum(quantized.values())
    return {"source_bytes": total, "bytes": q_total, "ratio": q_total / total, "files": quantized}


# ---- ONNX ----------------------------------------------------------------------------------------

def quantize_onnx(source: Source, to: str, tmp: Path) -> dict:
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


# ---- Core ML -------------------------------------------------------------------------------------

def quantize_coreml(source: Source, to: str, tmp: Path) -> dict:
    """Compress ``model.mlpackage`` with coremltools; record the method and the new minimum OS."""
    import coremltools as ct

    from edge_rnn.export.coreml import MODEL_FILE

    export = source.manifest["export"]
    ios18 = export.get("minimum_deployment_target") == "iOS18"
    mlmodel = _load_mlmodel(source.path / MODEL_FILE)
    with quiet_logs():
        compressed, method = COREML_METHODS[to](mlmodel, ios18)
    compressed.user_defined_metadata["weights"] = to
    compressed.save(str(tmp / MODEL_FILE))
    shutil.copy2(source.path / VOCAB, tmp / VOCAB)
    target = "iOS18" if ios18 else "iOS16"
    spec_version = compressed.get_spec().specificationVersion
    return {"to": to, "source_precision": export.get("precision", "fp32"),
            "tool": f"coremltools {ct.__version__}", **method,
            "minimum_deployment_target": target,
            "tensors": _coreml_tensor_report(tmp / MODEL_FILE),
            "export": {"minimum_deployment_target": target, "specification_version": spec_version,
                       "precision": "fp16" if to == "fp16" else export.get("precision", "fp32")}}


def _load_mlmodel(path: Path):
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True)


def _coreml_int8(mlmodel, ios18: bool):
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel"))
    return cto.linear_quantize_weights(mlmodel, config), {
        "method": "coremltools.optimize.coreml.linear_quantize_weights", "dtype": "int8",
        "granularity": "symmetric, per output channel", "weight_threshold": 2048}


def _coreml_int4(mlmodel, ios18: bool):
    import coremltools.optimize.coreml as cto

    if ios18:
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=BLOCK))
        return cto.linear_quantize_weights(mlmodel, config), {
            "method": "coremltools.optimize.coreml.linear_quantize_weights", "dtype": "int4",
            "granularity": f"symmetric, blocks of {BLOCK} along the input axis", "weight_threshold": 2048}
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="uniform", nbits=4))
    return cto.palettize_weights(mlmodel, config), {
        "method": "coremltools.optimize.coreml.palettize_weights (mode uniform)", "dtype": "4-bit palette",
        "granularity": "one uniform 16-entry table per tensor (an iOS 15 bundle cannot take the "
                       "iOS 18 per-block int4; export with --coreml-state mlstate for that)",
        "weight_threshold": 2048}


def _coreml_fp16(mlmodel, ios18: bool):
    """Cells in fp16 (as ``export --precision fp16``); the head's weight fp16 behind a
    ``constexpr_cast`` so the logits, softmax and top-k stay fp32 but the file halves."""
    import coremltools as ct
    from coremltools.models.utils import _apply_graph_pass

    from edge_rnn.export.coreml import HEAD

    prog = _apply_graph_pass(mlmodel, _head_weights_pass(), return_pymil_prog=True)
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::add_int16_cast"])  # 16-bit top-k ids wrap above 65,535 words
    compressed = ct.convert(prog, convert_to="mlprogram", pass_pipeline=pipeline, skip_model_load=True,
                            minimum_deployment_target=ct.target.iOS18 if ios18 else ct.target.iOS16,
                            compute_precision=ct.transform.FP16ComputePrecision(
                                op_selector=lambda op: not op.name.startswith(HEAD)))
    _copy_description(mlmodel, compressed)
    return compressed, {"method": "coremltools FP16ComputePrecision (head excluded) + constexpr_cast "
                                  "of the head weight", "dtype": "float16",
                        "granularity": "every weight; cells compute in fp16, the head in fp32"}


def _head_weights_pass():
    """A coremltools graph pass (built lazily: coremltools loads only on the Core ML path)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass

    from edge_rnn.export.coreml import HEAD

    class HeadWeightsFP16(AbstractGraphPass):
        """Each fp32 const weight of a ``head_*`` linear becomes ``constexpr_cast(fp16 -> fp32)``."""

        def apply(self, prog):
            for func in prog.functions.values():
                for op in list(func.operations):
                    if op.op_type == "linear" and op.name.startswith(HEAD) and op.weight.val is not None:
                        self._cast(func, op)

        @staticmethod
        def _cast(func, op) -> None:
            weight = op.weight
            with func:
                fp16 = mb.constexpr_cast(source_val=weight.val.astype(np.float16), output_dtype="fp32",
                                         before_op=op, name=f"{op.name}_weight_fp16")
            op.enclosing_block.replace_uses_of_var_after_op(anchor_op=fp16.op, old_var=weight,
                                                            new_var=fp16, no_check_var_types=True)

    return HeadWeightsFP16()


def _copy_description(source, target) -> None:
    """``ct.convert`` of a reloaded program forgets the descriptions an Xcode user sees and the
    metadata an app reads: copy them from the source model."""
    spec = source.get_spec().description
    for name, text in ((f.name, f.shortDescription) for f in spec.input):
        if name in target.input_description:
            target.input_description[name] = text
    for name, text in ((f.name, f.shortDescription) for f in spec.output):
        if name in target.output_description:
            target.output_description[name] = text
    meta = spec.metadata
    target.short_description, target.author, target.version = meta.shortDescription, meta.author, meta.versionString
    target.user_defined_metadata.update(dict(meta.userDefined))
    target.user_defined_metadata["precision"] = "fp16"


def _coreml_tensor_report(package: Path) -> dict:
    """Each weight of the saved program: how it is stored (op type) and its shape."""
    from edge_rnn.export.mil_eval import MILProgram

    program, report = MILProgram.load(package), {"compressed": [], "kept": []}
    for op in program.ops:
        if not op.type.startswith("const"):
            continue
        name, declared = op.outputs[0]
        if declared is None or np.prod(declared.shape) < LISTED_ELEMENTS:
            continue
        entry = {"name": name, "shape": list(declared.shape), "stored_as": op.type}
        if op.type == "const":  # stored as it is computed: its dtype says how
            entry["dtype"] = declared.dtype.lower()
        report["kept" if op.type == "const" else "compressed"].append(entry)
    return report


COREML_METHODS: dict[str, Callable] = {"int8": _coreml_int8, "int4": _coreml_int4, "fp16": _coreml_fp16}


# ---- MLX run directories -------------------------------------------------------------------------

def quantize_mlx(source: Source, to: str, tmp: Path) -> dict:
    """``nn.quantize`` the run's head into a new run directory that ``model.load`` restores."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from edge_rnn.model import QUANTIZATION, WEIGHTS, load

    if to == "fp16":
        raise EdgeRNNError("fp16 is for bundles; quantize a run directory to int8 or int4")
    model, _ = load(source.path)
    bits, group = (8 if to == "int8" else 4), _mlx_group_size(model.config.units)
    modules = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    nn.quantize(model, group_size=group, bits=bits, class_predicate=lambda name, _: name in modules)
    for item in source.path.iterdir():  # config, vocab, train settings, metrics; not checkpoints
        if item.is_file() and item.name != WEIGHTS:
            shutil.copy2(item, tmp / item.name)
    mx.save_safetensors(str(tmp / WEIGHTS), dict(tree_flatten(model.parameters())))
    record = {"to": to, "source_precision": "fp32", "tool": f"mlx {mx.__version__}",
              "method": "mlx.nn.quantize (affine)",
              "dtype": to, "bits": bits, "group_size": group, "granularity": f"groups of {group} inputs",
              "modules": modules, "kept_fp32": ["embedding", "layers (recurrent cells)"]}
    (tmp / QUANTIZATION).write_text(json.dumps(record, indent=2))  # load() needs it for the check
    return record


def _mlx_group_size(units: int) -> int:
    for group in MLX_GROUPS:
        if units % group == 0:
            return group
    raise EdgeRNNError(f"hidden size {units} is not a multiple of {' or '.join(map(str, MLX_GROUPS))}: "
                       "MLX cannot quantize the head in groups")


QUANTIZERS: dict[str, Callable[[Source, str, Path], dict]] = {
    "onnx": quantize_onnx, "coreml": quantize_coreml, "mlx": quantize_mlx}


# ---- the check: source vs quantized on held-out text ---------------------------------------------

@dataclass
class Tally:
    """Running comparison of two models' output distributions at the same positions."""

    positions: int = 0
    hits: dict = field(default_factory=lambda: {"source": [0, 0], "quantized": [0, 0]})  # top-1, top-3
    agree1: int = 0
    agree3: int = 0
    max_abs_dprob: float = 0.0

    def add(self, p_src: np.ndarray, p_q: np.ndarray, targets: np.ndarray, scored: np.ndarray) -> None:
        """``p_*`` (n, V) probabilities, ``targets`` (n,), ``scored``: targets that can be hit."""
        self.positions += len(targets)
        for key, p in (("source", p_src), ("quantized", p_q)):
            rank = (p > p[np.arange(len(p)), targets][:, None]).sum(axis=1)
            self.hits[key][0] += int(np.sum(scored & (rank < 1)))
            self.hits[key][1] += int(np.sum(scored & (rank < 3)))
        self.agree1 += int(np.sum(p_src.argmax(axis=1) == p_q.argmax(axis=1)))
        self.agree3 += int(np.sum(np.all(_top3(p_src) == _top3(p_q), axis=1)))
        self.max_abs_dprob = max(self.max_abs_dprob, float(np.abs(p_src - p_q).max(initial=0.0)))

    def summary(self) -> dict:
        n = max(self.positions, 1)
        return {"positions": self.positions,
                "source": {"top1": self.hits["source"][0] / n, "top3": self.hits["source"][1] / n},
                "quantized": {"top1": self.hits["quantized"][0] / n, "top3": self.hits["quantized"][1] / n},
                "top1_agreement": self.agree1 / n, "top3_agreement": self.agree3 / n,
                "max_abs_dprob": self.max_abs_dprob}


def _top3(p: np.ndarray) -> np.ndarray:
    k = min(3, p.shape[1])
    return np.sort(np.argpartition(-p, k - 1, axis=1)[:, :k], axis=1)


def check(source: Source, quantized: Path, eval_text: Path | None = None,
          max_chars: int = EVAL_CHARS) -> dict:
    """Stream held-out text through the source and the quantized model on the same runtime."""
    task, vocab = _task_and_vocab(source)
    data, text = eval_data(source, task, vocab, eval_text, max_chars)
    runner, runtime = RUNNERS[source.kind]
    tally = Tally()
    scored_ok = (lambda t: t != UNK) if task == "autocomplete" else (lambda t: np.ones_like(t, bool))
    chunks = (runner(path, data, source.manifest) for path in (source.path, quantized))
    for (p_src, targets), (p_q, _) in zip(*chunks):
        tally.add(p_src, p_q, targets, scored_ok(targets))
    return {"text": text, "chars": data.n_chars(), "runtime": runtime,
            "accuracy": "argmax over all outputs at every non-pad position; <unk> targets are misses",
            **tally.summary()}


def _task_and_vocab(source: Source) -> tuple[str, Vocab]:
    if source.kind == "mlx":
        from edge_rnn.model import load_config

        config = load_config(source.path)
        path = source.path / VOCAB
        return config.task, Vocab.load(path) if path.is_file() else Vocab.from_counts([])
    words = json.loads((source.path / VOCAB).read_text())["words"]
    return source.manifest["model"]["task"], Vocab(words)


def eval_data(source: Source, task: str, vocab: Vocab, eval_text: Path | None,
              max_chars: int) -> tuple[Dataset, str]:
    """The held-out observations (at most ``max_chars`` characters) and where they came from."""
    if eval_text is not None:
        text, where = load_corpus(str(eval_text)), str(eval_text)
    else:
        run_dir = source.path if source.kind == "mlx" else _recorded_run(source.manifest)
        test = _run_test_split(run_dir, vocab) if run_dir is not None else None
        if test is not None:
            return _first_chars(test, max_chars), f"test split of {run_dir}, first ~{max_chars:,} characters"
        text = demo_corpus(n_sentences=DEMO_SENTENCES, seed=DEMO_SEED)
        where = f"edge_rnn.data.demo_corpus(n_sentences={DEMO_SENTENCES}, seed={DEMO_SEED})"
    data = encode_autocomplete(text, vocab) if task == "autocomplete" else encode_charlm(text)
    if len(data) == 0:
        raise EdgeRNNError(f"no usable text to check the quantized model on in {where}")
    return _first_chars(data, max_chars), f"{where}, first ~{max_chars:,} characters"


def _recorded_run(manifest: dict) -> Path | None:
    path = (manifest.get("source") or {}).get("run_dir")
    return Path(path) if path and Path(path).is_dir() else None


def _run_test_split(run_dir: Path, vocab: Vocab) -> Dataset | None:
    """The run's test split, if its corpus is at hand (never a download) and gives the same vocab."""
    from edge_rnn.data import cache_dir
    from edge_rnn.evaluate import run_splits
    from edge_rnn.model import TRAIN

    try:
        corpus = json.loads((run_dir / TRAIN).read_text())["corpus"]
        if corpus == "text8" and not (cache_dir() / "text8.zip").is_file():
            return None
        splits = run_splits(run_dir, None)
    except (OSError, KeyError, json.JSONDecodeError, EdgeRNNError):
        return None
    if splits.vocab is not None and splits.vocab.words != vocab.words:
        return None  # e.g. a bundle whose vocabulary was reordered: its labels differ
    return splits.test


def _first_chars(data: Dataset, max_chars: int) -> Dataset:
    """The first observations, in text order, holding at most ``max_chars`` characters (>= 1)."""
    keep = max(1, int(np.searchsorted(np.cumsum(data.lengths), max_chars, side="right")))
    return Dataset(data.chars, data.targets, data.starts[:keep], data.lengths[:keep])


# -- runners: each yields (probabilities at the scored positions, their targets) per chunk, in the
#    same order for the source and the quantized model

Chunks = Iterator[tuple[np.ndarray, np.ndarray]]


def _stream(data: Dataset, batch: int, step: Callable[[np.ndarray, Any], tuple[np.ndarray, Any]],
            start: Callable[[int], Any]) -> Chunks:
    """Feed ``batch`` observations at a time, one character per call, through ``step``; yield the
    probabilities of the rows still inside their observation."""
    for first in range(0, len(data), batch):
        chars, targets = data.batch(np.arange(first, min(first + batch, len(data))))
        state = start(len(chars))
        for t in range(chars.shape[1]):
            probs, state = step(chars[:, t], state)
            live = targets[:, t] != PAD
            yield np.asarray(probs, np.float32)[live], targets[live, t]


def onnx_chunks(bundle: Path, data: Dataset, manifest: dict) -> Chunks:
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

    yield from _stream(data, STEP_BATCH, step,
                       lambda b: [np.zeros((b, units), np.float32) for _ in states])


def _range_feed(session, manifest: dict) -> dict:
    """A prefix-range head (``range`` input) computes the full head for ``[0, V)``."""
    from edge_rnn.export.bundle import RANGE_INPUT

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


def coreml_chunks(bundle: Path, data: Dataset, manifest: dict) -> Chunks:
    """The saved program in the NumPy MIL evaluator, many observations per call (io or states)."""
    from edge_rnn.export.coreml import HEAD, MODEL_FILE
    from edge_rnn.export.mil_eval import MILProgram

    program = MILProgram.load(bundle / MODEL_FILE)
    probs = HEAD + "softmax"
    names = [n for n in program.inputs if n != "char"]

    def start(b: int):
        if program.states:
            return program.make_state(batch=b)
        return {n: np.zeros((b, *program.inputs[n].shape[1:]), np.float32) for n in names}

    def step(chars, state):
        if program.states:
            out = program.predict({"char": chars}, state, batch=True, extra_outputs=(probs,))
            return out[probs], state
        out = program.predict({"char": chars, **state}, batch=True, extra_outputs=(probs,))
        return out[probs], {n: out[f"{n}_next"] for n in names}

    yield from _stream(data, STEP_BATCH, step, start)


def mlx_chunks(run_dir: Path, data: Dataset, manifest: None = None) -> Chunks:
    """Whole observations through the MLX model (a padded batch computes the same per position)."""
    import mlx.core as mx

    from edge_rnn.model import load

    model, _ = load(run_dir)
    for ids, targets in data.batches(MLX_BATCH, shuffle=False):
        logits, _ = model(mx.array(ids))
        probs = mx.softmax(logits.astype(mx.float32), axis=-1)
        live = targets != PAD
        yield np.array(probs)[live], targets[live]


RUNNERS: dict[str, tuple[Callable[[Path, Dataset, Any], Chunks], str]] = {
    "onnx": (onnx_chunks, "ONNX Runtime (CPU), step graph, batched streams"),
    "coreml": (coreml_chunks, "edge_rnn.export.mil_eval (NumPy MIL evaluator), batched streams"),
    "mlx": (mlx_chunks, "MLX, whole observations"),
}


def summary_row(record: dict) -> dict:
    """The numbers a table shows, flat."""
    check_, size = record["check"], record["size"]
    return {"to": record["to"], "dtype": record["dtype"], "bytes": size["bytes"],
            "source_bytes": size["source_bytes"], "ratio": size["ratio"],
            "top1_source": check_["source"]["top1"], "top1": check_["quantized"]["top1"],
            "top3_source": check_["source"]["top3"], "top3": check_["quantized"]["top3"],
            "agreement": check_["top1_agreement"], "max_abs_dprob": check_["max_abs_dprob"]}


__all__ = ["TARGETS", "quantize", "default_out", "open_source", "check", "eval_data", "model_bytes",
           "gemm_as_matmul", "int8_weight_only", "summary_row"]
