"""The browser demo's figures: bytes the page downloads, time to first suggestion, per-keystroke
latency in headless Chromium (onnxruntime-web, WebAssembly, 1 thread) beside ONNX Runtime in
Python on the same machine, for the edge bundles (fp32 full head, int8, fp32 prefix-range head).

The bundles: the edge-gru preset with random weights (latency does not depend on their values)
and the 10,000 most frequent words of WikiText-2 (``../shared/corpus``; the demo corpus if it is
absent) as the vocabulary, so prefix ranges are those of real English. Both runtimes type the same
normalised WikiText-2 text one character at a time through the same session semantics
(``edge_rnn.runtime`` / ``web/runtime.mjs``), and a keystroke's time is wall time around the
edit and the three suggestions (the page also updates its chips: that is in its figure).
"Time to first suggestion": page navigation until the model is loaded (bundle downloaded and
sha256-checked, wasm compiled, session created) plus the first keystroke. Python's: opening the
session plus the first keystroke, from a warm file cache. Bytes: what the page fetches (the page,
its scripts, the wasm, the bundle), as decoded and as sent (gzip by ``edge-rnn demo``).

    PYTHONPATH=. flock /tmp/heavy.lock python scripts/bench_web.py --chars 400
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_rnn.bench import CORPUS_DIR
from edge_rnn.data import demo_corpus, normalise
from edge_rnn.demo import serve_in_thread, url
from edge_rnn.export.bundle import export_bundle
from edge_rnn.quantize import quantize
from edge_rnn.runtime import open_session
from edge_rnn.vocab import Vocab

CHROMIUM = "/usr/bin/chromium"


def texts() -> tuple[str, list[str]]:
    """(text to type, the 10,000 most frequent words) from WikiText-2, else the demo corpus."""
    valid, test = CORPUS_DIR / "wikitext2-valid.txt", CORPUS_DIR / "wikitext2-test.txt"
    if valid.is_file() and test.is_file():
        typed = normalise(valid.read_text())
        vocab_text = typed + " " + normalise(test.read_text())
    else:
        typed = vocab_text = demo_corpus(20000, seed=3)
    return typed, [w for w, _ in Counter(vocab_text.split()).most_common(10_000)]


def make_bundles(root: Path, words: list[str]) -> dict[str, Path]:
    import mlx.core as mx

    from edge_rnn.model import RNNModel, load_preset, save

    config = load_preset("edge-gru")
    config.vocab_size = len(words)
    mx.random.seed(0)
    save(RNNModel(config), root / "run", Vocab.from_counts(words))
    fp32 = export_bundle(root / "run", root / "fp32", with_log_probs=True)
    int8, _ = quantize(fp32, "int8", out=root / "int8", max_chars=2000)
    return {"fp32": fp32, "int8": int8, "prefix head": export_bundle(root / "run", root / "prefix", prefix_head=True)}


def chromium(bundle: Path, text: str) -> dict:
    from playwright.sync_api import sync_playwright

    server = serve_in_thread(bundle)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
            page = browser.new_page()
            page.goto(url(server))
            page.evaluate("window.edgeRnn.ready")
            page.focus("#text")
            page.keyboard.type(text[0])
            page.evaluate("window.edgeRnn.idle()")
            for ch in text[1:]:
                page.keyboard.type(ch)
            page.evaluate("window.edgeRnn.idle()")
            timings = page.evaluate("window.edgeRnn.timings")
            resources = page.evaluate("""() => [...performance.getEntriesByType('navigation'),
                ...performance.getEntriesByType('resource')].map(e => [e.name, e.encodedBodySize, e.decodedBodySize])""")
            browser.close()
    finally:
        server.shutdown()
    ms = np.array(timings["keystrokesMs"][1:])
    kinds = {"wasm": lambda n: n.endswith(".wasm"), "model": lambda n: "/bundle/" in n}
    size = {k: [sum(r[i] for r in resources if f(r[0])) for i in (1, 2)] for k, f in kinds.items()}
    size["all"] = [sum(r[i] for r in resources) for i in (1, 2)]
    return {"first_ms": timings["readyMs"] + timings["keystrokesMs"][0], "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "n": len(ms), "bytes": size}


def python_ort(bundle: Path, text: str) -> dict:
    t0 = time.perf_counter()
    session = open_session(bundle)
    session.type(text[0])
    session.suggestions(3)
    first = (time.perf_counter() - t0) * 1e3
    times = []
    for ch in text[1:]:
        t = time.perf_counter()
        session.type(ch)
        session.suggestions(3)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"first_ms": first, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=400, help="characters typed per run (after the first)")
    parser.add_argument("--offset", type=int, default=10_000, help="where in the text typing starts")
    args = parser.parse_args()
    typed, words = texts()
    start = typed.find(" ", args.offset) + 1
    text = typed[start : start + args.chars + 1]
    import onnxruntime

    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-rnn-bench-web-") as tmp:
        bundles = make_bundles(Path(tmp), words)
        for name, bundle in bundles.items():
            print(f"{name}: chromium...", flush=True)
            web = chromium(bundle, text)
            print(f"{name}: python...", flush=True)
            py = python_ort(bundle, text)
            rows.append((name, web, py))
    mb = lambda b: f"{b / 1e6:.2f}"
    print(f"\nedge-gru (2x256, 10,000 words, random weights), {len(text) - 1} WikiText-2 keystrokes; "
          f"{platform.processor() or platform.machine()}, {datetime.now(timezone.utc):%Y-%m-%d}; "
          f"onnxruntime-web 1.30.0 in Chromium (headless, WebAssembly SIMD, 1 thread) vs "
          f"onnxruntime {onnxruntime.__version__} in Python (1 thread)\n")
    print("| bundle | page downloads MB, decoded (gzip) | of which wasm | of which model | "
          "first suggestion ms, Chromium | Python | keystroke p50 ms, Chromium | Python | p99 ms, Chromium | Python |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, web, py in rows:
        b = web["bytes"]
        print(f"| {name} | {mb(b['all'][1])} ({mb(b['all'][0])}) | {mb(b['wasm'][1])} ({mb(b['wasm'][0])}) | "
              f"{mb(b['model'][1])} ({mb(b['model'][0])}) | {web['first_ms']:.0f} | {py['first_ms']:.0f} | "
              f"{web['p50']:.3f} | {py['p50']:.3f} | {web['p99']:.3f} | {py['p99']:.3f} |")


if __name__ == "__main__":
    main()
