"""ONNX export: the model as a per-keystroke step graph plus a sequence prefill graph.

Graphs are written node by node with ``onnx.helper`` from the trained weights; nothing is traced.
Each cell's graph sits beside its equations below, with the names of ``edge_rnn.cells``
(``i, f, g, o, h, c``); the gate pre-activations use the same weight layout (``Wx (I, G*H)``,
``Wh (H, G*H)``, ``b (G*H)``), so a graph can be read against the MLX cell line by line.

Two ways to run a cell:

- ``matmul``: ``Gemm``/``MatMul`` plus ``Sigmoid``/``Tanh``/``Mul``/``Add`` (every cell; the only
  way for the Nested LSTM, which has no ONNX operator);
- ``native``: ONNX's ``RNN``/``GRU``/``LSTM`` operators (GRU with ``linear_before_reset=1``, our
  reset-after GRU; CIFG as ``LSTM`` with ``input_forget=1``, which ONNX Runtime computes as
  ``f = 1 - sigmoid(i)``, our coupling). Their gate orders differ from ours (GRU ``zrh``, LSTM
  ``iofc``): the weights are re-blocked at export.

``DEFAULT_IMPL`` holds the faster of the two per cell, as measured by ``scripts/bench_onnx_cells.py``
(ONNX Runtime, 1 thread, batch 1).

The first layer's input projection is folded into the embedding: ``table Wx + b`` is a
``(28, G*H)`` table, so one ``Gather`` replaces a gather and a matmul per keystroke (and the
table is smaller than the embedding plus ``Wx`` whenever ``E > 28``). Row 0 (<pad>) of the
embedding is zero, so its folded row is ``b``.

The top-k runs over all outputs, <pad> and <unk> included; the app (or ``edge_rnn.runtime``)
filters them. Nothing is masked in the graph, so ``top_probs`` are true softmax probabilities.

Prefix-range head (``prefix_head=True``, opt-in). On a small model the output layer *is* the
keystroke (a 10,002 x 256 head is ~80 % of the bytes a step reads), and most of its rows are
words the typed partial word already rules out. The exported output ids are therefore ordered
alphabetically (``edge_rnn.export.contract.prefix_order``: ids 0 and 1 stay <pad> and <unk>), so the
words starting with any prefix form one contiguous id range, and both graphs take one more input,
``range`` int32 ``[2]`` = ``[start, end)``: the rows whose logits are computed (the same range for
every batch row). The app passes the range of its typed partial word, found by bisection over the
sorted words (``edge_rnn.runtime.prefix_range``), and ``[2, n_outputs)`` (every word) at a word
boundary. Then

    logits = h W[start:end]^T + b[start:end]
    top_probs, idx = TopK(Softmax(logits), min(top_k, end - start));  top_ids = start + idx

so ``top_probs`` are probabilities *conditional on the range*, P(word | word starts with the
prefix): the full softmax renormalised over the range (at a word boundary, over all words, <pad>
and <unk> excluded). Their order is the order of the logits, which is the full model's order, so
the top-k are the full model's prefix-filtered suggestions, same words in the same order. One
caveat, float32's: the full head's log-softmax can round two logits a few 1e-7 apart to the same
log-probability, which the runtime then ranks by id (frequency order), while the range softmax
still orders them by their logits; on a random, nearly flat model that happens on a few
keystrokes in 1,000 (``scripts/bench_latency.py`` counts them), on the tests' models never.

An empty range (a prefix no word has) gives ``k = 0``: empty outputs, and the state still
advances. The recurrent update never reads ``range``: states are bit-identical to the full-head
graph's. ``log_probs`` cannot be combined with it (it would need the full head again).

Slicing copies the columns it keeps (ONNX Runtime has no views), and the slice cannot be
pre-packed, so a wide range is cheaper through the full pre-packed Gemm followed by a slice of
the logits. An ``If`` picks: ranges wider than ``PREFIX_FULL_SHARE`` of the outputs take the full
Gemm (every word-boundary keystroke), narrower ones slice the head's columns. ``If`` has a price
of its own in ONNX Runtime (its branch runs as a subgraph with its own execution frame), and the
caller knows the range before it calls, so the bundle also holds the step graph twice with the
``If`` resolved (``split_range_head``): ``model_narrow.onnx`` and ``model_wide.onnx``, the same
nodes as each branch, bit-identical outputs. ``model.onnx`` stays the one-session form.

Word boundaries (``boundary_words=N``, opt-in). The space before a word has no prefix to narrow
the rows, so it runs the whole head: about 18 % of the keystrokes of English prose, and the
slowest ones. A boundary list is a third split graph, ``model_boundary.onnx``: the narrow graph
with its range fixed to the N most frequent words (``boundary_graph``), each sliced head tensor
replaced by a ``Gather`` of those N rows, which ONNX Runtime folds into a constant (so it is
pre-packed) when the session loads. Its logits for those words are the whole head's, bit for bit
(the same stored rows, the same ops), so its top-k are the whole head's top-k among the N words;
``top_probs`` are renormalised over them, P(word | word in the list). The runtime runs it for
the word-boundary range ``[2, n_outputs)``. The accuracy it costs is measured on real text by
``scripts/bench_boundary.py`` (1,000 of 10,000 words: -0.01 pt top-1 in the README).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_rnn import __version__
from edge_rnn.export.contract import FORMAT_VERSION, RANGE_INPUT, checked_prefix_order, state_names
from edge_rnn.io import EdgeRNNError, atomic_path
from edge_rnn.model import RNNModel, numpy_parameters

OPSET = 18  # for Split(num_outputs=...); ONNX Runtime 1.14+ (native and web)
IR_VERSION = 8  # the lowest IR that carries opset 18: readable by older runtimes
STEP_FILE, PREFILL_FILE = "model.onnx", "prefill.onnx"
# the prefix-range step graph with its If resolved, one graph per branch (``split_range_head``)
SPLIT_FILES = {"narrow": "model_narrow.onnx", "wide": "model_wide.onnx"}
BOUNDARY_FILE = "model_boundary.onnx"  # the narrow graph over the word-boundary list (``boundary_graph``)
BOUNDARY_CANDIDATES = "boundary_candidates"  # its initializer: the list's exported ids, int64
WEIGHTS_FILE = "weights.bin"  # the one copy of the weights both graphs name (ONNX external data)
SHARED_MIN_BYTES = 256  # smaller tensors (shapes, axes, biases of tiny models) stay inside each graph
PRECISIONS = ("fp32", "fp16")
IMPLS = ("matmul", "native")
NATIVE_CELLS = ("rnn", "gru", "lstm", "cifg")
# Prefix-range head: ranges wider than this share of the outputs run the full pre-packed Gemm and
# slice the logits; narrower ones slice the weight. Measured on the edge presets (10,002 x 256 head,
# ONNX Runtime 1.32, 1 thread): slicing ~3,000 rows costs about what the full Gemm does.
PREFIX_FULL_SHARE = 0.3
# Measured with scripts/bench_onnx_cells.py (ONNX Runtime 1.32, 1 thread, batch 1, 2 layers,
# H = 128..600, on a shared 2-core x86 VM, so +-20 %): per keystroke the matmul form is as fast as
# the native operators at H = 256 and 1.5-2.7x faster at H = 600 (it skips the first layer's input
# matmul, folded into the embedding, and the native ops' Unsqueeze/Squeeze). Over a sequence the
# native GRU/LSTM operators beat Scan's per-step overhead by 1.2-2x at H <= 256 (the edge presets);
# at H = 600 Scan is on par or faster (pass impl="matmul" there). The plain RNN is faster as a
# Scan at every size. The Nested LSTM has no native operator. The prefill graph nevertheless uses
# the matmul form by default: it is then bit-identical to streaming the step graph (same ops per
# time step), which the runtime needs when it rebuilds a state after a long backspace or restarts
# an observation (edge_rnn.runtime); the native operators differ in the last bits (~5e-8), and a
# prefill runs once per ~100 typed characters, not per keystroke. It also reads the step graph's
# own tensors, so the bundle stores every weight once (``share_weights``); the native operators
# want them re-blocked (their gate order, transposed), a second copy.
DEFAULT_IMPL = {
    "step": {"rnn": "matmul", "gru": "matmul", "lstm": "matmul", "cifg": "matmul", "nlstm": "matmul"},
    "prefill": {"rnn": "matmul", "gru": "matmul", "lstm": "matmul", "cifg": "matmul", "nlstm": "matmul"},
}


# ---- a tiny graph builder ----------------------------------------------------------------------

class Graph:
    """Nodes in order plus the weights they read.

    A Scan body is a child ``Graph``: it shares its parent's weights and name counter, since an
    ONNX subgraph may read outer-scope values (each weight is stored once).
    """

    def __init__(self, parent: "Graph | None" = None):
        self.nodes: list[onnx.NodeProto] = []
        self.root = parent.root if parent else self
        if parent is None:
            self.initializers: dict[str, onnx.TensorProto] = {}
            self.counter = itertools.count()

    def weight(self, name: str, array: np.ndarray) -> str:
        """Register a constant once (float32, or int64 for shapes/axes) and return its name."""
        inits = self.root.initializers
        if name not in inits:
            dtype = np.int64 if np.asarray(array).dtype.kind in "iu" else np.float32
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name)
        return name

    def ops(self, op_type: str, *inputs: str, n_out: int, **attrs) -> list[str]:
        """A node with ``n_out`` outputs; returns their names."""
        outs = [f"{op_type.lower()}_{next(self.root.counter)}" for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        return outs

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        return self.ops(op_type, *inputs, n_out=1, **attrs)[0]

    def rename(self, old: str, new: str) -> None:
        """Give an intermediate value its contract name (a graph output), wherever it is used,
        subgraphs included (an ``If`` branch reads outer values by name)."""
        _rename_nodes(self.nodes, old, new)

    # the vocabulary the cells are written in
    def add(self, a, b): return self.op("Add", a, b)
    def sub(self, a, b): return self.op("Sub", a, b)
    def mul(self, a, b): return self.op("Mul", a, b)
    def sigmoid(self, x): return self.op("Sigmoid", x)
    def tanh(self, x): return self.op("Tanh", x)

    def gemm(self, x: str, w: str, c: str) -> str:
        """``x @ w + c`` for 2-D ``x``, in one node (``c`` a bias or a whole ``[B, N]`` term)."""
        return self.op("Gemm", x, w, c)

    def split(self, x: str, n: int) -> list[str]:
        """The ``n`` gate blocks of a ``[..., n*H]`` pre-activation."""
        return self.ops("Split", x, n_out=n, axis=-1, num_outputs=n) if n > 1 else [x]

    def one(self) -> str:
        return self.weight("one", np.array(1.0))


def _rename_nodes(nodes, old: str, new: str) -> None:
    for node in nodes:
        node.input[:] = [new if v == old else v for v in node.input]
        node.output[:] = [new if v == old else v for v in node.output]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_nodes(attr.g.node, old, new)


class Weights:
    """One layer's NumPy arrays; each enters the graph on first use, under ``l{layer}.{key}``."""

    def __init__(self, graph: Graph, prefix: str, arrays: dict[str, np.ndarray]):
        self.graph, self.prefix, self.arrays = graph, prefix, arrays

    def __getitem__(self, key: str) -> str:
        return self.graph.weight(f"{self.prefix}.{key}", self.arrays[key])


