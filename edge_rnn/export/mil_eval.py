"""A NumPy evaluator for saved Core ML ML Programs: the only way to run an exported model on Linux.

Core ML's ``predict`` exists only on macOS. To check what ``export_coreml`` wrote, this module reads
the **saved** ``.mlpackage`` back — the program from ``model.mlmodel`` (a protobuf), the weights from
``weights/weight.bin`` byte by byte — and evaluates it op by op with NumPy.

Semantics, kept deliberately simple so that they are easy to check:

- every op computes in float32 from its inputs (fp16 inputs are widened exactly), then rounds its
  outputs to the dtype the saved program declares for them. An fp16 program is therefore rounded to
  fp16 after every op, as Core ML stores it, but each op's arithmetic (matmul accumulation,
  transcendental functions) is float32: this models "fp16 storage, fp32 accumulation", not the exact
  bits of any Apple backend (see docs/coreml-verification.md);
- integer outputs are cast to their declared type with NumPy's wrap-around, so a top-k whose indices
  were narrowed to uint16 returns the wrapped ids a device would return;
- the computed shape of every output must equal the shape the program declares;
- an op type without an implementation raises ``UnsupportedOpError``; nothing is ever skipped.

States (iOS 18) are a dict of name -> fp16 array that ``read_state``/``write_state`` read and update
in place, as ``MLState`` does between ``prediction(from:using:)`` calls.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_rnn.io import EdgeRNNError


class UnsupportedOpError(EdgeRNNError):
    """The program uses an op this evaluator does not implement."""


class MILFormatError(EdgeRNNError):
    """The package is not a readable ML Program (missing file, bad blob header, dtype mismatch)."""


# ---- dtypes ------------------------------------------------------------------------------------

NUMPY_DTYPES = {
    "BOOL": np.bool_, "FLOAT16": np.float16, "FLOAT32": np.float32, "FLOAT64": np.float64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT4": np.int8, "UINT1": np.uint8, "UINT2": np.uint8, "UINT3": np.uint8, "UINT4": np.uint8,
    "UINT6": np.uint8,
}
SUB_BYTE_BITS = {"INT4": 4, "UINT1": 1, "UINT2": 2, "UINT3": 3, "UINT4": 4, "UINT6": 6}

# MILBlob's BlobDataType (storage format v2). All but 5 (bfloat16) and 15 (uint32) were checked
# against files written by coremltools 9.0 (plain, palettised 1-8 bit, int4/int8 quantised).
BLOB_DTYPES = {1: "FLOAT16", 2: "FLOAT32", 3: "UINT8", 4: "INT8", 5: "BFLOAT16", 6: "INT16",
               7: "UINT16", 8: "INT4", 9: "UINT1", 10: "UINT2", 11: "UINT4", 12: "UINT3",
               13: "UINT6", 14: "INT32", 15: "UINT32"}
BLOB_SENTINEL = 0xDEADBEEF
STRING_DTYPE = "STRING"


def _unpack_bits(raw: bytes, dtype: str, count: int) -> np.ndarray:
    """Sub-byte elements, packed from the least significant bit of each byte upward (MILBlob)."""
    nbits = SUB_BYTE_BITS[dtype]
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[: count * nbits]
    if bits.size < count * nbits:
        raise MILFormatError(f"{dtype} data holds {bits.size} bits, {count * nbits} needed")
    values = (bits.reshape(count, nbits).astype(np.int16) << np.arange(nbits)).sum(axis=1)
    if dtype == "INT4":
        values = np.where(values >= 8, values - 16, values)
    return values.astype(NUMPY_DTYPES[dtype])


def _decode_bytes(raw: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    if dtype in SUB_BYTE_BITS:
        return _unpack_bits(raw, dtype, count).reshape(shape)
    if dtype not in NUMPY_DTYPES:
        raise MILFormatError(f"no NumPy type for MIL dtype {dtype}")
    values = np.frombuffer(raw, NUMPY_DTYPES[dtype])
    if values.size != count:
        raise MILFormatError(f"{dtype} data holds {values.size} values, shape {shape} needs {count}")
    return values.reshape(shape).copy()


# ---- weight.bin --------------------------------------------------------------------------------


class BlobFile:
    """``weight.bin``: a 64-byte file header, then per blob a 64-byte metadata record
    (``uint32 sentinel 0xDEADBEEF, uint32 dtype, uint64 size in bytes, uint64 data offset``)
    and the data. The program refers to a blob by the offset of its metadata record."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise MILFormatError(f"weights file {path} is missing")
        self.path, self.data = path, path.read_bytes()

    def read(self, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        if offset + 24 > len(self.data):
            raise MILFormatError(f"{self.path}: blob offset {offset} is past the end of the file")
        sentinel, code, size, start = struct.unpack_from("<IIQQ", self.data, offset)
        if sentinel != BLOB_SENTINEL:
            raise MILFormatError(f"{self.path}: no blob at offset {offset} (sentinel {sentinel:#x})")
        if BLOB_DTYPES.get(code) != dtype:
            raise MILFormatError(f"{self.path}: blob at {offset} is {BLOB_DTYPES.get(code, code)}, "
                                 f"the program says {dtype}")
        if start + size > len(self.data):
            raise MILFormatError(f"{self.path}: blob at {offset} runs past the end of the file")
        return _decode_bytes(self.data[start : start + size], dtype, shape)


# ---- the program as read from model.mlmodel ----------------------------------------------------


@dataclass(frozen=True)
class TensorType:
    dtype: str  # MIL DataType name, e.g. "FLOAT16"
    shape: tuple[int | None, ...]  # None: a dimension not fixed in the program


@dataclass
class Op:
    type: str
    name: str
    inputs: dict[str, list]  # parameter -> bindings (a variable name, or a proto Value)
    attributes: dict[str, Any]  # proto Values; const's "val", iOS16 constexprs' parameters
    outputs: list[tuple[str, TensorType | None]]  # None: not a tensor (never in our programs)


def _tensor_type(value_type) -> TensorType | None:
    kind = value_type.WhichOneof("type")
    if kind == "stateType":
        return _tensor_type(value_type.stateType.wrappedType)
    if kind != "tensorType":
        return None
    from coremltools.proto import MIL_pb2

    t = value_type.tensorType
    shape = tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None
                  for d in t.dimensions)
    return TensorType(MIL_pb2.DataType.Name(t.dataType), shape)


