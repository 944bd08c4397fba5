"""Core ML export: the model as a per-keystroke step function, written op by op in MIL.

One call of the exported program is one keystroke: it takes the new character (and, in the "io"
form, the recurrent state), runs the embedding, every layer's cell once and the output head, and
returns the top-k word ids and probabilities (and the next state). Two forms:

- ``state="io"``: every state tensor is an input ``l{l}_h`` … and an output ``l{l}_h_next`` …;
  the app carries them between calls. iOS 15+ (``mlprogram``, specification version 6).
- ``state="mlstate"``: the state lives in Core ML states (iOS 18+, specification version 9); the
  app calls ``model.makeState()`` once per text field and ``prediction(from:using:)`` per key.
  State buffers are fp16 only (Core ML's rule). With ``precision="fp32"`` the program casts each
  state to fp32 after ``read_state`` and back to fp16 before ``coreml_update_state``, so the only
  fp16 effect is the rounding of the stored state; with ``precision="fp16"`` it computes in fp16
  directly on the state.

The cells are written from ``linear``/``sigmoid``/``tanh``/``mul``/``add``/``sub``/``split``, next to
the equations of ``edge_rnn.cells`` and with the same names: ``mb.lstm`` orders its gates
``[i, f, o, g]`` and ``mb.gru`` applies the reset gate before the recurrent matmul (not our GRU),
so the fused ops would silently compute something else.

Precision ``fp16`` runs the cells in fp16 but keeps the output head (linear), softmax, log-softmax
and top-k in fp32: logits over thousands of words differ by small amounts and fp16's 11-bit
mantissa would reorder close candidates and flush small probabilities to zero. The pass
``common::add_int16_cast`` (fp16 pipeline, iOS 17+) narrows ``topk`` indices to 16 bits, which
wraps word ids above 65,535; it is always removed from the pipeline here.

Prefix-range head (``prefix_head=True``, opt-in; the Core ML twin of ``edge_rnn.export.onnx``'s,
read that module's docstring first). The output ids are ordered alphabetically
(``edge_rnn.export.contract.prefix_order``; vocab.json in that order), the head weight is stored
``(V, H)`` in that order, and the program takes one more input, ``range`` int32 ``[2]`` =
``[start, end)`` (after the states): the app's bisection of the typed partial word, ``[2, V)`` at a
word boundary. Then

    rows, bias = slice_by_index(W, [start, 0], [end, H]), slice_by_index(b, start, end)
    logits = matmul(h, rows^T) + bias                    # [1, end - start]: a dynamic shape
    padded = pad(logits, top_k columns of PAD_LOGIT)     # topk's k must be a constant in MIL
    top_probs, idx = topk(softmax(padded), top_k);  top_ids = start + idx
    top_probs = select(top_ids < end, top_probs, 0)

MIL's ``topk`` takes ``k`` only as a constant (every opset up to iOS 18), so unlike ONNX the
outputs always hold ``top_k`` entries: the first ``min(top_k, end - start)`` are the range's best,
the rest are padding, marked by ``top_ids >= end`` and ``top_probs == 0`` (an empty range gives
``top_k`` padding entries; the state still advances). The padding columns' logit ``PAD_LOGIT``
makes their softmax weight exactly 0 beside any real logit, so ``top_probs`` are the softmax over
the range alone, P(word | word starts with the prefix), in the full model's order. One caveat: a
real word whose range probability underflows to 0 in float32 (below ~1e-45) ties with the
padding and may be ordered after it; an app drops every entry with ``top_ids >= end`` anyway.
The recurrent update never reads ``range``. ``log_probs`` cannot be combined with it. The head's
shapes depend on the range, so Core ML cannot run it on the Neural Engine with static shapes;
what it costs on a device is not measured here (Linux cannot run Core ML). ``coreml_quantize``
stores the rows compressed, feeding the slice (``constexpr_*`` -> ``slice_by_index``).

Only the Core ML paths import this module (``bundle.export_bundle`` and ``coreml_quantize`` import it
where they need it): coremltools costs ~0.8 s and prints warnings on Linux at import, and
``edge-rnn --help`` and the ONNX paths must stay fast and quiet.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import coremltools as ct
import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program, types
from coremltools.proto import FeatureTypes_pb2

from edge_rnn.export.contract import RANGE_INPUT, checked_prefix_order, state_names
from edge_rnn.io import EdgeRNNError

if TYPE_CHECKING:  # model.py imports MLX; the annotations need not
    from edge_rnn.model import ModelConfig, RNNModel

STATE_FORMS = ("io", "mlstate")
PRECISIONS = ("fp32", "fp16")
MODEL_FILE = "model.mlpackage"
HEAD = "head_"  # name prefix of the ops kept in fp32 under fp16 precision
ANE_MULTIPLE = 32  # Neural Engine state dims (coremltools #2631)
# Prefix-range head: the logit of the top_k padding columns. exp(PAD_LOGIT - m) is exactly 0 in
# float32 for any real logit m, and PAD_LOGIT - m stays finite (no -inf - -inf = NaN).
PAD_LOGIT = -1e30

Params = dict[str, np.ndarray]


def _numpy_params(model: RNNModel) -> Params:
    """Every parameter as float32 NumPy, keyed like ``tree_flatten`` (``layers.0.Wx``, ``head.weight``)."""
    from edge_rnn.model import numpy_parameters

    return numpy_parameters(model, np.float32)


def _layer_params(params: Params, layer: int) -> Params:
    prefix = f"layers.{layer}."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


# ---- cells in MIL, beside their equations --------------------------------------------------------


def _linear(x, W: np.ndarray, b: np.ndarray | None = None):
    """``x W + b`` with ``W`` stored ``(in, out)`` as in cells.py; ``mb.linear`` wants ``(out, in)``."""

    bias = np.zeros(W.shape[1], np.float32) if b is None else b
    return mb.linear(x=x, weight=np.ascontiguousarray(W.T), bias=bias)


def _gates(p: Params, x, h, n: int) -> list:
    """``x Wx + b + h Wh`` split into the cell's ``n`` gate blocks."""

    z = mb.add(x=_linear(x, p["Wx"], p["b"]), y=_linear(h, p["Wh"]))
    return list(mb.split(x=z, num_splits=n, axis=-1)) if n > 1 else [z]