# ---- the cells, matmul form: ``xp = x Wx + b`` is computed by the caller ------------------------

def rnn_recur(g: Graph, w: Weights, xp: str, state: list[str]) -> tuple[str, list[str]]:
    """h = tanh(x Wx + b + h Wh)"""
    (h,) = state
    h = g.tanh(g.gemm(h, w["Wh"], xp))
    return h, [h]


def gru_recur(g: Graph, w: Weights, xp: str, state: list[str]) -> tuple[str, list[str]]:
    """Reset-after GRU; ``bh = [0, 0, bhn]`` puts ``bhn`` inside the reset product::

        r = sigmoid(x Wxr + h Whr + br)
        z = sigmoid(x Wxz + h Whz + bz)
        n = tanh(x Wxn + bn + r * (h Whn + bhn))
        h = (1 - z) * n + z * h
    """
    (h,) = state
    xr, xz, xn = g.split(xp, 3)
    hr, hz, hn = g.split(g.gemm(h, w["Wh"], w["bh"]), 3)
    r = g.sigmoid(g.add(xr, hr))
    z = g.sigmoid(g.add(xz, hz))
    n = g.tanh(g.add(xn, g.mul(r, hn)))
    h = g.add(g.mul(g.sub(g.one(), z), n), g.mul(z, h))
    return h, [h]


