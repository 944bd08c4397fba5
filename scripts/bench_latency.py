"""Per-keystroke latency of the edge presets: our bundles against the PyTorch-exported baseline.

For the edge preset of every cell (``models/edge-*.json``), with random weights (latency does not
depend on their values) and the 10,000 most frequent words of WikiText-2 as the vocabulary (so
the alphabetical prefix ranges are those of real English), this types WikiText-2 into:

- our ONNX bundle in ONNX Runtime (1 thread): fp32 full head, fp32 prefix-range head, and the
  int8/int4/fp16 bundles of ``edge_rnn.quantize`` where they can be built;
- our MLX run directory (``MLXBackend``);
- the baseline a user would write instead: the same architecture with the same weights in
  PyTorch (``nn.GRU``/``nn.LSTM``/``nn.RNN``; a hand-written module for CIFG and the Nested LSTM),
  exported with ``torch.onnx.export`` as a step function (char and state in; top-k and the next
  state out) and run with the same ONNX Runtime session options. Its probabilities are checked
  against ours before anything is timed.

Every backend is driven through the same ``Session.step`` (the same Python around each call, and
ONNX Runtime's plain ``run`` for ours too: ``ONNXBackend(in_place=False)``, as the baseline has no
output ring; what the ring saves is in ``bench_keyboard.py``'s runtime cost table), in
interleaved blocks: each round types the next block of text into every variant in a rotated
order, so slow phases of a shared machine hit all of them alike. The table shows the median over
rounds of each block's p50/p99/mean. Keystrokes are timed by the calling thread's CPU time
(``--clock cpu``, the default): with one intra-op thread ONNX Runtime computes on the caller's
thread, and CPU time leaves out the time a busy shared machine gives other processes (wall time
here varied 2-3x between runs; ``--clock wall`` measures what a user waits). MLX computes on
threads of its own, so its rows always use the wall clock. The bound is the bytes of weights a keystroke reads divided by
the measured DRAM read bandwidth (``edge_rnn.bench.memory_bandwidth``); the edge models' 6-11 MB (fp32)
fit in a 32 MB L3, so measured times can go below it.

Accuracy: the models are untrained, so the accuracy column is the agreement with our fp32 full
head: top-1 agreement of the raw top-k for full heads (and the quantize check's top-1 delta on
held-out text), and for the prefix head the share of keystrokes whose suggestions equal the full
head's prefix-filtered suggestions (1.0 by construction, checked here on the timed text).

    pip install -e ".[bench]"     # torch==2.13.0 + onnxscript: benchmark-only, not run-time deps
    python scripts/bench_latency.py                          # every cell, ~10 min on 2 cores
    python scripts/bench_latency.py --cells gru --rounds 3 --no-mlx
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import torch_cells  # the PyTorch model (CIFG, Nested LSTM hand-written), shared with bench_train/compare_learning

from edge_rnn.bench import CORPUS_DIR, keystrokes, memory_bandwidth, onnx_step_bytes, mlx_step_bytes
from edge_rnn.data import demo_corpus, normalise
from edge_rnn.export.bundle import RANGE_INPUT as RANGE, export_bundle, read_manifest
from edge_rnn.runtime import MLXBackend, ONNXBackend, Session, StepOutput
from edge_rnn.vocab import Vocab

CELLS = ("rnn", "gru", "lstm", "cifg", "nlstm")
TOP_K = 3


# ---- data ----------------------------------------------------------------------------------------

def corpus() -> tuple[str, str]:
    """(text to type: WikiText-2 valid, vocabulary source: valid + test), or the demo corpus."""
    valid, test = CORPUS_DIR / "wikitext2-valid.txt", CORPUS_DIR / "wikitext2-test.txt"
    if valid.is_file() and test.is_file():
        typed = normalise(valid.read_text())
        return typed, typed + " " + normalise(test.read_text())
    text = demo_corpus(20000, seed=3)
    return text, text


def top_words(text: str, n: int = 10_000) -> list[str]:
    return [w for w, _ in Counter(text.split()).most_common(n)]


# ---- our model, random weights ---------------------------------------------------------------------

def make_run(cell: str, words: list[str], run_dir: Path):
    """The edge preset of ``cell`` with its own initialisation (seeded), saved as a run directory."""
    import mlx.core as mx

    from edge_rnn.model import RNNModel, load_preset, save

    config = load_preset(f"edge-{cell}")
    config.vocab_size = len(words)
    mx.random.seed(0)
    model = RNNModel(config)
    save(model, run_dir, Vocab.from_counts(words))
    return model


# ---- the PyTorch baseline --------------------------------------------------------------------------

def torch_step_module(model, top_k: int = TOP_K) -> nn.Module:
    """The same model as a PyTorch module that runs one keystroke: what a user would write."""
    from edge_rnn.export.onnx import model_arrays

    p = {k: torch.tensor(v, dtype=torch.float32) for k, v in model_arrays(model).items()}
    return TorchStep(model.config, p, top_k).eval()


class TorchStep(nn.Module):
    """``scripts/torch_cells.Model`` holding our weights, run one keystroke at a time:
    embedding (row 0 = <pad> = zeros) -> ``Recurrent.step`` -> [bottleneck] -> Linear -> softmax -> top-k."""

    def __init__(self, cfg, p: dict, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.model = torch_cells.Model(cfg)  # with the head_dim bottleneck, as our bundles keep it
        with torch.no_grad():
            self.model.embedding.weight.copy_(torch.cat([torch.zeros(1, cfg.embed_dim), p["embedding"]]))
            if cfg.head_dim:
                self.model.bottleneck.weight.copy_(p["bottleneck.weight"])
            self.model.head.weight.copy_(p["head.weight"])
            self.model.head.bias.copy_(p["head.bias"])
        torch_cells.load_edge_weights(self.model.rnn, cfg, p)

    def forward(self, char, *state):
        h, new_state = self.model.rnn.step(self.model.embedding(char), state)
        logits = self.model.head(self.model.bottleneck(h))
        top_probs, top_ids = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
        return (top_ids.to(torch.int32), top_probs, *new_state)


def torch_state_shapes(cfg) -> list[tuple[int, ...]]:
    """The baseline's state tensors: ``[layers, 1, H]`` for nn.GRU/RNN (h) and nn.LSTM (h, c);
    ``[1, H]`` per tensor per layer for the hand-written cells (``torch_cells.Recurrent.step``)."""
    return torch_cells.Recurrent(cfg).state_shapes(cfg.layers, cfg.units)


def export_torch_step(model, path: Path) -> str:
    """``torch.onnx.export`` of the step (opset 18); the default (dynamo) exporter first, the
    TorchScript one if that fails. Returns which exporter wrote it."""
    module = torch_step_module(model)
    shapes = torch_state_shapes(model.config)
    args = (torch.tensor([5]), *[torch.zeros(s) for s in shapes])
    names = [f"s{k}" for k in range(len(shapes))]
    kwargs = dict(input_names=["char", *names], output_names=["top_ids", "top_probs", *[f"{n}_next" for n in names]],
                  opset_version=18)
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                extra = {"external_data": False} if dynamo else {}  # one self-contained file, as ours
                torch.onnx.export(module, args, str(path), dynamo=dynamo, **kwargs, **extra)
            return "dynamo" if dynamo else "torchscript"
        except Exception as err:  # the dynamo exporter needs onnxscript and may not cover a module
            last = err
    raise RuntimeError(f"torch.onnx.export failed: {last}")


class PlainONNXBackend:
    """Any step graph with ``char`` (int64) and state inputs, driven like ``ONNXBackend``."""

    def __init__(self, path: Path, labels: list[str], shapes: list[tuple[int, ...]], threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.labels, self.task, self.shapes, self.prefix_head = labels, "autocomplete", shapes, False
        self.names = [i.name for i in self.session.get_inputs()][1:]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def initial_state(self) -> list[np.ndarray]:
        return [np.zeros(s, np.float32) for s in self.shapes]

    def ring(self, depth: int) -> None:
        """No ring, like ``ONNXBackend(in_place=False)`` for every row of the table."""

    def own(self, state: list[np.ndarray]) -> list[np.ndarray]:
        return state

    def step(self, char_id: int, state: list[np.ndarray], prefix: str = "",
             slot: int | None = None) -> tuple[StepOutput, Any]:
        feed = {"char": np.array([char_id], np.int64), **dict(zip(self.names, state))}
        out = dict(zip(self.output_names, self.session.run(None, feed)))
        return StepOutput(out["top_ids"][0], out["top_probs"][0], None), [out[f"{n}_next"] for n in self.names]

    def prefill(self, char_ids: list[int], state: list[np.ndarray], prefix: str = "") -> tuple[StepOutput, Any]:
        """No sequence graph: one step per symbol (the benchmark's sessions never restart)."""
        for c in char_ids:
            out, state = self.step(c, state)
        return out, state


# ---- variants and timing ---------------------------------------------------------------------------

@dataclass
class Variant:
    """One row of the table: a backend to time and what to print beside it."""

    model: str
    backend: str
    precision: str
    head: str
    make: Callable[[], Any]  # -> a Backend
    bytes: int  # the model files on disk (ours: step + prefill graphs and the weights they share)
    read_bytes: Callable[[str], int]  # prefix -> weight bytes one keystroke reads
    wall_only: bool = False  # computes on threads of its own: thread CPU time would miss them
    agreement: float | None = None
    dtop1: float | None = None
    blocks: list[np.ndarray] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)