def _rnn(p: Params, x, state: tuple) -> tuple:
    """``h = tanh(x Wx + h Wh + b)``"""

    (h,) = state
    (g,) = _gates(p, x, h, 1)
    h = mb.tanh(x=g)
    return (h,)


def _gru(p: Params, x, state: tuple) -> tuple:
    """Reset-after GRU::

        r = sigmoid(xr + hr);  z = sigmoid(xz + hz)
        n = tanh(xn + r * (hn + bhn))
        h = (1 - z) * n + z * h
    """

    (h,) = state
    xr, xz, xn = mb.split(x=_linear(x, p["Wx"], p["b"]), num_splits=3, axis=-1)
    hr, hz, hn = mb.split(x=_linear(h, p["Wh"]), num_splits=3, axis=-1)
    r = mb.sigmoid(x=mb.add(x=xr, y=hr))
    z = mb.sigmoid(x=mb.add(x=xz, y=hz))
    n = mb.tanh(x=mb.add(x=xn, y=mb.mul(x=r, y=mb.add(x=hn, y=p["bhn"]))))
    h = mb.add(x=mb.mul(x=mb.sub(x=np.float32(1.0), y=z), y=n), y=mb.mul(x=z, y=h))
    return (h,)


def _lstm(p: Params, x, state: tuple) -> tuple:
    """``c = sigmoid(f) * c + sigmoid(i) * tanh(g)``;  ``h = sigmoid(o) * tanh(c)``"""

    h, c = state
    i, f, g, o = _gates(p, x, h, 4)
    c = mb.add(x=mb.mul(x=mb.sigmoid(x=f), y=c), y=mb.mul(x=mb.sigmoid(x=i), y=mb.tanh(x=g)))
    h = mb.mul(x=mb.sigmoid(x=o), y=mb.tanh(x=c))
    return h, c


def _cifg(p: Params, x, state: tuple) -> tuple:
    """``i = sigmoid(i)``;  ``c = (1 - i) * c + i * tanh(g)``;  ``h = sigmoid(o) * tanh(c)``"""

    h, c = state
    i, g, o = _gates(p, x, h, 3)
    i = mb.sigmoid(x=i)
    c = mb.add(x=mb.mul(x=mb.sub(x=np.float32(1.0), y=i), y=c), y=mb.mul(x=i, y=mb.tanh(x=g)))
    h = mb.mul(x=mb.sigmoid(x=o), y=mb.tanh(x=c))
    return h, c


