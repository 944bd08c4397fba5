"""Per-keystroke latency of a model, measured the way a keyboard uses it.

A keyboard steps the model once per typed character and shows the suggestions; nothing is
batched and nothing is re-run. ``run_bench`` does exactly that over real text (WikiText-2 from
``../shared/corpus`` when it is there, else the built-in demo corpus, or any file), one
``Session.step`` per character, and reports:

- latency per keystroke (p50/p90/p99/max/mean, after a warm-up), wall-clock: what a user waits.
  A step is the backend's whole call: feeding the graph, the model, reading the top-k back (and
  for a prefix-range head, the bisection that finds the range);
- prefill throughput: a 200-character observation at once through the prefill graph (ONNX) or
  the model's sequence call (MLX), in characters per second (restoring a text field);
- model bytes on disk and the process's peak resident memory (``ru_maxrss``, which is per
  process: ``edge-rnn bench`` runs one backend per process, so the peak is honest there; the
  delta over the peak before the model was loaded is the model's own cost);
- a lower bound on the step: the bytes of weights a step must read divided by this machine's
  measured memory bandwidth (``memory_bandwidth``). On a model whose weights fit in the last-level
  cache the measured time can beat it: the bound is for DRAM-resident weights.

Core ML models run only on Apple platforms: ``backend="coreml"`` fails with one line elsewhere.
"""

from __future__ import annotations

import functools
import json
import platform
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_rnn import data
from edge_rnn.io import EdgeRNNError
from edge_rnn.runtime import SYMBOL_ID, MLXBackend, ONNXBackend, Session, StepOutput
from edge_rnn.vocab import SYMBOLS

BACKENDS = ("mlx", "onnx", "coreml")
CORPUS_DIR = Path(__file__).resolve().parents[1] / "../shared/corpus"
WIKITEXT = "wikitext2-valid.txt"
PREFILL_CHARS = 200  # one training observation: the longest string a prefill restores at once


@dataclass
class BenchResult:
    """What ``edge-rnn bench`` prints; ``to_json`` is its ``--json`` output."""

    source: str
    backend: str
    model: dict
    prefix_head: bool
    threads: int
    text: str
    steps: int
    warmup: int
    latency_ms: dict  # p50, p90, p99, max, mean over the timed keystrokes
    prefill_chars_per_s: float | None
    model_bytes: int  # the step model's file(s); bundle_bytes: every file of the bundle / run
    bundle_bytes: int
    files: dict  # relative path -> bytes
    peak_rss_bytes: int
    rss_delta_bytes: int  # peak after - peak before loading the model
    step_read_bytes: dict  # bytes of weights a keystroke reads: p50 and mean over the keystrokes
    bandwidth_bytes_per_s: float
    bound_ms: dict  # step_read_bytes / bandwidth: p50 and mean
    machine: dict = field(default_factory=dict)

    @property
    def p50_over_bound(self) -> float:
        return self.latency_ms["p50"] / self.bound_ms["p50"] if self.bound_ms["p50"] else float("nan")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "p50_over_bound": self.p50_over_bound}, indent=2)


# ---- the machine -----------------------------------------------------------------------------------