def onnx_variant(cell: str, bundle: Path, precision: str, threads: int) -> Variant:
    manifest = read_manifest(bundle)
    path = bundle / manifest["export"]["model"]
    step_bytes = onnx_step_bytes(path, manifest["export"].get("prefix_head", False))
    prefix_head = bool(manifest["export"].get("prefix_head"))
    holder: dict = {}

    def make():
        holder["b"] = ONNXBackend(bundle, threads=threads, in_place=False)
        return holder["b"]

    def read(prefix: str) -> int:
        b = holder["b"]
        rows = int(np.diff(b.range(prefix))[0]) if prefix_head else len(b.labels)
        return step_bytes(rows)

    files = sum(p.stat().st_size for p in bundle.iterdir() if p.suffix in (".onnx", ".bin"))
    listed = prefix_head and manifest["export"]["prefix_head"].get("boundary_words")
    head = f"prefix+{listed}" if listed else "prefix" if prefix_head else "full"
    return Variant(f"edge-{cell}", "ours ONNX", precision, head, make, files, read)


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def _session(backend) -> Session:
    """A session that never restarts (``restart="continuous"``): every timed keystroke is one step
    of the graph, not now and then a prefill of the restarted observation's context."""
    return Session(backend, restart="continuous")


def time_block(session: Session, warm: list[int], ids: list[int], reads: list[float],
               read: Callable[[str], int], clock: Callable[[], float]) -> np.ndarray:
    """Reset, type ``warm`` untimed, then time each keystroke of ``ids`` (seconds)."""
    session.reset()
    for c in warm:
        session.step(c)
    times = np.empty(len(ids))
    for k, c in enumerate(ids):
        start = clock()
        session.step(c)
        times[k] = clock() - start
        reads.append(read(session.prefix))
    return times


