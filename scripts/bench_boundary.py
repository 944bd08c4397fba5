"""Word boundaries: the whole head, or a shorter next-word candidate list?

At a word boundary (the space before a word, ~18 % of keystrokes on WikiText-2) the typed prefix
rules nothing out, so the prefix-range head computes every row: on an int8 edge bundle that
keystroke costs about twice a narrow one. A keyboard could instead score only the N most frequent
words there (a second, small head of their rows, stored once more) and suggest the best of those.
This measures both sides of that trade:

- accuracy: ``edge_rnn.keyboard`` metrics (top-1, top-3, next-word top-3 = top-3 at 0 letters,
  KSR with 3 slots) of a trained model whose suggestions at 0 letters are restricted to its N most
  frequent words (ids 2..N+1: run vocabularies are in frequency order), against the whole head.
  The model is the ``tiny`` preset trained on the demo corpus as the tests train it (or ``--run``);
- latency: ONNX Runtime (1 thread) on an edge-sized int8 head (10,002 x 256, random): the whole
  pre-packed int8 head (``MatMulInteger`` on h quantized once, what the int8 prefix bundle runs
  at a boundary) against an N-row pre-packed int8 head, with N the same share of the vocabulary.

    python scripts/bench_boundary.py                   # trains tiny for 150 steps (~1 min)
    python scripts/bench_boundary.py --run runs/tiny --shares 0.05 0.1 0.2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_rnn.keyboard import RunKeyboard, metrics, suggest
from edge_rnn.runtime import StepOutput, top_k_stable
from edge_rnn.vocab import SYMBOLS

EDGE_V, EDGE_H = 10_002, 256


class BoundaryKeyboard(RunKeyboard):
    """A run's keyboard whose suggestions at 0 letters come from its ``n`` most frequent words."""

    def __init__(self, run_dir: Path, n: int | None):
        super().__init__(run_dir)
        self.n = n

    def suggest(self, data, k, progress=None) -> np.ndarray:
        out = np.full((int(data.lengths.sum()), k), -1, np.int64)
        row = 0
        for rows, chars, lp_all in self.log_probs(data):
            for b, length in enumerate(data.lengths[rows]):
                text = "".join(SYMBOLS[c] for c in chars[b, :length])
                for t in range(length):
                    lp = lp_all[b, t].copy()
                    prefix = text[: t + 1].rsplit(" ", 1)[-1]
                    if not prefix and self.n is not None:  # a word boundary: the candidate list only
                        lp[2 + self.n:] = -np.inf
                    top = top_k_stable(lp, k)
                    ids, _ = self.index.best(StepOutput(top, np.exp(lp[top]), lp), prefix, k, False)
                    out[row, :len(ids)] = ids
                    row += 1
        return out


def accuracy(run: Path, shares: list[float]) -> list[dict]:
    """Keyboard metrics on the run's test split: the whole head, then each candidate list."""
    from edge_rnn.evaluate import run_splits

    test = run_splits(run, None).test
    keyboard = BoundaryKeyboard(run, None)
    n_words = len(keyboard.vocab.words) - 2
    rows = []
    for share in [None, *shares]:
        keyboard.n = None if share is None else max(1, round(share * n_words))
        rows.append({"share": share, "n": keyboard.n or n_words, "metrics": metrics(test, suggest(keyboard, test, 3))})
    return rows


def _int8_head(rows: int, rng) -> tuple:
    """A pre-packed int8 head of ``rows`` words as ONNX Runtime runs it: h quantized once, then
    ``MatMulInteger`` (constant weight), scale, bias, softmax, top-3."""
    import onnxruntime as ort
    from onnx import TensorProto as T, helper as H, numpy_helper as nh

    W = rng.normal(0, 0.1, (EDGE_H, rows)).astype(np.float32)
    scale = (np.abs(W).max(0) / 64).astype(np.float32)
    Wq = np.clip(np.rint(W / scale), -64, 64).astype(np.int8)
    nodes = [H.make_node("DynamicQuantizeLinear", ["h"], ["hq", "hs", "hz"]),
             H.make_node("MatMulInteger", ["hq", "Wq", "hz"], ["mi"]),
             H.make_node("Cast", ["mi"], ["mf"], to=T.FLOAT), H.make_node("Mul", ["hs", "s"], ["sc"]),
             H.make_node("Mul", ["mf", "sc"], ["m"]), H.make_node("Add", ["m", "b"], ["y"]),
             H.make_node("Softmax", ["y"], ["p"], axis=-1),
             H.make_node("TopK", ["p", "k"], ["tp", "ti"], axis=-1)]
    inits = [nh.from_array(Wq, "Wq"), nh.from_array(scale, "s"), nh.from_array(np.zeros(rows, np.float32), "b"),
             nh.from_array(np.array([3]), "k")]
    graph = H.make_graph(nodes, "head", [H.make_tensor_value_info("h", T.FLOAT, [1, EDGE_H])],
                         [H.make_tensor_value_info("tp", T.FLOAT, [1, 3]), H.make_tensor_value_info("ti", T.INT64, [1, 3])],
                         inits)
    model = H.make_model(graph, opset_imports=[H.make_opsetid("", 18)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def head_us(rows: int, reps: int = 2000) -> float:
    """Median thread CPU time of one head call, microseconds."""
    rng = np.random.default_rng(0)
    session = _int8_head(rows, rng)
    h = rng.normal(0, 0.5, (1, EDGE_H)).astype(np.float32)
    for _ in range(100):
        session.run(None, {"h": h})
    times = []
    for _ in range(reps):
        start = time.thread_time()
        session.run(None, {"h": h})
        times.append(time.thread_time() - start)
    return float(np.median(times) * 1e6)


def train_tiny(out: Path) -> Path:
    """The tests' trained model: ``tiny`` for 150 steps on 3,000 demo sentences (conftest.py)."""
    from edge_rnn.data import demo_corpus
    from edge_rnn.model import load_preset
    from edge_rnn.train import TrainConfig, train

    corpus = out / "demo.txt"
    corpus.write_text(demo_corpus(n_sentences=3000, seed=1))
    train(load_preset("tiny"), TrainConfig(corpus=str(corpus), steps=150, batch_size=16, lr=1e-2,
                                           eval_every=75, seed=0), out / "tiny")
    return out / "tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained autocomplete run (default: train tiny on demo text)")
    parser.add_argument("--shares", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.4],
                        help="candidate lists as shares of the vocabulary")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-boundary-") as tmp:
        run = args.run or train_tiny(Path(tmp))
        print(f"keyboard metrics on the test split of {run}; latency: int8 head of N x {EDGE_H}, "
              f"ONNX Runtime 1 thread, N = share x {EDGE_V - 2:,} words\n")
        whole = head_us(EDGE_V)
        print("| boundary candidates | share | top-1 | top-3 | next-word top-3 | KSR | boundary head us (edge) | vs whole |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in accuracy(run, args.shares):
            m, share = row["metrics"], row["share"]
            us = whole if share is None else head_us(int(share * (EDGE_V - 2)))
            label = "whole head" if share is None else f"{row['n']} most frequent"
            print(f"| {label} | {1.0 if share is None else share:.0%} | {m['top1']:.2%} | {m['top3']:.2%} "
                  f"| {m['next_word_top3']:.2%} "
                  f"| {m['ksr']:.2%} | {us:.1f} | {us / whole:.2f}x |")


if __name__ == "__main__":
    main()
