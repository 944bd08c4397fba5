"""Keyboard metrics of an edge model trained for a fixed budget on WikiText-2, beside both baselines.

    flock /tmp/heavy.lock python scripts/bench_keyboard.py [--minutes 5] [--preset edge-gru]

1. Text: WikiText-2 valid + test from ../shared/corpus, normalised like training. Its last
   ``--stream-words`` words are held out as one contiguous stream (for the streaming rows); the
   rest is split 90/5/5 into observations (``make_splits``, as ``edge-rnn train`` does).
2. Train the preset for ``--minutes`` of wall clock; export an ONNX bundle (fp32, with log_probs)
   and quantize it to int8.
3. Keyboard table on the first ``--max-words`` words of the test split: the run (MLX, batched),
   the fp32 and int8 bundles (each through ``runtime.Session``: what an app ships), prefix
   frequency and the Kneser-Ney trigram (both built from the training split).
4. Streaming: the held-out stream typed into one text field, ``Session(restart="continuous")``
   against ``restart="observation"``, with both baselines on the same stream.
5. Runtime overhead: mean time per keystroke of ``Session.type`` + ``suggestions(3)`` minus the
   bare ``backend.step`` on the same keystrokes (fp32 bundle, 1 thread), relative to that step.

KSR protocol (edge_rnn/keyboard.py): 3 slots; a word of L letters costs L + 1 keystrokes without
prediction; with it, j + 1 if it is shown after j letters (first j, 0..L; the tap inserts the word
and its space), else L + 1. Prints Markdown tables ready for the README.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_rnn import blas
from edge_rnn.baselines import KneserNeyTrigram, PrefixFrequency, training_words
from edge_rnn.data import encode_autocomplete, make_splits, normalise
from edge_rnn.export.bundle import export_bundle
from edge_rnn.keyboard import RunKeyboard, evaluate_keyboard, first_words
from edge_rnn.model import load_preset
from edge_rnn.quantize import quantize
from edge_rnn.runtime import SYMBOL_ID, Session, open_session
from edge_rnn.train import TrainConfig, train

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
LETTERS = ("0", "1", "2", "3", "4+")


def wikitext() -> str:
    parts = [CORPUS / "wikitext2-valid.txt", CORPUS / "wikitext2-test.txt"]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SystemExit(f"corpus not found: {', '.join(missing)}")
    return normalise("".join(p.read_text() for p in parts))


def row(name: str, r: dict) -> str:
    by = " | ".join(f"{r['by_letters'][b]['top1']:.1%} / {r['by_letters'][b]['top3']:.1%}" for b in LETTERS)
    return (f"| {name} | {r['top1']:.2%} | {r['top3']:.2%} | {r['next_word_top3']:.2%} | {r['ksr']:.2%} | "
            f"{r['oov_rate']:.2%} | {by} |")


HEADER = ("| keyboard | top-1 | top-3 | next-word top-3 | KSR | OOV | " + " | ".join(f"{b} letters (top-1 / top-3)" for b in LETTERS)
          + " |\n|---|---:|---:|---:|---:|---:|" + "---:|" * len(LETTERS))


def progress(name: str):
    def hook(done: int, total: int) -> None:
        print(f"  {name}: {done:,}/{total:,} words", flush=True)
    return hook


def overhead(bundle: Path, text: str, n: int, rounds: int = 3) -> dict:
    """Mean seconds per keystroke: Session.type + suggestions(3), and the bare backend step."""
    chars = (" " + text.strip())[:n]
    ids = [SYMBOL_ID[c] for c in chars]
    prefixes = [chars[: t + 1].rsplit(" ", 1)[-1] for t in range(len(chars))]
    session = open_session(bundle, restart="observation")
    backend = session.backend
    bare, full = [], []
    for _ in range(rounds):  # alternate, keep the best round of each (other jobs share the cores)
        state = backend.initial_state()
        t0 = time.perf_counter()
        for c, p in zip(ids, prefixes):
            _, state = backend.step(c, state, p)
        bare.append((time.perf_counter() - t0) / len(ids))
        session.reset()
        t0 = time.perf_counter()
        for ch in chars:
            session.type(ch)
            session.suggestions(3)
        full.append((time.perf_counter() - t0) / len(ids))
    step, typed = min(bare), min(full)
    return {"keystrokes": len(ids), "step_ms": step * 1e3, "session_ms": typed * 1e3,
            "overhead_ms": (typed - step) * 1e3, "overhead": (typed - step) / step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="edge-gru", help="model preset (models/)")
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget (wall clock)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-words", type=int, default=5000, help="test-split words scored")
    ap.add_argument("--stream-words", type=int, default=2000, help="held-out stream for the streaming rows")
    ap.add_argument("--overhead-chars", type=int, default=3000, help="keystrokes timed for the overhead row")
    ap.add_argument("--run", type=Path, help="reuse this run directory instead of training")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    args = ap.parse_args()

    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"BLAS {blas.loaded or 'reference'}; preset {args.preset}, {args.minutes:g} min budget", flush=True)
    words = wikitext().split()
    stream, rest = " ".join(words[-args.stream_words:]), " ".join(words[: -args.stream_words])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "wikitext2-train-part.txt"  # never inside the repo
        corpus.write_text(rest)
        config = load_preset(args.preset)
        run = args.run
        if run is None:
            run = tmp / "run"
            t0 = time.perf_counter()
            final = train(config, TrainConfig(corpus=str(corpus), steps=10**9, batch_size=args.batch_size, lr=args.lr,
                                              eval_every=10**9, minutes=args.minutes), run)
            print(f"trained {final['steps']} steps in {time.perf_counter() - t0:.0f} s; valid top-1 "
                  f"{final.get('top1', float('nan')):.2%}", flush=True)
        fp32 = export_bundle(run, tmp / "fp32", with_log_probs=True)
        int8, _ = quantize(fp32, "int8", tmp / "int8")
        model = RunKeyboard(run)
        splits = make_splits(rest, "autocomplete", config.vocab_size)  # train's own split and vocabulary
        vocab = splits.vocab
        if vocab.words != model.vocab.words:
            raise SystemExit(f"{run} was not trained on this text (its vocabulary differs)")
        train_words = training_words(splits.train)
        baselines = {"prefix frequency": PrefixFrequency(vocab, train_words),
                     "KN trigram (interpolated Kneser-Ney)": KneserNeyTrigram(vocab, train_words)}
        test = first_words(splits.test, args.max_words)
        keyboards = {"model: run (MLX, batched)": model,
                     "model: ONNX fp32 bundle (Session)": open_session(fp32, restart="continuous"),
                     "model: ONNX int8 bundle (Session)": open_session(int8, restart="continuous"),
                     **baselines}
        results = {name: evaluate_keyboard(k, test, progress(name)) for name, k in keyboards.items()}
        stream_data = encode_autocomplete(stream, vocab, max_len=len(stream) + 2)  # one text field
        streaming = {f"model: fp32, restart={r}": open_session(fp32, restart=r) for r in ("continuous", "observation")}
        stream_results = {name: evaluate_keyboard(k, stream_data, progress(name))
                          for name, k in {**streaming, **baselines}.items()}
        cost = overhead(fp32, stream, args.overhead_chars)

    n = results["prefix frequency"]
    print(f"\nTest split: first {n['words']:,} words ({n['positions']:,} positions) of WikiText-2 "
          f"(valid+test minus the held-out stream, 90/5/5); {config.cell} {config.layers}x{config.units}, "
          f"{config.vocab_size:,} words, trained {args.minutes:g} min on this machine\n")
    print(HEADER)
    for name, r in results.items():
        print(row(name, r))
    s = stream_results["prefix frequency"]
    print(f"\nHeld-out stream: the last {s['words']:,} words of WikiText-2 typed into one text field\n")
    print(HEADER)
    for name, r in stream_results.items():
        print(row(name, r))
    print(f"\nRuntime overhead (fp32 ONNX bundle, 1 thread, {cost['keystrokes']:,} keystrokes, best of 3): "
          f"bare step {cost['step_ms']:.3f} ms, Session.type + suggestions(3) {cost['session_ms']:.3f} ms, "
          f"overhead {cost['overhead_ms']:.3f} ms = {cost['overhead']:.1%} of the step")
    if args.json:
        args.json.write_text(json.dumps({"test": results, "stream": stream_results, "overhead": cost}, indent=2))


if __name__ == "__main__":
    main()