def _spec_path(mlpackage: Path) -> Path:
    """The root model file named by the package's Manifest.json."""
    manifest = mlpackage / "Manifest.json"
    if not manifest.is_file():
        raise MILFormatError(f"{mlpackage} is not an .mlpackage (no Manifest.json)")
    info = json.loads(manifest.read_text())
    entry = info["itemInfoEntries"][info["rootModelIdentifier"]]
    return mlpackage / "Data" / entry["path"]


def _parse_op(op_spec) -> Op:
    inputs = {k: list(v.arguments) for k, v in op_spec.inputs.items()}
    attributes = {k: v for k, v in op_spec.attributes.items() if k != "name"}
    name = op_spec.attributes["name"].immediateValue.tensor.strings.values[0] \
        if "name" in op_spec.attributes else op_spec.outputs[0].name
    outputs = [(o.name, _tensor_type(o.type)) for o in op_spec.outputs]
    return Op(op_spec.type, name, inputs, attributes, outputs)


# ---- op implementations ------------------------------------------------------------------------
# Each takes the op's resolved inputs (NumPy arrays; a list for variadic inputs) and returns one
# array or a tuple of arrays. Floats are widened to float32 by ``_f``; the runner rounds results.

OpFn = Callable[..., Any]


def _f(x: np.ndarray) -> np.ndarray:
    """Floats to float32 (fp16 widens exactly); integers and bools stay as they are."""
    x = np.asarray(x)
    return x.astype(np.float32, copy=False) if np.issubdtype(x.dtype, np.floating) else x


def _axis(a, rank: int) -> int:
    a = int(a)
    return a + rank if a < 0 else a


def _sigmoid(x, **_):
    return 0.5 * (1.0 + np.tanh(0.5 * _f(x)))  # = 1 / (1 + e^-x) without overflow warnings


def _softmax(x, axis=-1, **_):
    z = _f(x)
    e = np.exp(z - z.max(axis=int(axis), keepdims=True))
    return e / e.sum(axis=int(axis), keepdims=True)