def lstm_recur(g: Graph, w: Weights, xp: str, state: list[str]) -> tuple[str, list[str]]:
    """c = sigmoid(f) * c + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c)"""
    h, c = state
    i, f, gg, o = g.split(g.gemm(h, w["Wh"], xp), 4)
    c = g.add(g.mul(g.sigmoid(f), c), g.mul(g.sigmoid(i), g.tanh(gg)))
    h = g.mul(g.sigmoid(o), g.tanh(c))
    return h, [h, c]


def cifg_recur(g: Graph, w: Weights, xp: str, state: list[str]) -> tuple[str, list[str]]:
    """i = sigmoid(i);  c = (1 - i) * c + i * tanh(g);  h = sigmoid(o) * tanh(c)"""
    h, c = state
    i, gg, o = g.split(g.gemm(h, w["Wh"], xp), 3)
    i = g.sigmoid(i)
    c = g.add(g.mul(g.sub(g.one(), i), c), g.mul(i, g.tanh(gg)))
    h = g.mul(g.sigmoid(o), g.tanh(c))
    return h, [h, c]


def nlstm_recur(g: Graph, w: Weights, xp: str, state: list[str]) -> tuple[str, list[str]]:
    """Nested LSTM: state ``(h, c_0, ..., c_{D-1})``; see ``_nlstm_level``."""
    h, *cs = state
    h, *cs = _nlstm_level(g, w, 0, g.gemm(h, w["Wh"], xp), cs)
    return h, [h, *cs]


def _nlstm_level(g: Graph, w: Weights, d: int, gates: str, cs: list[str]) -> list[str]:
    """Level ``d`` from its gate pre-activations -> ``[h_d, c_d, c_{d+1}, ...]``::

        h~ = sigmoid(f) * c_d                          # inner hidden
        x~ = sigmoid(i) * g        (d = 0: identity)   # inner input
             sigmoid(i) * tanh(g)  (d > 0)
        c_d = h~ + x~                      if d is the innermost level
            = level d+1 run on (x~, h~)    otherwise
        h_d = sigmoid(o) * tanh(c_d)
    """
    i, f, gg, o = g.split(gates, 4)
    h_inner = g.mul(g.sigmoid(f), cs[d])
    x_inner = g.mul(g.sigmoid(i), gg if d == 0 else g.tanh(gg))
    if d == len(cs) - 1:
        deeper = [g.add(h_inner, x_inner)]
    else:
        inner = g.gemm(x_inner, w[f"inner.{d}.Wx"], g.gemm(h_inner, w[f"inner.{d}.Wh"], w[f"inner.{d}.b"]))
        deeper = _nlstm_level(g, w, d + 1, inner, cs)
    c = deeper[0]
    return [g.mul(g.sigmoid(o), g.tanh(c)), c, *deeper[1:]]


RECUR = {"rnn": rnn_recur, "gru": gru_recur, "lstm": lstm_recur, "cifg": cifg_recur, "nlstm": nlstm_recur}


# ---- the cells, native form: ONNX RNN/GRU/LSTM over a time-major sequence ------------------------

def _reblock(a: np.ndarray, ours: str, theirs: str, zero: str = "") -> np.ndarray:
    """Reorder the gate blocks of ``a``'s last axis from our order to ONNX's; ``zero`` gates that
    ONNX wants but we do not have (CIFG's forget gate) are zero blocks."""
    blocks = dict(zip(ours, np.split(a, len(ours), axis=-1)))
    like = next(iter(blocks.values()))
    return np.concatenate([np.zeros_like(like) if k in zero else blocks[k] for k in theirs], axis=-1)