def _nlstm_level(levels: list[Params], d: int, x, h, cs: tuple) -> list:
    """Level ``d`` of a Nested LSTM; returns ``[h_d, c_d, c_{d+1}, ...]``::

        h~ = sigmoid(f) * c_d
        x~ = sigmoid(i) * g  (d = 0)   |   sigmoid(i) * tanh(g)  (d > 0)
        c_d = h~ + x~  (innermost)     |   level d+1 run on (x~, h~)
        h_d = sigmoid(o) * tanh(c_d)
    """

    i, f, g, o = _gates(levels[d], x, h, 4)
    h_inner = mb.mul(x=mb.sigmoid(x=f), y=cs[d])
    x_inner = mb.mul(x=mb.sigmoid(x=i), y=g if d == 0 else mb.tanh(x=g))
    if d == len(cs) - 1:
        deeper = [mb.add(x=h_inner, y=x_inner)]
    else:
        deeper = _nlstm_level(levels, d + 1, x_inner, h_inner, cs)
    c = deeper[0]
    return [mb.mul(x=mb.sigmoid(x=o), y=mb.tanh(x=c)), c, *deeper[1:]]


def _nlstm(p: Params, x, state: tuple) -> tuple:
    """Nested LSTM, state ``(h, c_0, ..., c_{D-1})``; the outer level is ``Wx/Wh/b``, inner ``inner.d``."""
    h, *cs = state
    levels = [p] + [{k: p[f"inner.{d}.{k}"] for k in ("Wx", "Wh", "b")} for d in range(len(cs) - 1)]
    return tuple(_nlstm_level(levels, 0, x, h, tuple(cs)))


CELL_GRAPHS: dict[str, Callable[[Params, Any, tuple], tuple]] = {
    "rnn": _rnn, "gru": _gru, "lstm": _lstm, "cifg": _cifg, "nlstm": _nlstm}


# ---- the step program --------------------------------------------------------------------------


def _bottleneck(params: Params, h):
    """``h P^T``, the bias-free projection of a ``head_dim`` model (``h`` otherwise), kept apart
    from the head so a keystroke reads ``H*D + V*D`` weights, not ``V*H``; named ``head_*``, so
    it stays fp32 with the head."""
    if "bottleneck.weight" not in params:
        return h
    return mb.linear(x=h, weight=params["bottleneck.weight"], name=HEAD + "bottleneck")


def _head(params: Params, h, top_k: int, with_log_probs: bool) -> list:
    """Logits -> softmax -> top-k (and log-softmax); every op named ``head_*`` so fp16 leaves it fp32."""

    W, b = params["head.weight"], params["head.bias"]  # nn.Linear: weight (V, H), as mb.linear wants
    logits = mb.linear(x=h, weight=W, bias=b, name=HEAD + "logits")
    probs = mb.softmax(x=logits, axis=-1, name=HEAD + "softmax")
    top_probs, top_ids = mb.topk(x=probs, k=top_k, axis=-1, ascending=False, name=HEAD + "topk")
    outputs = [_named(top_ids, "top_ids"), _named(top_probs, "top_probs")]
    if with_log_probs:  # z - logsumexp(z): no log(0) for words whose probability underflows
        lse = mb.reduce_log_sum_exp(x=logits, axes=[-1], keep_dims=True, name=HEAD + "logsumexp")
        outputs.append(_named(mb.sub(x=logits, y=lse, name=HEAD + "log_probs"), "log_probs"))
    return outputs