@functools.cache
def memory_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Single-core read bandwidth in bytes/s: the best of ``repeats`` BLAS dot products over a
    buffer far larger than the last-level cache (32 MiB here), so it streams from DRAM. The best,
    not the median: a lower bound on time wants the highest bandwidth. Cached per process; call it
    after reading ``ru_maxrss`` (the buffer would count as the model's memory)."""
    buf = np.ones(mib * 2**20 // 4, np.float32)
    a, b = buf[: buf.size // 2], buf[buf.size // 2 :]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.dot(a, b)
        best = min(best, time.perf_counter() - start)
    return buf.nbytes / best


def peak_rss() -> int:
    """The process's peak resident set in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


# ---- text ------------------------------------------------------------------------------------------

def bench_text(path: Path | None = None, chars: int = 200_000) -> tuple[str, str]:
    """(normalised text, where it came from): ``path``, else WikiText-2 valid, else the demo corpus."""
    if path is not None:
        return data.load_corpus(str(path))[:chars], str(path)
    wiki = CORPUS_DIR / WIKITEXT
    if wiki.is_file():  # read a prefix only: 1 MB normalises in a blink, but why pay for it
        return data.normalise(wiki.read_text(errors="replace")[: 2 * chars])[:chars], f"WikiText-2 ({WIKITEXT})"
    return data.demo_corpus(n_sentences=4000, seed=3)[:chars], "demo corpus (WikiText-2 not found)"


def keystrokes(text: str, n: int) -> list[int]:
    """``n`` symbol ids as typed: a leading space (training's rule), then the text, repeated."""
    typed = " " + text.strip()
    if len(typed) < 2:
        raise EdgeRNNError("the benchmark text has no usable characters")
    reps = -(-n // len(typed))
    return [SYMBOL_ID[c] for c in (typed * reps)[:n]]


# ---- backends --------------------------------------------------------------------------------------

class CoreMLBackend:
    """A Core ML bundle stepped through coremltools' ``predict`` (macOS only; not run on Linux CI).

    Handles both state forms of ``edge_rnn.export.coreml``: "io" feeds and reads the state tensors,
    "mlstate" keeps them in a ``make_state()`` object.
    """

    def __init__(self, bundle_dir: Path):
        import coremltools as ct

        from edge_rnn.export.bundle import VOCAB, read_manifest

        manifest = read_manifest(bundle_dir)
        self.task = manifest["model"]["task"]
        words = json.loads((Path(bundle_dir) / VOCAB).read_text())["words"]
        self.labels = words if self.task == "autocomplete" else SYMBOLS
        self.names = [s["name"] for s in manifest["state"]]
        self.units = manifest["model"]["units"]
        self.form = manifest["export"].get("state_form", "io")
        self.model = ct.models.MLModel(str(Path(bundle_dir) / manifest["export"]["model"]))

    def initial_state(self) -> Any:
        if self.form == "mlstate":
            return self.model.make_state()
        return [np.zeros((1, self.units), np.float32) for _ in self.names]

    def ring(self, depth: int) -> None:
        """Core ML returns new arrays (or keeps its MLState): no ring."""

    def own(self, state: Any) -> Any:
        return state

    def step(self, char_id: int, state: Any, prefix: str = "", slot: int | None = None) -> tuple[StepOutput, Any]:
        feed = {"char": np.array([char_id], np.int32)}
        if self.form == "mlstate":
            out = self.model.predict(feed, state=state)
        else:
            out = self.model.predict({**feed, **dict(zip(self.names, state))})
            state = [np.asarray(out[f"{n}_next"], np.float32) for n in self.names]
        top_ids = np.asarray(out["top_ids"]).reshape(-1)
        return StepOutput(top_ids, np.asarray(out["top_probs"]).reshape(-1), None), state


def _kind(source: Path) -> str:
    if (source / "manifest.json").is_file():
        return "bundle"
    if (source / "config.json").is_file():
        return "run"
    raise EdgeRNNError(f"{source} is neither a run directory (config.json) nor a bundle (manifest.json)")


def _check_backend(backend: str, kind: str, target: str | None) -> None:
    """One-line errors for combinations that cannot run here."""
    if backend not in BACKENDS:
        raise EdgeRNNError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "coreml" and sys.platform != "darwin":
        raise EdgeRNNError(f"the coreml backend runs only on macOS (Core ML cannot run models on "
                           f"{sys.platform}); bench an ONNX bundle or the run directory here")
    if kind == "bundle" and backend == "mlx":
        raise EdgeRNNError("a bundle holds no MLX weights; give the run directory for --backend mlx")
    if kind == "bundle" and backend != target:
        raise EdgeRNNError(f"this is a {target} bundle; it cannot run on the {backend} backend")
    if kind == "run" and backend == "coreml":
        raise EdgeRNNError("export the run as a Core ML bundle first (edge-rnn export --format coreml)")


def default_backend(source: Path) -> str:
    """A run directory runs in MLX; a bundle on its own target."""
    if _kind(Path(source)) == "run":
        return "mlx"
    from edge_rnn.export.bundle import read_manifest

    return str(read_manifest(Path(source)).get("target"))


# ---- measuring -------------------------------------------------------------------------------------

def time_keystrokes(session: Session, ids: list[int], warmup: int) -> tuple[np.ndarray, list[str]]:
    """Seconds per ``Session.step`` for ``ids[warmup:]``, and the typed prefix at each."""
    session.reset()
    for cid in ids[:warmup]:
        session.step(cid)
    times, prefixes = np.empty(len(ids) - warmup), []
    clock = time.perf_counter
    for k, cid in enumerate(ids[warmup:]):
        start = clock()
        session.step(cid)
        times[k] = clock() - start
        prefixes.append(session.prefix)
    return times, prefixes


def time_calls(fn: Callable[[], Any], seconds: float = 0.5, max_calls: int = 50) -> float:
    """Median seconds of ``fn()`` over calls filling about ``seconds`` (one warm-up call first)."""
    fn()
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < max_calls and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def onnx_prefill(backend: ONNXBackend, bundle: Path, manifest: dict, ids: list[int]) -> float | None:
    """Characters per second of the prefill graph over ``PREFILL_CHARS`` symbols; None if absent."""
    import onnxruntime as ort

    prefill = manifest["export"].get("prefill")
    if not prefill:
        return None
    sess = ort.InferenceSession(str(bundle / prefill["file"]), backend.session.get_session_options(),
                                providers=["CPUExecutionProvider"])
    chars = np.array([ids[:PREFILL_CHARS]], np.int32)
    feed = {"chars": chars, **dict(zip(backend.state_names, backend.initial_state()))}
    if backend.prefix_head:
        feed["range"] = backend.range("")
    return chars.size / time_calls(lambda: sess.run(None, feed))


def mlx_prefill(backend: MLXBackend, ids: list[int]) -> float:
    """Characters per second of the model's sequence call (input projection in one matmul)."""
    mx = backend._mx
    chars = mx.array([ids[:PREFILL_CHARS]], dtype=mx.int32)

    def run():
        logits, state = backend.model(chars)
        mx.eval(logits, state)

    return PREFILL_CHARS / time_calls(run)


# ---- bytes -----------------------------------------------------------------------------------------

def onnx_step_bytes(model_path: Path, prefix_head: dict | bool) -> Callable[[int], int]:
    """Bytes of weights one keystroke reads, as a function of the head rows it computes.

    Every initializer of the step graph counts whole, except a ``Gather`` table (one row per
    keystroke: the folded embedding) and, with a prefix-range head, the head's initializers
    (``head.*``), which count in proportion to the rows in the range (all of them above the
    full-Gemm threshold; the list's rows at a word boundary when the bundle has a boundary list).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    gathered = {n.input[0] for n in _all_nodes(graph) if n.op_type == "Gather"}
    fixed, head = 0, 0
    n_out = None
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        size = array.nbytes // max(array.shape[0], 1) if init.name in gathered and array.ndim else array.nbytes
        if prefix_head and init.name.startswith("head."):
            head += size
            if init.name == "head.b":
                n_out = array.shape[0]
        else:
            fixed += size
    if not prefix_head or not n_out:
        return lambda rows: fixed + head
    head_info = prefix_head if isinstance(prefix_head, dict) else {}
    wide = head_info.get("full_gemm_above_rows", n_out)
    listed = head_info.get("boundary_words", 0)
    first, end = head_info.get("word_boundary_range", (0, 0))
    every_word = end - first  # the rows of a word-boundary range

    def read(rows: int) -> int:
        if listed and rows == every_word:  # a word boundary runs the list's rows
            return fixed + head * listed // n_out
        return fixed + (head if rows > wide else head * rows // n_out)

    return read


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                yield from _all_nodes(attr.g)


def mlx_step_bytes(backend: MLXBackend) -> int:
    """Every parameter, except the embedding, of which a keystroke reads one row."""
    from mlx.utils import tree_flatten

    total = 0
    for name, value in tree_flatten(backend.model.parameters()):
        total += value.nbytes // value.shape[0] if name == "embedding" else value.nbytes
    return total


def _files(root: Path, names: list[str]) -> dict[str, int]:
    out = {}
    for name in names:
        path = root / name
        paths = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
        out.update({p.relative_to(root).as_posix(): p.stat().st_size for p in paths})
    return out


# ---- the benchmark ---------------------------------------------------------------------------------

def run_bench(source: Path, backend: str | None = None, threads: int = 1, steps: int = 1000,
              warmup: int = 100, text_path: Path | None = None) -> BenchResult:
    """Benchmark a bundle or run directory on one backend (module docstring).

    A run directory on ``onnx`` is exported to a temporary bundle first (the default export).
    """
    source = Path(source)
    kind = _kind(source)
    backend = backend or default_backend(source)
    target = None
    if kind == "bundle":
        from edge_rnn.export.bundle import read_manifest

        target = read_manifest(source).get("target")
    _check_backend(backend, kind, target)
    if steps < 1 or warmup < 0 or threads < 1:
        raise EdgeRNNError("--steps and --threads must be >= 1 and --warmup >= 0")
    text, text_name = bench_text(text_path)
    ids = keystrokes(text, warmup + steps)
    if kind == "run" and backend == "onnx":
        with tempfile.TemporaryDirectory(prefix="edge-rnn-bench-") as tmp:
            from edge_rnn.export.bundle import export_bundle

            bundle = export_bundle(source, Path(tmp) / "bundle")
            result = _measure(bundle, backend, threads, ids, warmup, text_name)
        result.source = str(source)
        return result
    return _measure(source, backend, threads, ids, warmup, text_name)


def _measure(source: Path, backend: str, threads: int, ids: list[int], warmup: int, text_name: str) -> BenchResult:
    rss_before = peak_rss()
    model_backend, info = _open(source, backend, threads)
    session = Session(model_backend)
    times, prefixes = time_keystrokes(session, ids, warmup)
    prefill = info["prefill"](ids)
    rss_peak = peak_rss()
    bandwidth = memory_bandwidth()
    read = np.array([info["step_bytes"](_rows(model_backend, p)) for p in prefixes], np.float64)
    ms = times * 1e3
    latency = {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
               "p99": float(np.percentile(ms, 99)), "max": float(ms.max()), "mean": float(ms.mean())}
    read_stats = {"p50": float(np.median(read)), "mean": float(read.mean())}
    return BenchResult(
        source=str(source), backend=backend, model=info["model"], prefix_head=info["prefix_head"],
        threads=threads if backend == "onnx" else 0, text=text_name, steps=len(times), warmup=warmup,
        latency_ms=latency, prefill_chars_per_s=prefill, model_bytes=sum(info["model_files"].values()),
        bundle_bytes=sum(info["files"].values()), files=info["files"], peak_rss_bytes=rss_peak,
        rss_delta_bytes=rss_peak - rss_before, step_read_bytes=read_stats, bandwidth_bytes_per_s=bandwidth,
        bound_ms={k: v / bandwidth * 1e3 for k, v in read_stats.items()}, machine=machine())


def _rows(backend: Any, prefix: str) -> int:
    """Head rows a keystroke computes: the prefix range for a prefix-range head, else all."""
    if getattr(backend, "prefix_head", False):
        start, end = backend.range(prefix)
        return int(end - start)
    return len(backend.labels)


def _open(source: Path, backend: str, threads: int) -> tuple[Any, dict]:
    """The backend and what ``_measure`` needs about it: files, step bytes, prefill timer."""
    if backend == "mlx":
        b = MLXBackend(source)
        cfg = b.model.config
        files = _files(source, [p.name for p in sorted(source.iterdir()) if p.is_file()])
        return b, {"model": _model_info(cfg.cell, cfg.layers, cfg.units, cfg.n_outputs),
                   "prefix_head": False, "files": files, "model_files": _files(source, ["weights.safetensors"]),
                   "step_bytes": lambda rows, n=mlx_step_bytes(b): n, "prefill": lambda ids: mlx_prefill(b, ids)}
    from edge_rnn.export.bundle import read_manifest

    manifest = read_manifest(source)
    m = manifest["model"]
    info = {"model": _model_info(m["cell"], m["layers"], m["units"], m["n_outputs"]),
            "files": {k: v["bytes"] for k, v in manifest.get("files", {}).items()},
            # the step graph and its external weights file (ONNX: shared with the prefill graph)
            "model_files": _files(source, [manifest["export"]["model"],
                                           *([manifest["export"]["weights"]] if manifest["export"].get("weights") else [])])}
    if backend == "coreml":
        b = CoreMLBackend(source)
        weights = sum(v for k, v in info["files"].items() if k.endswith("weight.bin"))
        return b, {**info, "prefix_head": False, "step_bytes": lambda rows: weights, "prefill": lambda ids: None}
    b = ONNXBackend(source, threads=threads)
    step_bytes = onnx_step_bytes(source / manifest["export"]["model"], manifest["export"].get("prefix_head", False))
    return b, {**info, "prefix_head": b.prefix_head, "step_bytes": step_bytes,
               "prefill": lambda ids: onnx_prefill(b, source, manifest, ids)}


def _model_info(cell: str, layers: int, units: int, n_outputs: int) -> dict:
    return {"cell": cell, "layers": layers, "units": units, "n_outputs": n_outputs}
