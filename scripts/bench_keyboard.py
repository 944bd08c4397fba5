"""Keyboard metrics of an edge model trained for a fixed budget on WikiText-2, beside both baselines.

    flock /tmp/heavy.lock python scripts/bench_keyboard.py [--minutes 5] [--preset edge-cifg]

1. Text: WikiText-2 valid + test from ../shared/corpus, normalised like training. Its last
   ``--stream-words`` words are held out as one contiguous stream (for the streaming rows); the
   rest is split 90/5/5 into observations (``make_splits``, as ``edge-rnn train`` does).
2. Train the preset for ``--minutes`` of wall clock; export an ONNX bundle (fp32, with log_probs)
   and quantize it to int8.
3. Keyboard table on the first ``--max-words`` words of the test split: the run (MLX, batched),
   the fp32 and int8 bundles (each through ``runtime.Session``: what an app ships), prefix
   frequency and the Kneser-Ney trigram (both built from the training split).
4. Streaming: the held-out stream typed into one text field, ``Session(restart="continuous")``
   against ``restart="observation"`` at each ``--contexts`` length, beside both baselines.
5. Runtime cost: mean time per keystroke of ``Session.type`` + ``suggestions(3)`` against the bare
   step (the step graph run in place through IOBindings, as the session runs it; ONNX Runtime's
   plain ``run`` beside it), split into the restarts' prefill calls and the runtime's own Python
   (1 thread): the fp32 bundle under each restart policy, the fp32 and int8
   prefix-head bundles under the default one. ``--overhead-only`` prints this table alone.

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
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edge_rnn import blas
from edge_rnn.baselines import KneserNeyTrigram, PrefixFrequency, training_words
from edge_rnn.data import encode_autocomplete, make_splits, normalise
from edge_rnn.export.bundle import export_bundle
from edge_rnn.keyboard import RunKeyboard, evaluate_keyboard, first_words, model_keyboard, relabel
from edge_rnn.model import load_preset
from edge_rnn.quantize import quantize
from edge_rnn.runtime import CONTEXT_CHARS, RESTART, SYMBOL_ID, ONNXBackend, open_session
from edge_rnn.train import TrainConfig, train

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
LETTERS = ("0", "1", "2", "3", "4+")


def wikitext() -> str:
    parts = [CORPUS / "wikitext2-valid.txt", CORPUS / "wikitext2-test.txt"]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SystemExit(f"corpus not found: {', '.join(missing)}")
    return normalise("".join(p.read_text() for p in parts))


def held_out(stream_words: int) -> tuple[str, str]:
    """WikiText-2 as ``(stream, rest)``: its last ``stream_words`` words, held out as one text
    field, and the text that is split 90/5/5 and trained on."""
    words = wikitext().split()
    return " ".join(words[-stream_words:]), " ".join(words[:-stream_words])


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


class TimedSession:
    """An ONNX Runtime session that counts its ``run`` calls (plain or with an IOBinding, as the
    session's output ring runs them) and adds up the seconds they take (``perf_counter``: 0.14 us
    a call here, ``thread_time`` 0.9 us, which would count as Python)."""

    def __init__(self, session):
        self.session, self.seconds, self.calls = session, 0.0, 0

    def io_binding(self):
        return self.session.io_binding()

    def run(self, *args, **kwargs):
        return self._timed(self.session.run, *args, **kwargs)

    def run_with_iobinding(self, *args, **kwargs):
        return self._timed(self.session.run_with_iobinding, *args, **kwargs)

    def _timed(self, call, *args, **kwargs):
        t0 = time.perf_counter()
        out = call(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


class Keystroke(NamedTuple):
    """One keystroke of the bare loops, with its inputs ready."""

    char_id: int
    span: np.ndarray | None  # a prefix head's range of the word typed so far, as the session computes it


def keystrokes(backend, chars: str) -> list[Keystroke]:
    spans: list = [None] * len(chars)
    if backend.prefix_head:
        typed = iter(w[:k + 1] for w in chars.split(" ") for k in range(len(w)))  # one per letter
        spans = [backend.range("" if c == " " else next(typed)) for c in chars]
    return [Keystroke(SYMBOL_ID[c], span) for c, span in zip(chars, spans)]


def bare_steps(backend, keys: list[Keystroke], state: list, first: int) -> list:
    """The step graph alone, keystroke ``first`` onwards: into ``backend``'s ring as a session
    runs it, or with plain ``run`` calls for an ``ONNXBackend(in_place=False)``."""
    for k, key in enumerate(keys, first):
        state = backend.step_range(key.char_id, state, key.span, k)[1]
    return state


def overhead(bundle: Path, text: str, n: int, rounds: int = 5, block: int = 250, **options) -> dict:
    """Mean CPU time per keystroke of ``Session.type`` + ``suggestions(3)`` against the bare step.

    The bare step is the step graph on ready inputs, all an app must pay, two ways: ONNX Runtime's
    ``run`` (new output arrays each keystroke) and in place (a ring of IOBindings, as the session
    runs it). Inside the session the graph calls are timed too, so the difference splits into the
    model work the runtime adds (prefill calls of observation restarts) and its own Python (stack,
    marks, text, suggestion search). The three loops alternate every ``block`` keystrokes (each
    continuing its own text field), so a slow phase of a shared machine hits them alike; the
    calling thread's CPU time is counted (ONNX Runtime computes on it with 1 thread); the round
    with the fastest session is kept.
    """
    chars = (" " + text.strip())[:n]
    session = open_session(bundle, **options)
    backend = session.backend
    keys = keystrokes(backend, chars)
    in_place = open_session(bundle, **options).backend  # a ring of its own
    plain = ONNXBackend(bundle, in_place=False)
    graph, wide_graph = backend.session, backend._wide  # a split prefix head has two step graphs
    prefill = backend._load(backend.manifest["export"]["prefill"]["file"])
    backend.session, backend._prefill = TimedSession(graph), TimedSession(prefill)
    backend._wide = wide_graph and TimedSession(wide_graph)
    timed = [t for t in (backend.session, backend._wide) if t]
    rows = []
    for _ in range(rounds):
        plain_state, ring_state, run, bare, full = backend.initial_state(), backend.initial_state(), 0.0, 0.0, 0.0
        for t in [*timed, backend._prefill]:
            t.seconds = t.calls = 0
        session.reset()
        for lo in range(0, len(chars), block):
            t0 = time.thread_time()
            plain_state = bare_steps(plain, keys[lo:lo + block], plain_state, lo)
            t1 = time.thread_time()
            ring_state = bare_steps(in_place, keys[lo:lo + block], ring_state, lo)
            t2 = time.thread_time()
            for ch in chars[lo:lo + block]:
                session.type(ch)
                session.suggestions(3)
            t3 = time.thread_time()
            run, bare, full = run + t1 - t0, bare + t2 - t1, full + t3 - t2
        # typing only, no backspace: every prefill call is a restart
        rows.append((full, bare, run, sum(t.seconds for t in timed), backend._prefill.seconds, backend._prefill.calls))
    backend.session, backend._prefill, backend._wide = graph, prefill, wide_graph
    full, bare, run, in_step, in_prefill, restarts = min(rows)
    typed, step, run, in_step, in_prefill = (x / len(chars) for x in (full, bare, run, in_step, in_prefill))
    python = typed - in_step - in_prefill
    return {"keystrokes": len(chars), "options": options, "run_ms": run * 1e3, "step_ms": step * 1e3,
            "session_ms": typed * 1e3, "prefill_ms": in_prefill * 1e3, "python_ms": python * 1e3,
            "overhead_ms": (typed - step) * 1e3, "overhead": (typed - step) / step, "restarts": restarts}


def runtime_costs(fp32: Path, prefix: Path, int8_prefix: Path, stream: str, args) -> dict:
    """``overhead`` of the fp32 full head streaming continuously and under observation restarts at
    each ``--contexts`` length; of the prefix-head bundles under the default policy."""
    def policy(restart: str, c: int = CONTEXT_CHARS) -> str:
        observation = restart == "observation"
        default = restart == RESTART and (not observation or c == CONTEXT_CHARS)
        return f"restart={restart}" + (f", context {c}" if observation else "") + (" (default)" if default else "")

    costs = {f"fp32 + log_probs, {policy('continuous')}": overhead(fp32, stream, args.overhead_chars,
                                                                  restart="continuous")}
    for c in args.contexts:
        costs[f"fp32 + log_probs, {policy('observation', c)}"] = overhead(
            fp32, stream, args.overhead_chars, restart="observation", context_chars=c)
    for name, bundle in (("fp32 prefix head", prefix), ("int8 prefix head", int8_prefix)):
        costs[f"{name}, {policy(RESTART)}"] = overhead(bundle, stream, args.overhead_chars)
    return costs


def print_costs(costs: dict) -> None:
    keystrokes = next(iter(costs.values()))["keystrokes"]
    print(f"\nRuntime cost per keystroke (ONNX Runtime 1 thread, the first {keystrokes:,} keystrokes of the "
          "stream; thread CPU time, the bare steps and the session alternating every 250 keystrokes, best of 5 "
          "rounds)\n")
    print("| bundle, session | bare step, run (ms) | bare step, in place (ms) | Session.type + suggestions(3) (ms) | "
          "restart prefill (ms) | runtime's Python (ms) | Python / bare step in place | overhead vs bare step in place "
          "| restarts |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, c in costs.items():
        print(f"| {name} | {c['run_ms']:.3f} | {c['step_ms']:.3f} | {c['session_ms']:.3f} | {c['prefill_ms']:.3f} | "
              f"{c['python_ms']:.3f} | {c['python_ms'] / c['step_ms']:.1%} | {c['overhead']:+.1%} | {c['restarts']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="edge-cifg", help="model preset (models/; edge-cifg: the default choice)")
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget (wall clock)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (warm-up, cosine decay)")
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout on the non-recurrent connections")
    ap.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay,
                    help="decoupled weight decay on the matrices")
    ap.add_argument("--ema", type=float, default=TrainConfig.ema, help="decay of the weight average the model is saved as")
    ap.add_argument("--rechunk", action=argparse.BooleanOptionalAction, default=TrainConfig.rechunk,
                    help="cut the training text at other word boundaries each epoch")
    ap.add_argument("--stateful", action=argparse.BooleanOptionalAction, default=TrainConfig.stateful,
                    help="truncated BPTT over lanes of the training text, the state carried between steps")
    ap.add_argument("--distill", type=float, default=TrainConfig.distill,
                    help="weight of the KN trigram teacher at word boundaries (edge_rnn.distill)")
    ap.add_argument("--label-smoothing", type=float, default=TrainConfig.label_smoothing,
                    help="share of every target spread evenly over the words")
    ap.add_argument("--train-fraction", type=float, default=TrainConfig.train_fraction,
                    help="train (model and both baselines) on this share of the training text only, whole runs drawn at random")
    ap.add_argument("--head-dim", type=int, help="override the preset's bottleneck before the head (0: none)")
    ap.add_argument("--units", type=int, help="override the preset's units per layer")
    ap.add_argument("--layers", type=int, help="override the preset's number of layers")
    ap.add_argument("--objective", default="word", help="training objective: word (every word) or prefix "
                    "(the typed prefix's words; edge_rnn.prefix)")
    ap.add_argument("--eval-every", type=int, default=10**9,
                    help="validate (and log training loss) every N steps in metrics.jsonl (default: only at the end)")
    ap.add_argument("--max-words", type=int, default=5000, help="test-split words scored")
    ap.add_argument("--stream-words", type=int, default=2000, help="held-out stream for the streaming rows")
    ap.add_argument("--overhead-chars", type=int, default=3000, help="keystrokes timed for the overhead row")
    ap.add_argument("--run", type=Path, help="reuse this run directory instead of training")
    ap.add_argument("--out", type=Path, help="keep the run and bundles here (default: a temporary folder)")
    ap.add_argument("--contexts", type=int, nargs="+", default=[100, 50, 30],
                    help="context_chars of the restart=observation rows (characters carried into a restart)")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    ap.add_argument("--overhead-only", action="store_true",
                    help="only the runtime cost table (no keyboard metrics); with --run, no training")
    args = ap.parse_args()

    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"BLAS {blas.loaded or 'reference'}; preset {args.preset}"
          f"{'' if args.head_dim is None else f', head_dim {args.head_dim}'}"
          f"{'' if args.units is None else f', units {args.units}'}{'' if args.layers is None else f', layers {args.layers}'}"
          f"{f', dropout {args.dropout:g}' if args.dropout else ''}"
          f"{f', weight decay {args.weight_decay:g}' if args.weight_decay else ''}"
          f"{f', weight average {args.ema:g}' if args.ema else ''}{', rechunked' if args.rechunk else ''}"
          f"{f', trigram teacher {args.distill:g}' if args.distill else ''}"
          f"{f', label smoothing {args.label_smoothing:g}' if args.label_smoothing else ''}{', stateful' if args.stateful else ''}"
          f"{f', {args.train_fraction:.0%} of the training text' if args.train_fraction < 1 else ''}, "
          f"{args.minutes:g} min budget",
          flush=True)
    stream, rest = held_out(args.stream_words)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.out or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        corpus = tmp / "wikitext2-train-part.txt"  # never inside the repo
        corpus.write_text(rest)
        config = load_preset(args.preset)
        overrides = {"head_dim": args.head_dim, "units": args.units, "layers": args.layers}
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
        run = args.run
        if run is None:
            run = tmp / "run"
            t0 = time.perf_counter()
            final = train(config, TrainConfig(corpus=str(corpus), steps=10**9, batch_size=args.batch_size, lr=args.lr,
                                              dropout=args.dropout, weight_decay=args.weight_decay, ema=args.ema, rechunk=args.rechunk,
                                              distill=args.distill, stateful=args.stateful,
                                              label_smoothing=args.label_smoothing,
                                              objective=args.objective, train_fraction=args.train_fraction,
                                              eval_every=args.eval_every,
                                              minutes=args.minutes), run)
            print(f"trained {final['steps']} steps in {time.perf_counter() - t0:.0f} s; valid top-1 "
                  f"{final.get('top1', float('nan')):.2%}", flush=True)
        fp32 = export_bundle(run, tmp / "fp32", with_log_probs=True)
        int8, _ = quantize(fp32, "int8", tmp / "int8")
        prefix = export_bundle(run, tmp / "fp32-prefix", prefix_head=True)
        int8_prefix, _ = quantize(prefix, "int8", tmp / "int8-prefix")
        costs = runtime_costs(fp32, prefix, int8_prefix, stream, args)
        if args.overhead_only:
            print_costs(costs)
            return
        model = RunKeyboard(run)
        splits = make_splits(rest, "autocomplete", config.vocab_size)  # train's own split and vocabulary
        splits = splits.train_share(args.train_fraction, TrainConfig.seed)  # the text the run kept
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
        for name, bundle in (("model: ONNX fp32 prefix-head bundle (Session)", prefix),
                             ("model: ONNX int8 prefix-head bundle (Session)", int8_prefix)):
            session, alphabetical, _ = model_keyboard(bundle)  # ids in the bundle's alphabetical order
            results[name] = evaluate_keyboard(session, relabel(test, vocab, alphabetical), progress(name))
        stream_data = encode_autocomplete(stream, vocab, max_len=len(stream) + 2)  # one text field
        policies = {"restart=continuous": {"restart": "continuous"},
                    **{f"restart=observation, context {c}": {"restart": "observation", "context_chars": c}
                       for c in args.contexts}}
        streaming = {f"model: fp32, {name}": open_session(fp32, **o) for name, o in policies.items()}
        stream_results = {name: evaluate_keyboard(k, stream_data, progress(name))
                          for name, k in {**streaming, **baselines}.items()}

    n = results["prefix frequency"]
    print(f"\nTest split: first {n['words']:,} words ({n['positions']:,} positions) of WikiText-2 "
          f"(valid+test minus the held-out stream, 90/5/5); {config.cell} {config.layers}x{config.units}"
          f"{f' (head bottleneck {config.head_dim})' if config.head_dim else ''}, "
          f"{config.vocab_size:,} words, trained {args.minutes:g} min on this machine\n")
    print(HEADER)
    for name, r in results.items():
        print(row(name, r))
    s = stream_results["prefix frequency"]
    print(f"\nHeld-out stream: the last {s['words']:,} words of WikiText-2 typed into one text field\n")
    print(HEADER)
    for name, r in stream_results.items():
        print(row(name, r))
    print_costs(costs)
    if args.json:
        args.json.write_text(json.dumps({"test": results, "stream": stream_results, "overhead": costs}, indent=2))


if __name__ == "__main__":
    main()