def _range_head(params: Params, h, top_k: int, order: np.ndarray, bounds) -> list:
    """The prefix-range head (module docstring): logits, softmax and top-k over rows ``range``.

    ``order`` maps exported ids to the model's (``prefix_order``); ``bounds`` is the ``range``
    input. The weight is stored once, ``(V, H)`` in that order, as the const that ``slice_by_index``
    reads (compression puts its ``constexpr_*`` there). ``matmul``, not ``linear``: MIL's ``linear``
    takes only a constant weight. Every op is named ``head_*`` so fp16 leaves it fp32.
    """
    W, b = params["head.weight"][order], params["head.bias"][order]  # (V, H), (V,)
    weight = mb.const(val=W, name=HEAD + "weight")
    start, end = mb.split(x=bounds, num_splits=2, axis=0, name=HEAD + "range")  # each [1]
    zero = np.zeros(1, np.int32)
    rows = mb.slice_by_index(x=weight, begin=mb.concat(values=[start, zero], axis=0, name=HEAD + "begin"),
                             end=mb.concat(values=[end, zero], axis=0, name=HEAD + "end"),
                             end_mask=[False, True], name=HEAD + "rows")
    bias = mb.slice_by_index(x=b, begin=start, end=end, name=HEAD + "bias_rows")
    logits = mb.add(x=mb.matmul(x=h, y=rows, transpose_y=True, name=HEAD + "matmul"), y=bias,
                    name=HEAD + "logits")
    padded = mb.pad(x=logits, pad=np.array([0, 0, 0, top_k], np.int32), mode="constant",
                    constant_val=np.float32(PAD_LOGIT), name=HEAD + "padded")
    probs = mb.softmax(x=padded, axis=-1, name=HEAD + "softmax")
    top_probs, idx = mb.topk(x=probs, k=top_k, axis=-1, ascending=False, name=HEAD + "topk")
    top_ids = mb.add(x=idx, y=start, name=HEAD + "ids")
    real = mb.less(x=top_ids, y=end, name=HEAD + "real")  # padding: ids >= end
    top_probs = mb.select(cond=real, a=top_probs, b=np.float32(0.0), name=HEAD + "top_probs")
    return [_named(top_ids, "top_ids"), _named(top_probs, "top_probs")]


def _named(var, name: str):
    var.name = name
    return var


def _embed(params: Params, char):
    """``table[char]`` with the constant zero row for ``<pad>`` (id 0) in front of the trained rows."""

    emb = params["embedding"]
    table = np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb])
    return mb.gather(x=table, indices=char, axis=0, name="embed")


def _read_states(state_vars: list, state: str) -> list:
    """io: the inputs as they are. mlstate: ``read_state`` and cast to fp32.

    The program is built in fp32 either way; under fp16 precision the pass that casts the cells to
    fp16 leaves ``cast(fp16->fp32)`` followed by ``cast(fp32->fp16)``, which ``cast_optimization``
    removes, so the fp16 program computes on the state buffer directly.
    """

    if state == "io":
        return list(state_vars)
    return [mb.cast(x=mb.read_state(input=s), dtype="fp32") for s in state_vars]


def _write_states(state_vars: list, new_values: list, names: list[str], state: str) -> list:
    """io: the next states become outputs ``<name>_next``. mlstate: ``coreml_update_state``."""

    if state == "io":
        return [_named(v, f"{n}_next") for v, n in zip(new_values, names)]
    for s, v in zip(state_vars, new_values):
        if v.dtype != types.fp16:
            v = mb.cast(x=v, dtype="fp16")
        mb.coreml_update_state(state=s, value=v)
    return []


def _build_program(model: RNNModel, top_k: int, state: str, with_log_probs: bool,
                   order: np.ndarray | None = None):
    """A fresh MIL program for one ``ct.convert`` (which mutates the program it is given);
    ``order``: the prefix-range head over outputs in that order, ``range`` the last input."""

    cfg, params = model.config, _numpy_params(model)
    names = state_names(cfg)
    H = cfg.units
    if state == "io":
        state_specs = [mb.TensorSpec((1, H), dtype=types.fp32) for _ in names]
    else:
        state_specs = [mb.StateTensorSpec((1, H), dtype=types.fp16) for _ in names]
    specs = {"char": mb.TensorSpec((1,), dtype=types.int32), **dict(zip(names, state_specs))}
    if order is not None:
        specs[RANGE_INPUT] = mb.TensorSpec((2,), dtype=types.int32)
    opset = ct.target.iOS15 if state == "io" else ct.target.iOS18
    with Function(specs, opset_version=opset) as func:
        state_vars = [func.inputs[n] for n in names]
        values = _read_states(state_vars, state)
        cell, n = CELL_GRAPHS[cfg.cell], len(names) // cfg.layers  # n: state tensors per layer
        x, new_values = _embed(params, func.inputs["char"]), []
        for layer in range(cfg.layers):
            layer_state = cell(_layer_params(params, layer), x, tuple(values[layer * n:(layer + 1) * n]))
            x = layer_state[0]  # h: the next layer's input, and the head's after the last layer
            new_values += layer_state
        h = _bottleneck(params, x)
        if order is None:
            outputs = _head(params, h, top_k, with_log_probs)
        else:
            outputs = _range_head(params, h, top_k, order, func.inputs[RANGE_INPUT])
        outputs += _write_states(state_vars, new_values, names, state)
        func.set_outputs(outputs)
    prog = Program()
    prog.add_function("main", func)
    return prog


