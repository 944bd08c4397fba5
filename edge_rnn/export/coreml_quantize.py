"""Quantization of Core ML bundles: the coremltools side of ``edge-rnn quantize``.

(``coremltools.optimize.coreml``; checked with the NumPy MIL evaluator, Core ML
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

A prefix-range head bundle (``export --format coreml --prefix-head``) keeps its head weight as the
one ``(V, H)`` const that ``slice_by_index`` reads (``edge_rnn.export.coreml._range_head``): each
method above stores it compressed, the ``constexpr_*`` op feeding the slice, with the same axes as
the full head's ``linear`` weight (per word for int8, blocks of 32 along H for int4; coremltools
picks axis 0 as the output channel of any op but matmul/conv), so its rows are the full-head
twin's rows, reordered. The 1-D bias stays fp32 in both (coremltools does not compress 1-D
tensors). The check feeds the range ``[0, V)``: the softmax over every output.

The accuracy check (``edge_rnn.quantize_check``) runs both saved programs in the NumPy MIL
evaluator through ``chunks`` (Core ML itself runs only on macOS). coremltools is imported inside
the functions: it is slow and noisy to import on Linux.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from edge_rnn.data import Dataset
from edge_rnn.export.contract import RANGE_INPUT, VOCAB
from edge_rnn.io import quiet_logs
from edge_rnn.quantize_check import LISTED_ELEMENTS, STEP_BATCH, Chunks, Source, stream

BLOCK = 32  # int4 block size (per-block linear quantization, iOS 18)
RUNTIME = "edge_rnn.export.mil_eval (NumPy MIL evaluator), batched streams"


def quantize(source: Source, to: str, tmp: Path) -> dict:
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
    fragment = {"minimum_deployment_target": target, "specification_version": spec_version,
                "precision": "fp16" if to == "fp16" else export.get("precision", "fp32")}
    if export.get("prefix_head"):
        fragment["prefix_head"] = {**export["prefix_head"], "rows_stored": f"{to}: {method['dtype']} ({method['method']}), "
                                   "the constexpr op feeding slice_by_index; bias fp32"}
    return {"to": to, "source_precision": export.get("precision", "fp32"),
            "tool": f"coremltools {ct.__version__}", **method,
            "minimum_deployment_target": target,
            "tensors": _coreml_tensor_report(tmp / MODEL_FILE),
            "export": fragment}


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
        """Each fp32 const weight matrix of the head becomes ``constexpr_cast(fp16 -> fp32)``: the
        ``weight`` of a ``head_*`` linear (full head), the ``x`` of a ``head_*`` slice_by_index
        (the prefix-range head's rows; its 1-D bias stays fp32, as the full head's does)."""

        WEIGHT_INPUTS = {"linear": "weight", "slice_by_index": "x"}

        def apply(self, prog):
            for func in prog.functions.values():
                for op in list(func.operations):
                    name = self.WEIGHT_INPUTS.get(op.op_type)
                    weight = getattr(op, name) if name and op.name.startswith(HEAD) else None
                    if weight is not None and weight.val is not None and weight.rank == 2:
                        self._cast(func, op, weight)

        @staticmethod
        def _cast(func, op, weight) -> None:
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


# ---- the check's runner -------------------------------------------------------------------------

def chunks(bundle: Path, data: Dataset, manifest: dict) -> Chunks:
    """The saved program in the NumPy MIL evaluator, many observations per call (io or states)."""
    from edge_rnn.export.coreml import HEAD, MODEL_FILE
    from edge_rnn.export.mil_eval import MILProgram

    program = MILProgram.load(bundle / MODEL_FILE)
    probs = HEAD + "softmax"
    n_outputs = manifest["model"]["n_outputs"]
    # a prefix-range head ranks the range [0, V): its softmax is the full one, then top_k padding columns
    extra = {RANGE_INPUT: np.array([0, n_outputs], np.int32)} if RANGE_INPUT in program.inputs else {}
    names = [n for n in program.inputs if n not in ("char", RANGE_INPUT)]

    def start(b: int):
        if program.states:
            return program.make_state(batch=b)
        return {n: np.zeros((b, *program.inputs[n].shape[1:]), np.float32) for n in names}

    def step(chars, state):
        if program.states:
            out = program.predict({"char": chars, **extra}, state, batch=True, extra_outputs=(probs,))
            return out[probs][:, :n_outputs], state
        out = program.predict({"char": chars, **state, **extra}, batch=True, extra_outputs=(probs,))
        return out[probs][:, :n_outputs], {n: out[f"{n}_next"] for n in names}

    yield from stream(data, STEP_BATCH, step, start)