def native_arrays(cell: str, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """W ``[1, G*H, I]``, R ``[1, G*H, H]``, B ``[1, 2*G*H]`` in ONNX's gate order."""
    H = p["Wh"].shape[0]
    ours, theirs, zero = {"rnn": ("g", "g", ""), "gru": ("rzn", "zrn", ""),
                          "lstm": ("ifgo", "iofg", ""), "cifg": ("igo", "iofg", "f")}[cell]
    Wb = _reblock(p["b"], ours, theirs, zero)
    Rb = np.zeros_like(Wb)
    if cell == "gru":
        Rb[2 * H :] = p["bhn"]  # Rbh: added inside the reset product (linear_before_reset=1)
    return {"W": _reblock(p["Wx"], ours, theirs, zero).T[None],
            "R": _reblock(p["Wh"], ours, theirs, zero).T[None],
            "B": np.concatenate([Wb, Rb])[None]}


def native_layer(g: Graph, w: Weights, cell: str, X: str, state: list[str],
                 want_y: bool = True) -> tuple[str | None, list[str]]:
    """``X [T, B, I]`` -> ``Y [T, B, H]`` (if wanted) and the final states ``[B, H]``."""
    H = w.arrays["Wh"].shape[0]
    axis0 = g.weight("axis0", np.array([0]))
    init = [g.op("Unsqueeze", s, axis0) for s in state]
    op_type, attrs = {"rnn": ("RNN", {}), "gru": ("GRU", {"linear_before_reset": 1}),
                      "lstm": ("LSTM", {}), "cifg": ("LSTM", {"input_forget": 1})}[cell]
    outs = g.ops(op_type, X, w["W"], w["R"], w["B"], "", *init, n_out=1 + len(state),
                hidden_size=H, **attrs)
    Y = None
    if want_y:  # [T, 1, B, H] -> [T, B, H]
        Y = g.op("Squeeze", outs[0], g.weight("axis1", np.array([1])))
    else:  # an unnamed output is not computed
        g.nodes[-1].output[0] = ""
    return Y, [g.op("Squeeze", s, axis0) for s in outs[1:]]


def native_step(g: Graph, w: Weights, cell: str, x: str, state: list[str]) -> tuple[str, list[str]]:
    """One step as a length-1 sequence; ``h`` is the layer output."""
    X = g.op("Unsqueeze", x, g.weight("axis0", np.array([0])))
    _, new = native_layer(g, w, cell, X, state, want_y=False)
    return new[0], new


# ---- weights -------------------------------------------------------------------------------------

def model_arrays(model: RNNModel) -> dict[str, np.ndarray]:
    """Every parameter as float64 NumPy (derived tables are computed in float64, stored float32)."""
    return numpy_parameters(model, np.float64)


def layer_arrays(params: dict[str, np.ndarray], layer: int, cell: str) -> dict[str, np.ndarray]:
    """One layer's parameters plus the derived arrays its graphs use."""
    prefix = f"layers.{layer}."
    p = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    if cell == "gru":
        H = p["Wh"].shape[0]
        p["bh"] = np.concatenate([np.zeros(2 * H), p["bhn"]])
    if layer == 0:  # embedding folded into the first projection (module docstring)
        table = np.concatenate([np.zeros((1, params["embedding"].shape[1])), params["embedding"]])
        p["table"] = table
        p["table_x"] = table @ p["Wx"] + p["b"]
    if cell in NATIVE_CELLS:
        p.update(native_arrays(cell, p))
    return p


# ---- graphs --------------------------------------------------------------------------------------

def _value(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _io_spec(values: list[onnx.ValueInfoProto]) -> list[dict]:
    """Names, dtypes and shapes (symbolic dims as strings) for the manifest."""
    def dim(d):
        return d.dim_param if d.dim_param else d.dim_value

    return [{"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
             "shape": [dim(d) for d in v.type.tensor_type.shape.dim]} for v in values]


def _layer_states(config, names: list[str]) -> list[list[str]]:
    per = len(names) // config.layers
    return [names[k * per : (k + 1) * per] for k in range(config.layers)]


def bottleneck(g: Graph, params: dict, h: str) -> str:
    """``h P^T``: the bias-free projection of a ``head_dim`` model (its identity otherwise), kept
    as its own MatMul so a keystroke reads ``H*D + V*D`` head weights instead of ``V*H``."""
    if "bottleneck.weight" not in params:
        return h
    return g.op("MatMul", h, g.weight("bottleneck.Pt", params["bottleneck.weight"].T))


def head(g: Graph, params: dict, h: str, top_k: int, with_log_probs: bool) -> list[str]:
    """logits = h W^T + b -> softmax -> top-k (ids as int32), and optionally log-softmax."""
    w = Weights(g, "head", {"Wt": params["head.weight"].T, "b": params["head.bias"]})
    logits = g.gemm(h, w["Wt"], w["b"])
    probs = g.op("Softmax", logits, axis=-1)
    top_probs, top_ids64 = g.ops("TopK", probs, g.weight("k", np.array([top_k])), n_out=2,
                                axis=-1, largest=1, sorted=1)
    outs = {"top_ids": g.op("Cast", top_ids64, to=TensorProto.INT32), "top_probs": top_probs}
    if with_log_probs:
        outs["log_probs"] = g.op("LogSoftmax", logits, axis=-1)
    for name, value in outs.items():
        g.rename(value, name)
    return list(outs)


def range_head(g: Graph, params: dict, h: str, top_k: int, order: np.ndarray) -> list[str]:
    """The prefix-range head (module docstring): logits, softmax and top-k over rows ``range``.

    ``order`` maps exported ids to the model's (``prefix_order``); the weight is stored once, as
    ``[H, V]`` like the full head, so the wide branch's Gemm is the full head's, pre-packed.
    """
    w = Weights(g, "head", {"Wt": params["head.weight"][order].T, "b": params["head.bias"][order]})
    axis0, axis1 = g.weight("axis0", np.array([0])), g.weight("axis1", np.array([1]))
    start, end = g.split(g.op("Cast", RANGE_INPUT, to=TensorProto.INT64), 2)  # each [1]
    n = g.sub(end, start)
    wide_rows = int(PREFIX_FULL_SHARE * len(order))
    wide = g.op("Greater", n, g.weight("wide_rows", np.array([wide_rows])))  # If takes a 1-element bool
    full, narrow = Graph(g), Graph(g)  # the two ways to the same logits
    full_logits = full.op("Slice", full.gemm(h, w["Wt"], w["b"]), start, end, axis1)
    narrow_logits = narrow.gemm(h, narrow.op("Slice", w["Wt"], start, end, axis1),
                                narrow.op("Slice", w["b"], start, end, axis0))
    logits = g.op("If", wide, then_branch=_branch(full, full_logits, "wide_range"),
                  else_branch=_branch(narrow, narrow_logits, "narrow_range"))
    k = g.op("Min", n, g.weight("k", np.array([top_k])))
    top_probs, idx = g.ops("TopK", g.op("Softmax", logits, axis=-1), k, n_out=2,
                           axis=-1, largest=1, sorted=1)
    top_ids = g.op("Cast", g.add(idx, start), to=TensorProto.INT32)
    g.rename(top_ids, "top_ids")
    g.rename(top_probs, "top_probs")
    return ["top_ids", "top_probs"]


def _branch(body: Graph, value: str, name: str) -> onnx.GraphProto:
    """An ``If`` branch: ``body``'s nodes, ``value`` its one output (``[batch, n]`` logits)."""
    body.rename(value, f"{name}_logits")
    out = _value(f"{name}_logits", TensorProto.FLOAT, ["batch", "n"])
    return helper.make_graph(body.nodes, name, [], [out])


def _head_outputs(config, top_k: int | str, with_log_probs: bool) -> list[onnx.ValueInfoProto]:
    outs = [_value("top_ids", TensorProto.INT32, ["batch", top_k]),
            _value("top_probs", TensorProto.FLOAT, ["batch", top_k])]
    if with_log_probs:
        outs.append(_value("log_probs", TensorProto.FLOAT, ["batch", config.n_outputs]))
    return outs


def _state_values(config, suffix: str = "") -> list[onnx.ValueInfoProto]:
    return [_value(n + suffix, TensorProto.FLOAT, ["batch", config.units]) for n in state_names(config)]


def _finish(g: Graph, name: str, chars: onnx.ValueInfoProto, h: str, new_states: list[str], config,
            params: dict, top_k: int, with_log_probs: bool, order: np.ndarray | None) -> onnx.GraphProto:
    """Add the head on ``h`` (the prefix-range head when ``order`` is given: one more input,
    ``range``, last), give the next states their contract names, wrap up the graph."""
    h = bottleneck(g, params, h)
    if order is None:
        head(g, params, h, top_k, with_log_probs)
    else:
        range_head(g, params, h, top_k, order)
    for value, state in zip(new_states, state_names(config)):
        g.rename(value, f"{state}_next")
    inputs = [chars] + _state_values(config)
    if order is not None:
        inputs.append(_value(RANGE_INPUT, TensorProto.INT32, [2]))
    k = top_k if order is None else "k"  # min(top_k, end - start): known only at run time
    outputs = _head_outputs(config, k, with_log_probs) + _state_values(config, "_next")
    return helper.make_graph(g.nodes, name, inputs, outputs, list(g.initializers.values()))


def step_graph(model: RNNModel, top_k: int, with_log_probs: bool, impl: str,
               order: np.ndarray | None = None) -> onnx.GraphProto:
    """One keystroke: ``char`` and the states in, top-k (+ log-probs) and the next states out;
    ``order``: the prefix-range head over outputs in that order (module docstring)."""
    config, params = model.config, model_arrays(model)
    g = Graph()
    x, new_states = "char", []
    for layer, state in enumerate(_layer_states(config, state_names(config))):
        w = Weights(g, f"l{layer}", layer_arrays(params, layer, config.cell))
        if impl == "native":
            x_in = g.op("Gather", w["table"], x) if layer == 0 else x
            x, new = native_step(g, w, config.cell, x_in, state)
        else:
            xp = g.op("Gather", w["table_x"], x) if layer == 0 else g.gemm(x, w["Wx"], w["b"])
            x, new = RECUR[config.cell](g, w, xp, state)
        new_states += new
    char = _value("char", TensorProto.INT32, ["batch"])
    return _finish(g, "edge_rnn_step", char, x, new_states, model.config, params, top_k, with_log_probs,
                   order)


def scan_layer(g: Graph, w: Weights, cell: str, xp: str, state: list[str], H: int,
               want_hs: bool) -> tuple[str | None, list[str]]:
    """Run a cell's recurrence over ``xp [T, B, G*H]`` with ``Scan`` (time-major, axis 0)."""
    body = Graph(g)
    b_state = [f"s{k}" for k in range(len(state))]
    h, new = RECUR[cell](body, w, "xp_t", b_state)
    out_names = [f"s{k}_next" for k in range(len(new))]
    for value, name in zip(new, out_names):
        body.rename(value, name)
    b_outputs = [_value(n, TensorProto.FLOAT, ["batch", H]) for n in out_names]
    if want_hs:
        body.nodes.append(helper.make_node("Identity", [out_names[0]], ["h_t"], name="h_t"))
        b_outputs.append(_value("h_t", TensorProto.FLOAT, ["batch", H]))
    G = w.arrays["Wh"].shape[1]
    b_inputs = [_value(n, TensorProto.FLOAT, ["batch", H]) for n in b_state]
    b_inputs.append(_value("xp_t", TensorProto.FLOAT, ["batch", G]))
    graph = helper.make_graph(body.nodes, f"{w.prefix}_scan", b_inputs, b_outputs)
    outs = g.ops("Scan", *state, xp, n_out=len(b_outputs), body=graph, num_scan_inputs=1)
    return (outs[-1] if want_hs else None), outs[: len(state)]


def prefill_graph(model: RNNModel, top_k: int, with_log_probs: bool, impl: str,
                  order: np.ndarray | None = None) -> onnx.GraphProto:
    """A whole string at once: ``chars [batch, time]`` and the states in, the final states (and
    the top-k after the last character) out. Equal to streaming the step graph over ``chars``.

    Layer by layer, time-major: a layer's input projection runs for all steps in one matmul and
    only the recurrence loops (``Scan``, or the native sequence operator).

    ``time`` must be >= 1 (``min_time`` in the manifest): on an empty sequence ONNX Runtime 1.32's
    ``Scan`` fails, its ``LSTM``/``RNN`` return zeros instead of the input state, and its ``GRU``
    aborts the process. Prefilling nothing means keeping the state; the caller skips the call.
    """
    config, params = model.config, model_arrays(model)
    H, cell = config.units, config.cell
    g = Graph()
    chars_tm = g.op("Transpose", "chars", perm=[1, 0])
    x, new_states = None, []
    for layer, state in enumerate(_layer_states(config, state_names(config))):
        w = Weights(g, f"l{layer}", layer_arrays(params, layer, cell))
        last = layer == config.layers - 1
        if impl == "native":
            X = g.op("Gather", w["table"], chars_tm) if layer == 0 else x
            x, new = native_layer(g, w, cell, X, state, want_y=not last)
        else:
            xp = (g.op("Gather", w["table_x"], chars_tm) if layer == 0
                  else g.add(g.op("MatMul", x, w["Wx"]), w["b"]))
            x, new = scan_layer(g, w, cell, xp, state, H, want_hs=not last)
        new_states += new
    chars = _value("chars", TensorProto.INT32, ["batch", "time"])
    h_last = new_states[-len(state)]  # the last layer's final h
    return _finish(g, "edge_rnn_prefill", chars, h_last, new_states, config, params, top_k, with_log_probs,
                   order)


# ---- models and files ----------------------------------------------------------------------------

def boundary_graph(narrow: onnx.ModelProto, candidates: np.ndarray) -> onnx.ModelProto:
    """``narrow`` (a split prefix-range step graph, any precision) with its range fixed to the
    exported ids ``candidates`` (module docstring, "Word boundaries").

    The range's ``start``/``end`` become the constants ``0``/``N``; every ``Slice(t, start, end,
    axis)`` of a head tensor becomes ``Gather(t, candidates, axis)`` (constant: folded when the
    session loads); ``top_ids = idx + start`` becomes ``Gather(candidates, idx)``. The ``range``
    input stays declared, unread, so a caller feeds every split graph alike.
    """
    model = onnx.ModelProto()
    model.CopyFrom(narrow)
    graph = model.graph
    nodes = list(graph.node)
    cast = next(n for n in nodes if n.op_type == "Cast" and n.input[0] == RANGE_INPUT)
    split = next(n for n in nodes if n.op_type == "Split" and n.input[0] == cast.output[0])
    start, end = split.output
    values = {t.name: t for t in graph.initializer}
    rewritten = []
    for node in nodes:
        if node is split:
            continue
        if node.op_type == "Slice" and list(node.input[1:3]) == [start, end]:
            axis = int(numpy_helper.to_array(values[node.input[3]]).reshape(-1)[0])
            node = helper.make_node("Gather", [node.input[0], BOUNDARY_CANDIDATES], list(node.output),
                                    name=node.name, axis=axis)
        elif node.op_type == "Add" and start in node.input:  # top_ids = idx + start
            (idx,) = [v for v in node.input if v != start]
            node = helper.make_node("Gather", [BOUNDARY_CANDIDATES, idx], list(node.output), name=node.name, axis=0)
        rewritten.append(node)
    graph.initializer.extend([numpy_helper.from_array(np.asarray(candidates, np.int64), BOUNDARY_CANDIDATES),
                              numpy_helper.from_array(np.array([0], np.int64), start),
                              numpy_helper.from_array(np.array([len(candidates)], np.int64), end)])
    del graph.node[:]
    graph.node.extend(_toposorted(rewritten, graph))
    _prune(graph)
    onnx.checker.check_model(model)
    return model


def boundary_candidates(order: np.ndarray, n: int) -> np.ndarray:
    """The exported ids of the ``n`` most frequent words: model ids ``2 .. n + 1`` (a vocabulary
    counts its words in frequency order), mapped through the prefix ``order``."""
    exported = np.argsort(order)  # model id -> exported id
    return exported[2 : n + 2].astype(np.int64)


def read_boundary_candidates(bundle_dir: Path) -> np.ndarray:
    """A bundle's boundary list (its exported ids), read back from ``model_boundary.onnx``: that
    one tensor's bytes from weights.bin, not the whole head's."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    model = onnx.load(str(Path(bundle_dir) / BOUNDARY_FILE), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name == BOUNDARY_CANDIDATES)
    if uses_external_data(tensor):
        load_external_data_for_tensor(tensor, str(bundle_dir))
    return numpy_helper.to_array(tensor)


def split_range_head(step: onnx.ModelProto,
                     candidates: np.ndarray | None = None) -> dict[str, onnx.ModelProto]:
    """``SPLIT_FILES`` name -> the prefix-range step graph with its ``If`` replaced by that
    branch's nodes (the branch output renamed to the If's), dead nodes and constants dropped;
    with ``candidates``, ``BOUNDARY_FILE`` too (``boundary_graph`` of the narrow one).
    Works on any precision: ``edge-rnn quantize`` rewrites the branches and splits again."""
    split = {}
    for which, branch in (("wide", "then_branch"), ("narrow", "else_branch")):
        model = onnx.ModelProto()
        model.CopyFrom(step)
        graph = model.graph
        at, node = next((k, n) for k, n in enumerate(graph.node) if n.op_type == "If")
        body = next(a.g for a in node.attribute if a.name == branch)
        inlined = list(body.node)
        _rename_nodes(inlined, body.output[0].name, node.output[0])
        graph.initializer.extend(body.initializer)
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(_toposorted(nodes[:at] + inlined + nodes[at + 1:], graph))
        _prune(graph)
        split[SPLIT_FILES[which]] = model
    if candidates is not None:
        split[BOUNDARY_FILE] = boundary_graph(split[SPLIT_FILES["narrow"]], candidates)
    return split


def _toposorted(nodes: list, graph: onnx.GraphProto) -> list:
    """``nodes`` so that each comes after the producers of its inputs (ONNX Runtime accepts a
    graph in any order and a quantizer may leave one so; inlining a branch needs the order)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    done, pending = [], list(nodes)
    while pending:
        left = []
        for node in pending:
            if set(node.input) <= ready:
                done.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            raise EdgeRNNError(f"graph {graph.name}: inputs never produced: {sorted(set(left[0].input) - ready)}")
        pending = left
    return done


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes no output depends on (the If's condition) and initializers nobody reads."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    unused = [t for t in graph.initializer if t.name not in needed]
    for t in unused:
        graph.initializer.remove(t)


def _make_model(graph: onnx.GraphProto, metadata: dict[str, str]) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edge-rnn", producer_version=__version__)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def _metadata(config, top_k: int, with_log_probs: bool, graph: str, impl: str,
              prefix_head: bool = False) -> dict[str, str]:
    """The manifest's key fields, so a lone .onnx file still says what it is."""
    return {"edge_rnn.format_version": str(FORMAT_VERSION), "edge_rnn.graph": graph,
            "edge_rnn.cell": config.cell, "edge_rnn.layers": str(config.layers),
            "edge_rnn.units": str(config.units), "edge_rnn.depth": str(config.depth),
            "edge_rnn.embed_dim": str(config.embed_dim), "edge_rnn.task": config.task,
            "edge_rnn.vocab_size": str(config.vocab_size), "edge_rnn.n_outputs": str(config.n_outputs),
            "edge_rnn.top_k": str(top_k), "edge_rnn.with_log_probs": json.dumps(with_log_probs),
            "edge_rnn.implementation": impl, "edge_rnn.state_names": json.dumps(state_names(config)),
            "edge_rnn.prefix_head": json.dumps(prefix_head)}


def share_weights(models: dict[str, onnx.ModelProto], location: str = WEIGHTS_FILE) -> bytes:
    """Move the weights of several graphs into one blob that all of them name as ONNX external
    data, each distinct tensor stored once; return the blob (the caller writes it as ``location``
    beside the graphs).

    Tensors are matched by dtype, shape and bytes, not by name, so graphs built from the same
    weights share them after any deterministic rewrite (``edge-rnn quantize`` quantizes each graph
    on its own, and the step and prefill graphs' int8 copies come out byte-identical). Offsets
    are 64-byte aligned so a runtime may map the file. Subgraph (``Scan``/``If``) initializers
    too; tensors under ``SHARED_MIN_BYTES`` stay inline. Modifies ``models`` in place.
    """
    blob, offsets = bytearray(), {}
    for model in models.values():
        for tensor in _initializers(model.graph):
            if tensor.data_location == TensorProto.EXTERNAL:
                raise EdgeRNNError(f"tensor {tensor.name} is already external; load the model with its data")
            data = numpy_helper.to_array(tensor).tobytes()  # little-endian, as external data is laid out
            if len(data) < SHARED_MIN_BYTES:
                continue
            key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).digest())
            if key not in offsets:
                blob += bytes(-len(blob) % 64)
                offsets[key] = len(blob)
                blob += data
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                          "uint64_data", "string_data"):
                tensor.ClearField(field)
            del tensor.external_data[:]
            for k, v in (("location", location), ("offset", offsets[key]), ("length", len(data))):
                entry = tensor.external_data.add()
                entry.key, entry.value = k, str(v)
            tensor.data_location = TensorProto.EXTERNAL
    return bytes(blob)