# ---- conversion, metadata, saving ----------------------------------------------------------------


def _check_args(model: RNNModel, top_k: int, state: str, precision: str) -> None:
    if state not in STATE_FORMS:
        raise EdgeRNNError(f"unknown Core ML state form {state!r}; choose one of: {', '.join(STATE_FORMS)}")
    if precision not in PRECISIONS:
        raise EdgeRNNError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if not 1 <= top_k <= model.config.n_outputs:
        raise EdgeRNNError(f"top_k must be in 1..{model.config.n_outputs}, got {top_k}")
    if state == "mlstate" and model.config.units % ANE_MULTIPLE:
        warnings.warn(f"hidden size {model.config.units} is not a multiple of {ANE_MULTIPLE}: Core ML "
                      "states of such sizes are reported not to run on the Neural Engine "
                      "(coremltools #2631); the model will fall back to GPU/CPU", stacklevel=3)


def _convert(prog, state: str, precision: str):
    """``ct.convert`` the MIL program; fp16 leaves ``head_*`` ops in fp32 and never narrows top-k ids."""

    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::add_int16_cast"])  # 16-bit top-k ids wrap above 65,535 words
    if precision == "fp16":
        compute = ct.transform.FP16ComputePrecision(op_selector=lambda op: not op.name.startswith(HEAD))
    else:
        compute = ct.precision.FLOAT32
    target = ct.target.iOS15 if state == "io" else ct.target.iOS18
    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                      compute_precision=compute, pass_pipeline=pipeline, skip_model_load=True)


def _describe(mlmodel, config: ModelConfig, top_k: int, state: str, precision: str, names: list[str],
              prefix_head: bool = False) -> None:
    """Descriptions an Xcode user sees, and the JSON metadata an app reads to drive the model."""
    from edge_rnn import __version__

    mlmodel.short_description = (f"edge-rnn {config.cell} {config.layers}x{config.units} autocomplete "
                                 f"step: one character in, top-{top_k} words out")
    mlmodel.author = "edge-rnn"
    mlmodel.version = __version__
    mlmodel.input_description["char"] = "input symbol id: 0 <pad>, 1 space, 2-27 a-z"
    out = {"top_ids": f"the {top_k} most probable output ids, best first",
           "top_probs": "their probabilities (softmax over all outputs)",
           "log_probs": "log-softmax over all outputs"}
    if prefix_head:
        mlmodel.input_description[RANGE_INPUT] = ("[start, end) of the output ids to rank (the words "
                                                  "starting with the typed prefix); [2, V) at a word boundary")
        out["top_ids"] = (f"the {top_k} most probable ids of the range, best first; ids >= end are "
                          "padding (fewer than top_k words in the range)")
        out["top_probs"] = "their probabilities, softmax over the range only; 0 for padding"
    for n in names:
        if state == "io":
            mlmodel.input_description[n] = f"recurrent state {n} (zeros at the start of a text)"
            out[f"{n}_next"] = f"state {n} after this character: feed it back on the next call"
    for k, v in out.items():
        if k in mlmodel.output_description:
            mlmodel.output_description[k] = v
    for s in mlmodel._spec.description.state:  # coremltools has no public setter for states
        s.shortDescription = f"recurrent state {s.name} (fp16; zeros at the start of a text)"
    meta = {"cell": config.cell, "layers": config.layers, "units": config.units, "depth": config.depth,
            "embed_dim": config.embed_dim, "n_outputs": config.n_outputs, "task": config.task,
            "top_k": top_k, "state_form": state, "precision": precision, "state_names": names,
            "prefix_head": prefix_head}
    # strings as they are, numbers and lists as JSON (so ``json.loads`` reads every non-string value)
    mlmodel.user_defined_metadata.update({k: v if isinstance(v, str) else json.dumps(v)
                                          for k, v in meta.items()})