def interleave(variants: list[Variant], ids: list[int], rounds: int, block: int, warm: int,
               clock: Callable[[], float]) -> None:
    """Rounds of one block per variant, the order rotated each round (module docstring). MLX is
    always timed by the wall clock: it computes on its own threads."""
    sessions = [_session(v.make()) for v in variants]
    for r in range(rounds):
        start = warm + r * block
        segment, warm_ids = ids[start : start + block], ids[start - warm : start]
        order = list(range(len(variants)))
        order = order[r % len(order):] + order[: r % len(order)]
        for k in order:
            variants[k].blocks.append(time_block(sessions[k], warm_ids, segment, variants[k].reads,
                                                 variants[k].read_bytes,
                                                 time.perf_counter if variants[k].wall_only else clock))


def stats(v: Variant) -> dict[str, float]:
    """Median over blocks of each block's p50, p99 and mean, in ms."""
    ms = [b * 1e3 for b in v.blocks]
    return {"p50": float(np.median([np.percentile(b, 50) for b in ms])),
            "p99": float(np.median([np.percentile(b, 99) for b in ms])),
            "mean": float(np.median([b.mean() for b in ms]))}


# ---- checks ---------------------------------------------------------------------------------------

def check_baseline(ours: Session, baseline: Session, ids: list[int]) -> float:
    """The PyTorch-exported step computes our probabilities: max |dp| of the top-k over ``ids``
    (the ids must agree too, barring exact near-ties)."""
    worst = 0.0
    ours.reset()
    baseline.reset()
    for c in ids:
        a_ids, a_p = ours.step(c)
        b_ids, b_p = baseline.step(c)
        worst = max(worst, float(np.abs(a_p - b_p).max()))
        if not np.array_equal(a_ids, b_ids) and np.abs(np.sort(a_p) - np.sort(b_p)).max() > 1e-6:
            raise AssertionError(f"baseline top-k {b_ids} differ from ours {a_ids}")
    if worst > 1e-4:
        raise AssertionError(f"baseline probabilities differ from ours by {worst:.2e}")
    return worst