def _initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _initializers(attr.g)


def save_shared(models: dict[str, onnx.ModelProto], out_dir: Path, location: str = WEIGHTS_FILE) -> None:
    """``share_weights`` then write ``location`` and each ``file -> model``, each atomically."""
    blob = share_weights(models, location)
    with atomic_path(Path(out_dir) / location) as tmp:
        tmp.write_bytes(blob)
    for file, model in models.items():
        with atomic_path(Path(out_dir) / file) as tmp:
            onnx.save(model, str(tmp))


def fp16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 storage, fp32 compute: each float initializer is stored float16 behind one ``Cast``
    to float32, which ONNX Runtime folds when the session loads, so a step costs what fp32 costs
    (CPUs without fp16 arithmetic), the head's softmax and top-k see fp32 logits and the state
    inputs/outputs stay fp32 (see ``edge_rnn.export.onnx_quantize._onnx_fp16`` for why not onnxruntime's
    ``convert_float_to_float16``). Modifies ``model`` in place."""
    graph, casts = model.graph, []
    for init in [t for t in graph.initializer if t.data_type == TensorProto.FLOAT]:
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], name=init.name + "_to_fp32",
                                      to=TensorProto.FLOAT))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # constants first: the graph stays topologically sorted
    return model


def resolve_impl(cell: str, graph: str, impl: str | None) -> str:
    """``None`` -> the measured default; ``native`` falls back to matmul for the Nested LSTM."""
    if impl is None:
        return DEFAULT_IMPL[graph][cell]
    if impl not in IMPLS:
        raise EdgeRNNError(f"unknown ONNX cell implementation {impl!r}; choose one of: {', '.join(IMPLS)}")
    return impl if cell in NATIVE_CELLS else "matmul"


def build_models(model: RNNModel, top_k: int = 3, with_log_probs: bool = False,
                 impl: str | None = None, words: Sequence[str] | None = None) -> dict[str, onnx.ModelProto]:
    """The checked step and prefill models, in memory (the benchmark uses this directly).

    ``words`` (the output words in the model's id order) asks for the prefix-range head.
    """
    config = model.config
    if not 1 <= top_k <= config.n_outputs:
        raise EdgeRNNError(f"top_k must be between 1 and {config.n_outputs}, got {top_k}")
    order = checked_prefix_order(config, words, with_log_probs)
    models = {}
    for name, build in (("step", step_graph), ("prefill", prefill_graph)):
        chosen = resolve_impl(config.cell, name, impl)
        models[name] = _make_model(build(model, top_k, with_log_probs, chosen, order),
                                   _metadata(config, top_k, with_log_probs, name, chosen, order is not None))
    return models


def export_onnx(model: RNNModel, out_dir: Path, top_k: int = 3, with_log_probs: bool = False,
                precision: str = "fp32", *, impl: str | None = None, prefix_head: bool = False,
                words: Sequence[str] | None = None, ort_format: bool = False, boundary_words: int = 0) -> dict:
    """Write ``model.onnx`` (step) and ``prefill.onnx`` into ``out_dir``; return the manifest
    fragment: files, ``model`` (the step graph's file, as in the Core ML fragment), opset, the step
    graph's inputs/outputs, the prefill graph's, which cell form each graph uses, and
    ``prefix_head`` (its description, or false).

    ``impl`` ("matmul" or "native") overrides ``DEFAULT_IMPL`` for both graphs (benchmarks, tests).
    ``prefix_head`` needs ``words``, the output words in the model's id order; the exported ids
    are then ``prefix_order(words)`` (the caller writes the vocabulary in that order).
    ``ort_format``: also the ORT-format models for ONNX Runtime Mobile (``edge_rnn.export.ort_format``).
    ``boundary_words``: with the prefix-range head, run word boundaries over that many most
    frequent words (``BOUNDARY_FILE``; module docstring); 0: the whole head.
    """
    if precision not in PRECISIONS:
        raise EdgeRNNError(f"unknown ONNX precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if prefix_head and words is None:
        raise EdgeRNNError("the prefix-range head needs the output words (to sort them)")
    candidates = _checked_boundary(model.config, words, prefix_head, top_k, boundary_words)
    models = build_models(model, top_k, with_log_probs, impl, words if prefix_head else None)
    if precision == "fp16":
        models = {name: fp16_weights(m) for name, m in models.items()}
    step, prefill = models["step"].graph, models["prefill"].graph
    files = {STEP_FILE: models["step"], PREFILL_FILE: models["prefill"]}
    save_shared({**files, **(split_range_head(models["step"], candidates) if prefix_head else {})}, Path(out_dir))
    fragment = {
        "format": "onnx", "opset": OPSET, "ir_version": IR_VERSION, "precision": precision,
        "files": list(files), "model": STEP_FILE, "weights": WEIGHTS_FILE,
        "weights_note": "both graphs read their weights from this one file (ONNX external data, "
                        "offsets inside the graphs): load each graph from the bundle folder, or "
                        "hand the file to the runtime (onnxruntime-web: the externalData option)",
        "inputs": _io_spec(list(step.input)), "outputs": _io_spec(list(step.output)),
        "prefill": {"file": PREFILL_FILE, "inputs": _io_spec(list(prefill.input)),
                    "outputs": _io_spec(list(prefill.output)), "min_time": 1},
        "with_log_probs": with_log_probs,
        "implementation": {name: resolve_impl(model.config.cell, name, impl) for name in models},
        "prefix_head": _prefix_head_fragment(model.config, boundary_words) if prefix_head else False,
    }
    if ort_format:
        from edge_rnn.export.ort_format import write_ort_format

        fragment["ort"] = write_ort_format(Path(out_dir), [STEP_FILE, PREFILL_FILE], model.config.n_outputs)
    return fragment


def _checked_boundary(config, words, prefix_head: bool, top_k: int, n: int) -> np.ndarray | None:
    """The boundary list's exported ids, or None (``boundary_words`` 0)."""
    if not n:
        return None
    if not prefix_head:
        raise EdgeRNNError("a word-boundary list needs the prefix-range head (--prefix-head)")
    if not top_k <= n <= config.vocab_size:
        raise EdgeRNNError(f"the word-boundary list must hold between top_k ({top_k}) and the "
                           f"{config.vocab_size} words, got {n}")
    return boundary_candidates(checked_prefix_order(config, words, False), n)


def _prefix_head_fragment(config, boundary_words: int = 0) -> dict:
    """What an app must know to drive the prefix-range head (module docstring)."""
    fragment = {
        "input": RANGE_INPUT, "dtype": "int32", "shape": [2],
        "order": "alphabetical: ids 0 and 1 are <pad> and <unk>, then the words sorted (vocab.json)",
        "word_boundary_range": [2, config.n_outputs],
        "range_rule": "[bisect_left(words, p), bisect_left(words, p + '{')) + 2 over the sorted "
                      "words vocab.json[2:], p the typed part of the current word; empty p: every word",
        "top_probs": "softmax over the range only: P(word | word in range)",
        "top_k": "min(top_k, end - start); 0 for an empty range (the state still advances)",
        "full_gemm_above_rows": int(PREFIX_FULL_SHARE * config.n_outputs),
        "split": {**SPLIT_FILES, "rule": "the step graph with its If resolved, same inputs and outputs: "
                  "run model_wide.onnx when end - start > full_gemm_above_rows, else model_narrow.onnx "
                  "(bit-identical to model.onnx, without If's cost per keystroke)"},
    }
    if boundary_words:
        fragment["split"]["boundary"] = BOUNDARY_FILE
        fragment["split"]["rule"] += f"; at the word-boundary range run {BOUNDARY_FILE}"
        fragment["boundary_words"] = boundary_words
        fragment["boundary_note"] = (f"at the word-boundary range, {BOUNDARY_FILE} ranks the {boundary_words} most "
                                     "frequent words only (the whole head's logits for them); top_probs: "
                                     "P(word | word in that list)")
    return fragment