def _reduce_log_sum_exp(x, axes=None, keep_dims=False, **_):
    z = _f(x)
    axes = tuple(range(z.ndim)) if axes is None else tuple(int(a) for a in np.ravel(axes))
    m = z.max(axis=axes, keepdims=True)
    out = m + np.log(np.exp(z - m).sum(axis=axes, keepdims=True))
    return out if bool(keep_dims) else np.squeeze(out, axis=axes)


def _reduce(fn):
    def op(x, axes=None, keep_dims=False, **_):
        axes = None if axes is None else tuple(int(a) for a in np.ravel(axes))
        return fn(_f(x), axis=axes, keepdims=bool(keep_dims))
    return op


def _linear(x, weight, bias=None, **_):
    y = _f(x) @ _f(weight).T
    return y if bias is None else y + _f(bias)


def _matmul(x, y, transpose_x=False, transpose_y=False, **_):
    x, y = _f(x), _f(y)
    if bool(transpose_x):
        x = np.swapaxes(x, -1, -2)
    if bool(transpose_y):
        y = np.swapaxes(y, -1, -2)
    return x @ y


def _gather(x, indices, axis=0, batch_dims=0, **_):
    if int(batch_dims) != 0:
        raise UnsupportedOpError("gather with batch_dims != 0 is not implemented")
    return np.take(x, np.asarray(indices, np.int64), axis=int(axis))  # out of range: IndexError


def _topk(x, k=1, axis=-1, ascending=False, sort=True, return_indices=True, **_):
    """Ties keep the lower index first (a stable sort)."""
    z = _f(x)
    ax = _axis(axis, z.ndim)
    order = np.argsort(z if bool(ascending) else -z, axis=ax, kind="stable")
    k = z.shape[ax] if int(k) == -1 else int(k)
    idx = np.take(order, np.arange(k), axis=ax)
    values = np.take_along_axis(z, idx, axis=ax)
    return (values, idx) if bool(return_indices) else values


def _split(x, axis, num_splits=None, split_sizes=None, **_):
    ax = _axis(axis, np.ndim(x))
    if split_sizes is not None:
        return tuple(np.split(x, np.cumsum(np.ravel(split_sizes))[:-1], axis=ax))
    return tuple(np.split(x, int(num_splits), axis=ax))


def _slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None, **_):
    rank = np.ndim(x)
    stride = np.ones(rank, int) if stride is None else np.ravel(stride)
    masks = [np.zeros(rank, bool) if m is None else np.ravel(m) for m in (begin_mask, end_mask, squeeze_mask)]
    index = []
    for d in range(rank):
        if masks[2][d]:
            index.append(int(np.ravel(begin)[d]))
            continue
        b = None if masks[0][d] else int(np.ravel(begin)[d])
        e = None if masks[1][d] else int(np.ravel(end)[d])
        index.append(slice(b, e, int(stride[d])))
    return np.asarray(x)[tuple(index)]


def _slice_by_size(x, begin, size, **_):
    index = tuple(slice(int(b), None if int(s) == -1 else int(b) + int(s))
                  for b, s in zip(np.ravel(begin), np.ravel(size)))
    return np.asarray(x)[index]


def _pad(x, pad, mode="constant", constant_val=0.0, **_):
    """``pad[2i], pad[2i+1]``: elements before and after axis i (the last ``len(pad) // 2`` axes)."""
    if str(mode) != "constant":
        raise UnsupportedOpError(f"pad with mode={mode!r} is not implemented")
    x, widths = np.asarray(x), np.ravel(pad).astype(int).reshape(-1, 2)
    widths = np.concatenate([np.zeros((x.ndim - len(widths), 2), int), widths])
    return np.pad(x, widths, mode="constant", constant_values=np.asarray(constant_val).item())


def _concat(values, axis, interleave=False, **_):
    if bool(interleave):
        raise UnsupportedOpError("concat with interleave=True is not implemented")
    values = values if isinstance(values, list) else [values]
    return np.concatenate([np.asarray(v) for v in values], axis=int(axis))


def _reshape(x, shape, **_):
    shape = [int(s) for s in np.ravel(shape)]
    if 0 in shape:
        raise UnsupportedOpError("reshape with a 0 (copy) dimension is not implemented")
    return np.reshape(x, shape)


def _expand_dims(x, axes, **_):
    return np.expand_dims(x, tuple(int(a) for a in np.ravel(axes)))