def top1_agreement(reference: Session, other: Session, ids: list[int]) -> float:
    reference.reset()
    other.reset()
    same = 0
    for c in ids:
        a, _ = reference.step(c)
        b, _ = other.step(c)
        same += int(a[0] == b[0])
    return same / len(ids)


def suggestion_agreement(full: Session, prefix: Session, ids: list[int]) -> tuple[float, float]:
    """Shares of keystrokes where the prefix head suggests what the full head (its whole
    distribution filtered by the prefix) suggests: exactly, and up to ties in the full head.

    The full head's float32 log-softmax can round two logits a few 1e-7 apart to one value and
    then ranks them by frequency id; the range softmax still orders them by their logits. On a
    random model, whose distribution is nearly flat, that happens on a few keystrokes in 1,000.
    """
    full.reset()
    prefix.reset()
    exact = tied = 0
    for c in ids:
        full.step(c)
        prefix.step(c)
        ranked = full.suggestions(4 * TOP_K)
        want, got = ranked[:TOP_K], [w for w, _ in prefix.suggestions(TOP_K)]
        exact += [w for w, _ in want] == got
        prob = dict(ranked)
        tied += len(got) == len(want) and all(prob.get(w) == p for w, (_, p) in zip(got, want))
    return exact / len(ids), tied / len(ids)


# ---- one cell ----------------------------------------------------------------------------------------