def _save(mlmodel, target: Path) -> None:
    """Save beside ``target`` and rename into place: a failed save never leaves half a package."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        mlmodel.save(str(staging / target.name))
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staging / target.name, target)
        shutil.rmtree(old, ignore_errors=True)  # kept (as .old) only if the swap itself failed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _io_entries(spec_features) -> list[dict]:
    """Name, dtype and shape of spec inputs/outputs/states, as the model description states them."""

    entries = []
    for f in spec_features:
        kind = f.type.WhichOneof("Type")
        array = f.type.stateType.arrayType if kind == "stateType" else f.type.multiArrayType
        dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower()
        entries.append({"name": f.name, "dtype": dtype, "shape": [int(d) for d in array.shape]})
    return entries


def export_coreml(model: RNNModel, out_dir: Path, top_k: int = 3, state: str = "io", precision: str = "fp32",
                  with_log_probs: bool = False, *, prefix_head: bool = False,
                  words: Sequence[str] | None = None) -> dict:
    """Write ``out_dir/model.mlpackage`` (one keystroke per call) and return its manifest fragment.

    ``state``: ``"io"`` (state tensors as inputs/outputs, iOS 15+) or ``"mlstate"`` (Core ML states,
    iOS 18+). ``precision``: ``"fp32"`` or ``"fp16"`` (cells in fp16; head, softmax, top-k in fp32).
    ``with_log_probs`` adds the full log-softmax output ``log_probs`` [1, V] (for evaluation; an app
    needs only the top-k).

    For ``"mlstate"``, a hidden size that is not a multiple of 32 only warns: the model is valid and
    runs on CPU/GPU, but Core ML states of such sizes are reported not to run on the Neural Engine
    (coremltools #2631), which is what a keyboard wants for latency and battery. It is a deployment
    concern, not an error, and small test models need not follow it.

    ``prefix_head`` needs ``words``, the output words in the model's id order; the exported ids
    are then ``prefix_order(words)`` (the caller writes the vocabulary in that order) and the
    program takes ``range`` (module docstring).
    """
    _check_args(model, top_k, state, precision)
    if prefix_head and words is None:
        raise EdgeRNNError("the prefix-range head needs the output words (to sort them)")
    order = checked_prefix_order(model.config, words if prefix_head else None, with_log_probs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prog = _build_program(model, top_k, state, with_log_probs, order)
    mlmodel = _convert(prog, state, precision)
    names = state_names(model.config)
    _describe(mlmodel, model.config, top_k, state, precision, names, prefix_head)
    _save(mlmodel, out_dir / MODEL_FILE)
    desc = mlmodel.get_spec().description
    return {
        "format": "coreml",
        "files": [MODEL_FILE],
        "model": MODEL_FILE,
        "inputs": _io_entries(desc.input),
        "outputs": _io_entries(desc.output),
        "states": _io_entries(desc.state),
        "state_form": state,
        "state_names": names,
        "minimum_deployment_target": "iOS15" if state == "io" else "iOS18",
        "specification_version": mlmodel.get_spec().specificationVersion,
        "precision": precision,
        "top_k": top_k,
        "prefix_head": _prefix_head_fragment(model.config, top_k) if prefix_head else False,
    }


def _prefix_head_fragment(config: ModelConfig, top_k: int) -> dict:
    """What an app must know to drive the prefix-range head (module docstring); the keys of
    ONNX's fragment, plus how the fixed-k outputs mark padding."""
    return {
        "input": RANGE_INPUT, "dtype": "int32", "shape": [2],
        "order": "alphabetical: ids 0 and 1 are <pad> and <unk>, then the words sorted (vocab.json)",
        "word_boundary_range": [2, config.n_outputs],
        "range_rule": "[bisect_left(words, p), bisect_left(words, p + '{')) + 2 over the sorted "
                      "words vocab.json[2:], p the typed part of the current word; empty p: every word",
        "top_probs": "softmax over the range only: P(word | word in range)",
        "top_k": f"always {top_k} entries (MIL's topk takes a constant k): the first "
                 "min(top_k, end - start) are the range's best, the rest padding",
        "padding": "entries with top_ids >= range[1] (end) are padding, their top_probs exactly 0; "
                   "an empty range gives only padding (the state still advances)",
        "rows": "slice_by_index of the head weight (V, H) by the range, then matmul: the head's "
                "shapes follow the range (dynamic); their cost on a device is not measured",
    }