def _squeeze(x, axes=None, **_):
    return np.squeeze(x) if axes is None else np.squeeze(x, tuple(int(a) for a in np.ravel(axes)))


def _cast(x, dtype, **_):
    target = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16,
              "uint16": np.uint16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}[str(dtype)]
    return np.asarray(x).astype(target)


def _binary(fn):
    return lambda x, y, **_: fn(_f(x), _f(y))


def _unary(fn):
    return lambda x, **_: fn(_f(x))


# -- states: the runner passes a StateRef for a state input


@dataclass(frozen=True)
class StateRef:
    store: dict[str, np.ndarray]
    name: str

    def read(self) -> np.ndarray:
        return self.store[self.name].copy()

    def write(self, value: np.ndarray) -> None:
        buf = self.store[self.name]
        if buf.shape != np.shape(value):
            raise MILFormatError(f"state {self.name}: writing shape {np.shape(value)} into {buf.shape}")
        buf[...] = value  # in place, in the buffer's dtype (fp16), like MLState


def _read_state(input, **_):
    return input.read()


def _write_state(input, data, **_):
    input.write(np.asarray(data))
    return ()


def _coreml_update_state(state, value, **_):
    state.write(np.asarray(value))
    return state.read()


# -- compression (compile-time) ops


def _along_axis(v: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A scalar or per-channel vector, shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    v = _f(v)
    if v.ndim == 0:
        return v
    shape = [1] * rank
    shape[axis] = v.size
    return v.reshape(shape)


def _constexpr_affine_dequantize(quantized_data, zero_point, scale, axis, **_):
    """iOS16: ``scale * (q - zero_point)``, per tensor or per channel along ``axis``."""
    rank = np.ndim(quantized_data)
    ax = _axis(axis, rank)
    q = quantized_data.astype(np.float32)
    return _along_axis(scale, rank, ax) * (q - _along_axis(zero_point.astype(np.float32), rank, ax))


def _blocks(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat per-block parameters up to the data's shape (block size = data dim / param dim)."""
    for ax, (n, m) in enumerate(zip(shape, v.shape)):
        if n != m:
            v = np.repeat(v, n // m, axis=ax)
    return v


def _constexpr_blockwise_shift_scale(data, scale, offset=None, **_):
    """iOS18: ``scale * (data - offset)`` with one scale/offset per block."""
    x = data.astype(np.float32)
    if offset is not None:
        x = x - _blocks(offset.astype(np.float32), x.shape)
    return _blocks(_f(scale), x.shape) * x


def _constexpr_lut_to_dense(indices, lut, shape=None, vector_axis=None, **_):
    """Palettised weights: iOS16 (``shape`` given, packed uint8 indices, one LUT) or iOS18
    (indices already shaped, LUT ``[..., NUM_PALETTES, VECTOR_SIZE]`` per block)."""
    if shape is not None:
        shape = tuple(int(s) for s in np.ravel(shape))
        nbits = int(np.log2(lut.size))
        idx = _unpack_bits(indices.tobytes(), f"UINT{nbits}", int(np.prod(shape))) if nbits < 8 \
            else indices.ravel()[: int(np.prod(shape))]
        return np.asarray(lut)[idx.astype(np.int64)].reshape(shape)
    if lut.shape[-1] != 1:
        raise UnsupportedOpError("constexpr_lut_to_dense with vector palettization is not implemented")
    tables = lut[..., 0]  # [blocks..., NUM_PALETTES]
    idx = indices.astype(np.int64)
    block = _blocks(np.arange(int(np.prod(tables.shape[:-1]))).reshape(tables.shape[:-1]), idx.shape)
    return tables.reshape(-1, tables.shape[-1])[block, idx]


OPS: dict[str, OpFn] = {
    "const": lambda val, **_: val,
    "identity": lambda x, **_: np.asarray(x),
    "gather": _gather,
    "linear": _linear,
    "matmul": _matmul,
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(np.divide),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "equal": _binary(np.equal),
    "select": lambda cond, a, b, **_: np.where(cond, _f(a), _f(b)),
    "sigmoid": _sigmoid,
    "tanh": _unary(np.tanh),
    "exp": _unary(np.exp),
    "log": _unary(np.log),
    "softmax": _softmax,
    "reduce_log_sum_exp": _reduce_log_sum_exp,
    "reduce_max": _reduce(np.max),
    "reduce_sum": _reduce(np.sum),
    "topk": _topk,
    "cast": _cast,
    "split": _split,
    "slice_by_index": _slice_by_index,
    "slice_by_size": _slice_by_size,
    "concat": _concat,
    "pad": _pad,
    "reshape": _reshape,
    "expand_dims": _expand_dims,
    "squeeze": _squeeze,
    "read_state": _read_state,
    "write_state": _write_state,
    "coreml_update_state": _coreml_update_state,
    "constexpr_affine_dequantize": _constexpr_affine_dequantize,
    "constexpr_blockwise_shift_scale": _constexpr_blockwise_shift_scale,
    "constexpr_lut_to_dense": _constexpr_lut_to_dense,
    "constexpr_cast": lambda source_val, output_dtype="fp32", **_: _f(source_val),  # fp16 -> fp32
}


# ---- the evaluator -----------------------------------------------------------------------------


def _as_declared(value: Any, name: str, declared: TensorType | None, batch: bool = False) -> np.ndarray:
    """Round/cast an op result to the dtype the program declares, and check its shape.

    ``batch``: a declared leading dimension of 1 may hold any batch size (see ``predict``).
    """
    if declared is None or declared.dtype == STRING_DTYPE:
        return value
    value = np.asarray(value).astype(NUMPY_DTYPES[declared.dtype])
    if None not in declared.shape and not _same_shape(value.shape, declared.shape, batch):
        raise MILFormatError(f"{name}: evaluated shape {value.shape}, the program declares {declared.shape}")
    return value


def _same_shape(shape: tuple, declared: tuple, batch: bool) -> bool:
    if batch and declared[:1] == (1,) and len(shape) == len(declared):
        return shape[1:] == declared[1:]
    return shape == declared


class MILProgram:
    """The ``main`` function of a saved ML Program, evaluated op by op with NumPy."""

    def __init__(self, path: Path, spec):
        self.path = path
        self.specification_version = spec.specificationVersion
        func = spec.mlProgram.functions["main"]
        self.opset = func.opset
        block = func.block_specializations[func.opset]
        self.ops = [_parse_op(op) for op in block.operations]
        self.op_types: set[str] = {op.type for op in self.ops}
        self.output_names = list(block.outputs)
        self.inputs: dict[str, TensorType] = {}
        self.states: dict[str, TensorType] = {}
        for v in func.inputs:
            kind = v.type.WhichOneof("type")
            (self.states if kind == "stateType" else self.inputs)[v.name] = _tensor_type(v.type)
        self._blobs: dict[str, BlobFile] = {}
        self._model_dir = path.parent
        self._consts: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, mlpackage: Path) -> "MILProgram":
        """Read ``model.mlmodel`` and (lazily) its ``weight.bin`` from a saved package."""
        from coremltools.proto import Model_pb2

        mlpackage = Path(mlpackage)
        path = _spec_path(mlpackage)
        spec = Model_pb2.Model()
        spec.ParseFromString(path.read_bytes())
        if spec.WhichOneof("Type") != "mlProgram":
            raise MILFormatError(f"{mlpackage} holds a {spec.WhichOneof('Type')}, not an ML Program")
        return cls(path, spec)

    # -- values

    def _value(self, value) -> Any:
        """A proto Value: an immediate tensor, or a blob read from weight.bin."""
        ttype = _tensor_type(value.type)
        if ttype is None:
            raise MILFormatError("non-tensor values are not supported")
        if value.WhichOneof("value") == "blobFileValue":
            return self._blob(value.blobFileValue.fileName).read(value.blobFileValue.offset,
                                                                 ttype.dtype, ttype.shape)
        return self._immediate(value.immediateValue.tensor, ttype)

    @staticmethod
    def _immediate(tensor, ttype: TensorType) -> Any:
        kind = tensor.WhichOneof("value")
        if ttype.dtype == STRING_DTYPE:
            strings = list(tensor.strings.values)
            return strings[0] if ttype.shape == () else strings
        if kind == "bytes":
            return _decode_bytes(tensor.bytes.values, ttype.dtype, ttype.shape)
        values = np.asarray(list(getattr(tensor, kind).values))
        return values.astype(NUMPY_DTYPES[ttype.dtype]).reshape(ttype.shape)

    def _blob(self, file_name: str) -> BlobFile:
        if file_name not in self._blobs:
            rel = file_name.removeprefix("@model_path/")
            self._blobs[file_name] = BlobFile(self._model_dir / rel)
        return self._blobs[file_name]

    def _resolve(self, binding, env: dict[str, Any]) -> Any:
        if binding.WhichOneof("binding") == "name":
            if binding.name not in env:
                raise MILFormatError(f"variable {binding.name} is used before it is defined")
            return env[binding.name]
        return self._value(binding.value)

    def _op_args(self, op: Op, env: dict[str, Any]) -> dict[str, Any]:
        args = {k: self._value(v) for k, v in op.attributes.items()}
        for k, bindings in op.inputs.items():
            values = [self._resolve(b, env) for b in bindings]
            args[k] = values if len(values) > 1 or k == "values" else values[0]
        return args

    # -- running

    def _run_op(self, op: Op, env: dict[str, Any], batch: bool = False) -> None:
        fn = OPS.get(op.type)
        if fn is None:
            raise UnsupportedOpError(f"op {op.name!r} has type {op.type!r}, which the MIL evaluator "
                                     f"does not implement (known: {', '.join(sorted(OPS))})")
        if op.type.startswith("const") and op.name in self._consts:  # weights: decode once
            result = self._consts[op.name]
        else:
            result = fn(**self._op_args(op, env))
        results = result if isinstance(result, tuple) else (result,)
        if len(results) != len(op.outputs):
            raise MILFormatError(f"op {op.name!r} ({op.type}) gave {len(results)} outputs, "
                                 f"the program declares {len(op.outputs)}")
        for (name, declared), value in zip(op.outputs, results):
            env[name] = _as_declared(value, name, declared, batch)
        if op.type.startswith("const"):
            self._consts[op.name] = result

    def _bind_inputs(self, inputs: dict[str, np.ndarray], batch: bool = False) -> dict[str, Any]:
        missing = set(self.inputs) - set(inputs)
        unknown = set(inputs) - set(self.inputs)
        if missing or unknown:
            raise EdgeRNNError(f"inputs: missing {sorted(missing)}, unknown {sorted(unknown)}")
        env = {}
        for name, ttype in self.inputs.items():
            value = np.asarray(inputs[name])
            if not _same_shape(value.shape, ttype.shape, batch):
                raise EdgeRNNError(f"input {name}: shape {value.shape}, the model takes {ttype.shape}")
            env[name] = value.astype(NUMPY_DTYPES[ttype.dtype])
        return env

    def constants(self) -> dict[str, np.ndarray]:
        """Every ``const``/``constexpr_*`` output by variable name, decoded (dequantised) from the file."""
        env: dict[str, Any] = {}
        for op in self.ops:
            if op.type.startswith("const"):
                self._run_op(op, env)
        return env

    def make_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Zero state buffers in their declared dtype, like ``MLModel.makeState()``; ``batch`` > 1
        replaces a leading dimension of 1, for ``predict(batch=True)``."""
        return {n: np.zeros((batch, *t.shape[1:]) if batch != 1 and t.shape[:1] == (1,) else t.shape,
                            NUMPY_DTYPES[t.dtype]) for n, t in self.states.items()}

    def predict(self, inputs: dict[str, np.ndarray], state: dict[str, np.ndarray] | None = None, *,
                batch: bool = False, extra_outputs: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Run ``main`` once; a stateful program reads and updates ``state`` in place.

        ``batch=True`` lets every declared leading dimension of 1 hold B rows, so B independent
        streams run in one call: NumPy broadcasts where a device model takes batch 1, and it is
        exact for programs whose ops act row by row (ours: gather, linear, element-wise, split,
        softmax and top-k over the last axis). Quantization checks use it to stream many texts at
        once. ``extra_outputs`` returns intermediate variables too (e.g. the softmax before top-k).
        """
        env = self._bind_inputs(inputs, batch)
        if self.states:
            if state is None or set(state) != set(self.states):
                raise EdgeRNNError(f"this model keeps Core ML states {sorted(self.states)}: pass "
                                   "state=program.make_state()")
            env.update({n: StateRef(state, n) for n in self.states})
        for op in self.ops:
            self._run_op(op, env, batch)
        return {name: env[name] for name in (*self.output_names, *extra_outputs)}