def cell_variants(cell: str, words: list[str], root: Path, ids: list[int], args) -> list[Variant]:
    """Build every variant of one cell (bundles, quantized bundles, MLX, baseline) and check them."""
    model = make_run(cell, words, root / "run")
    full = export_bundle(root / "run", root / "full", top_k=TOP_K)
    prefix = export_bundle(root / "run", root / "prefix", top_k=TOP_K, prefix_head=True)
    ref = export_bundle(root / "run", root / "ref", top_k=TOP_K, with_log_probs=True)
    variants = [onnx_variant(cell, full, "fp32", args.threads), onnx_variant(cell, prefix, "fp32", args.threads)]
    check_ids = args.check_ids = ids[: args.check]
    variants[0].agreement = 1.0
    exact, tied = suggestion_agreement(_session(ONNXBackend(ref)), _session(ONNXBackend(prefix)), check_ids)
    print(f"  prefix head = full head + prefix filter on {exact:.1%} of {len(check_ids)} keystrokes, "
          f"{tied:.1%} up to exact float32 ties in the full head's log-probs")
    variants[1].agreement = tied
    listed = None
    if args.boundary_words:  # word boundaries over the N most frequent words (model_boundary.onnx)
        listed = export_bundle(root / "run", root / "listed", top_k=TOP_K, prefix_head=True,
                               boundary_words=args.boundary_words)
        variants.append(onnx_variant(cell, listed, "fp32", args.threads))
        exact, tied = suggestion_agreement(_session(ONNXBackend(ref)), _session(ONNXBackend(listed)), check_ids)
        print(f"  prefix head + {args.boundary_words}-word boundary list = full head + prefix filter on "
              f"{exact:.1%} of {len(check_ids)} keystrokes (random weights: its accuracy cost is "
              "bench_boundary.py's, on a trained model)")
        variants[-1].agreement = tied
    for to in args.precisions:
        variants += quantized_variants(cell, full, prefix, to, root, args, listed)
    if not args.no_mlx:
        variants.append(mlx_variant(cell, root / "run", len(words) + 2))
    variants.append(baseline_variant(cell, model, root, full, words, check_ids, args.threads))
    reference = _session(ONNXBackend(full))
    for v in variants:
        if v.agreement is None:
            v.agreement = top1_agreement(reference, _session(v.make()), check_ids)
    return variants


def quantized_variants(cell: str, full: Path, prefix: Path, to: str, root: Path, args,
                       listed: Path | None = None) -> list[Variant]:
    """int8/int4/fp16 bundles from ``edge_rnn.quantize`` (full head, and prefix head if it takes it;
    the prefix head with a boundary list, ``listed``, in int8)."""
    try:
        from edge_rnn.quantize import quantize
    except ImportError:
        print(f"  {to}: edge_rnn.quantize is not available")
        return []
    out = []
    sources = ((full, "full"),) if args.no_quantize_prefix else ((full, "full"), (prefix, "prefix"))
    if listed is not None and to == "int8" and not args.no_quantize_prefix:
        sources += ((listed, "listed"),)
    for source, name in sources:
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bundle, record = quantize(source, to, out=root / f"{name}-{to}", eval_text=args.eval_text)
        except Exception as err:  # report and go on: the other rows are still worth having
            print(f"  {to} {name} head: quantize failed: {str(err).splitlines()[0][:160]}")
            continue
        v = onnx_variant(cell, bundle, to, args.threads)
        check = record.get("check", {})
        v.dtop1 = _dtop1(check)
        if name == "full":
            v.agreement = check.get("top1_agreement")
        else:  # same alphabetical ids as the fp32 prefix bundle: compare the suggestions' top-1
            twin = prefix if name == "prefix" else listed
            v.agreement = top1_agreement(_session(ONNXBackend(twin)), _session(ONNXBackend(bundle)),
                                         args.check_ids)
        out.append(v)
    return out


def _dtop1(check: dict) -> float | None:
    try:
        return 100 * (check["quantized"]["top1"] - check["source"]["top1"])
    except (KeyError, TypeError):
        return None


def mlx_variant(cell: str, run: Path, n_outputs: int) -> Variant:
    holder: dict = {}

    def make():
        holder["b"] = MLXBackend(run, top_k=TOP_K)
        return holder["b"]

    return Variant(f"edge-{cell}", "ours MLX (wall clock)", "fp32", "full", make,
                   (run / "weights.safetensors").stat().st_size,
                   lambda prefix: mlx_step_bytes(holder["b"]), wall_only=True)


def baseline_variant(cell: str, model, root: Path, full: Path, words, check_ids, threads: int) -> Variant:
    path = root / "torch_step.onnx"
    exporter = export_torch_step(model, path)
    shapes = torch_state_shapes(model.config)
    labels = ["<pad>", "<unk>", *words]

    def make():
        return PlainONNXBackend(path, labels, shapes, threads)

    worst = check_baseline(_session(ONNXBackend(full)), _session(make()), check_ids)
    print(f"  baseline ({exporter} exporter) matches ours: max |dp| {worst:.1e} over {len(check_ids)} keystrokes")
    step_bytes = onnx_step_bytes(path, False)
    return Variant(f"edge-{cell}", "PyTorch->ONNX", "fp32", "full", make, path.stat().st_size,
                   lambda prefix: step_bytes(0))


# ---- where a keystroke's microseconds go ---------------------------------------------------------

def _ort(model_or_path, threads: int, profile: bool = False):
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "edge-rnn-profile")
    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _median_us(session, feed: dict, reps: int = 1000) -> float:
    for _ in range(50):
        session.run(None, feed)
    times = np.empty(reps)
    for k in range(reps):
        start = time.thread_time()
        session.run(None, feed)
        times[k] = time.thread_time() - start
    return float(np.median(times) * 1e6)


def breakdown(bundle: Path, ids: list[int], threads: int) -> str:
    """Where one keystroke's time goes in a prefix-head bundle, typing ``ids`` (real text):

    - the runtime's Python (``Session.step`` minus ONNX Runtime's ``run``), and ``run`` itself,
      split into narrow (range) and wide (whole head) keystrokes;
    - ablations timed without the profiler: ``run`` of a one-node graph (ONNX Runtime's fixed cost
      per call), of the step graph cut after the recurrent step (``onnx.utils.Extractor``: the
      cells), and of the whole step at a 30-row range; the head rows are the difference;
    - ONNX Runtime's profiler (``SessionOptions.enable_profiling``) over the same keystrokes: nodes
      run per keystroke and kernel time by part (cells, head), the rest of ``model_run`` being the
      executor's per-node overhead (the profiler itself inflates every node, so read shares).
    """
    import json

    import onnx
    from onnx import helper

    backend = ONNXBackend(bundle, threads=threads, in_place=False)
    ort_times, rows, ran = [], [], []
    attrs = {"narrow": "session", "wide": "_wide", "boundary": "_boundary"}  # the graphs a split head runs
    inner = {w: getattr(backend, a) for w, a in attrs.items() if getattr(backend, a) is not None}

    class Timed:  # ONNX Runtime's run, timed inside Session.step
        def __init__(self, graph, which: str):
            self.inner, self.which = graph, which

        def run(self, outputs, feed):
            start = time.thread_time()
            result = self.inner.run(outputs, feed)
            ort_times.append(time.thread_time() - start)
            rows.append(int(feed[RANGE][1] - feed[RANGE][0]))
            ran.append(self.which)
            return result

        def __getattr__(self, name):
            return getattr(self.inner, name)

    for w, graph in inner.items():
        setattr(backend, attrs[w], Timed(graph, w))
    session = _session(backend)
    for c in ids[:100]:
        session.step(c)
    ort_times.clear()
    rows.clear()
    ran.clear()
    steps = np.empty(len(ids) - 100)
    for k, c in enumerate(ids[100:]):
        start = time.thread_time()
        session.step(c)
        steps[k] = time.thread_time() - start
    for w, graph in inner.items():
        setattr(backend, attrs[w], graph)
    run_us, step_us, rows, ran = np.array(ort_times) * 1e6, steps * 1e6, np.array(rows), np.array(ran)
    head = backend.manifest["export"]["prefix_head"]
    wide_rows = head["full_gemm_above_rows"]
    split = head.get("split")  # the graphs the runtime runs: narrow, wide (and boundary), or the one If graph
    paths = {w: bundle / (split[w] if split else backend.manifest["export"]["model"]) for w in inner}
    which = {id(graph): w for w, graph in inner.items()}

    model_path = paths["narrow"]
    model = onnx.load(str(model_path))
    states = [s["name"] for s in backend.manifest["state"]]
    feed = {"char": np.array([5], np.int32), **{n: np.full((1, backend.manifest["model"]["units"]), 0.1, np.float32)
                                                for n in states}}
    cells = onnx.utils.Extractor(model).extract_model(["char", *states], [f"{n}_next" for n in states])
    one = helper.make_model(helper.make_graph([helper.make_node("Identity", ["char"], ["y"])], "one",
                                              [helper.make_tensor_value_info("char", 6, [1])],
                                              [helper.make_tensor_value_info("y", 6, [1])]),
                            opset_imports=[helper.make_opsetid("", 18)])
    one.ir_version = 8
    fixed = _median_us(_ort(one, threads), {"char": feed["char"]})
    cells_us = _median_us(_ort(cells, threads), feed)
    narrow_us = _median_us(_ort(model_path, threads), {**feed, RANGE: np.array([2, 32], np.int32)})

    profiled = {w: _ort(path, threads, profile=True) for w, path in paths.items()}
    state = {n: np.zeros_like(v) for n, v in feed.items() if n != "char"}
    session = _session(backend)
    for c in ids[100:]:
        session.step(c)  # for the prefix after this keystroke
        span = backend.range(session.prefix)
        graph = profiled[which[id(backend.graph_for(span))]]
        out = graph.run(None, {"char": np.array([c], np.int32), **state, RANGE: span})
        state = dict(zip(states, out[2:]))
    n = len(ids) - 100
    runs, kernels = [], []
    for graph in profiled.values():
        events = json.load(open(graph.end_profiling()))
        timed = [e for e in events if e.get("name") == "model_run"]
        runs += timed
        kernels += [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                    and timed and e["ts"] >= timed[0]["ts"]]
    head_ops = ("Softmax", "TopK", "Min", "Greater")
    shares = ", ".join(f"{w} {np.mean(ran == w):.1%}" for w in inner)
    per_graph = ", ".join(f"{w} {run_us[ran == w].mean():.1f} us" for w in inner if (ran == w).any())
    part = {"cells": 0.0, "head": 0.0}
    for e in kernels:
        if e["args"].get("op_name") == "If":  # its branch's nodes are listed on their own
            continue
        name = e["name"][: -len("_kernel_time")]
        part["head" if "head" in name or "range" in name or e["args"].get("op_name") in head_ops else "cells"] += e["dur"]
    model_run = float(np.mean([e["dur"] for e in runs]))
    return "\n".join([
        f"{bundle.name}, {n} keystrokes of real text (graphs run: {shares}; wide: a range over {wide_rows} rows)",
        f"  Session.step (thread CPU time): mean {step_us.mean():.1f} us = ONNX Runtime run {run_us.mean():.1f} "
        f"+ the runtime's Python {step_us.mean() - run_us.mean():.1f}",
        f"  run by graph (mean): {per_graph}; median narrow range {np.median(rows[ran == 'narrow']):.0f} rows",
        f"  ablations (median run): one-node graph {fixed:.1f} us (fixed cost per call); recurrent step only "
        f"{cells_us:.1f} us; whole step at a 30-row range {narrow_us:.1f} us (head rows + range logic "
        f"{narrow_us - cells_us:+.1f} us)",
        f"  profiler: {len(kernels) / n:.1f} nodes per keystroke; model_run {model_run:.1f} us = kernels cells "
        f"{part['cells'] / n:.1f} + head {part['head'] / n:.1f} + outside kernels "
        f"{model_run - (part['cells'] + part['head']) / n:.1f} (executor per-node overhead; profiled times are inflated)",
    ])


# ---- report ----------------------------------------------------------------------------------------

def table(rows: list[Variant], bandwidth: float) -> str:
    """The markdown table; ratios against the same cell's baseline. The bound is the mean over the
    timed keystrokes of the weight bytes each reads (``edge_rnn.bench.onnx_step_bytes``: the rows
    of its range, the whole head above the graph's switch) divided by the DRAM read bandwidth
    measured in the same run."""
    lines = ["| model | backend | precision | head | p50 ms | p99 ms | mean ms | p50 / torch | p99 / torch "
             "| mean / torch | KB read (mean) | bound ms | mean / bound | model bytes | agreement vs fp32 | Δtop-1 (pt) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {v.model: stats(v) for v in rows if v.backend == "PyTorch->ONNX"}
    for v in rows:
        s, b = stats(v), base.get(v.model)
        read = float(np.mean(v.reads))
        bound = read / bandwidth * 1e3
        lines.append(f"| {v.model} | {v.backend} | {v.precision} | {v.head} | {s['p50']:.3f} | {s['p99']:.3f} "
                     f"| {s['mean']:.3f} | {_ratio(s['p50'], b and b['p50'])} | {_ratio(s['p99'], b and b['p99'])} "
                     f"| {_ratio(s['mean'], b and b['mean'])} | {read / 1e3:,.0f} | {bound:.3f} | {s['mean'] / bound:.1f}x "
                     f"| {v.bytes:,} | {_fmt(v.agreement, '.3f')} | {_fmt(v.dtop1, '+.2f')} |")
    return "\n".join(lines)


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="*", default=list(CELLS), choices=CELLS)
    parser.add_argument("--precisions", nargs="*", default=["int8", "int4", "fp16"],
                        help="quantized ONNX bundles to add (edge_rnn.quantize)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--block", type=int, default=400, help="keystrokes per variant per round")
    parser.add_argument("--warm", type=int, default=50, help="untimed keystrokes before each block")
    parser.add_argument("--check", type=int, default=300, help="keystrokes of the agreement checks")
    parser.add_argument("--no-quantize-prefix", action="store_true",
                        help="skip the quantized prefix-head bundles (their head rows int8/fp16)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--boundary-words", type=int, default=1000,
                        help="rows 'prefix+N': the prefix head with an N-word boundary list (0: none)")
    parser.add_argument("--profile", choices=CELLS, default="gru",
                        help="the cell whose int8 prefix bundles (with and without the boundary list) get the time breakdown (breakdown())")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the calling thread's CPU time (ONNX Runtime runs a 1-thread graph on the "
                             "caller's thread; excludes time the OS gives other processes on a shared "
                             "machine); wall: what a user waits")
    parser.add_argument("--no-mlx", action="store_true", help="skip the MLX rows (slow on Linux CPUs)")
    args = parser.parse_args()
    test_file = CORPUS_DIR / "wikitext2-test.txt"
    args.eval_text = test_file if test_file.is_file() else None

    typed, vocab_text = corpus()
    words = top_words(vocab_text)
    ids = keystrokes(typed[: 2_000_000], args.warm + args.rounds * args.block + 1)
    rows, profiles = [], []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        for cell in args.cells:
            print(f"edge-{cell}: building and checking")
            variants = cell_variants(cell, words, Path(tmp) / cell, ids, args)
            print(f"edge-{cell}: timing {len(variants)} variants x {args.rounds} rounds x {args.block} keystrokes")
            interleave(variants, ids, args.rounds, args.block, args.warm, CLOCKS[args.clock])
            rows += variants
            for name in ("prefix-int8", "listed-int8") if cell == args.profile else ():
                if not (Path(tmp) / cell / name).is_dir():
                    continue
                try:  # a failed breakdown must not cost the table
                    profiles.append(breakdown(Path(tmp) / cell / name, ids, args.threads))
                except Exception as err:
                    profiles.append(f"edge-{cell} {name}: breakdown failed: {err!r}")
    bandwidth = memory_bandwidth()
    import onnxruntime as ort

    print(f"\nonnxruntime {ort.__version__}, torch {torch.__version__}, {args.threads} intra-op thread(s), "
          f"{os.cpu_count()} CPUs (shared: contention possible); DRAM read bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"text: {'WikiText-2 valid' if args.eval_text else 'demo corpus'}; random weights; "
          f"{args.clock} time per keystroke, medians over {args.rounds} interleaved rounds of "
          f"{args.block} keystrokes\n")
    print(table(rows, bandwidth))
    for text in profiles:
        print("\nWhere the time goes, " + text)


if __name__ == "__main__":
    main()
