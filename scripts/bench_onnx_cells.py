"""Native ONNX RNN/GRU/LSTM operators vs the MatMul-form cell graphs, in ONNX Runtime.

Times one keystroke (the step graph, batch 1) and a prefill of a whole string (the prefill graph)
for each cell and both forms, with 1 intra-op thread: what a phone keyboard gets. The winner per
cell and graph is ``DEFAULT_IMPL`` in ``edge_rnn/export/onnx.py``.

    python scripts/bench_onnx_cells.py                 # edge-size and article-size models
    python scripts/bench_onnx_cells.py --units 600 --embed-dim 600 --vocab-size 3
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
import numpy as np
import onnxruntime as ort

from edge_rnn.export.contract import state_names
from edge_rnn.export.onnx import NATIVE_CELLS, build_models
from edge_rnn.model import ModelConfig, RNNModel


def session(model_proto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def timed(fn, repeats: int, rounds: int = 5) -> float:
    """Best over ``rounds`` of the mean CPU time of ``repeats`` calls, in microseconds.

    CPU time of the calling thread, not wall time: with one intra-op thread ONNX Runtime runs the
    graph on the caller's thread, and thread time does not count the waits a shared, busy machine
    adds (wall time on this 2-core box varied 3x between runs; thread time is stable).
    """
    fn()
    means = []
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(repeats):
            fn()
        means.append((time.thread_time() - start) / repeats * 1e6)
    return min(means)


def bench(config: ModelConfig, impl: str, steps: int, prefill_len: int) -> tuple[float, float]:
    mx.random.seed(0)
    models = build_models(RNNModel(config), top_k=3, impl=impl)
    states = {n: np.zeros((1, config.units), np.float32) for n in state_names(config)}
    step, prefill = session(models["step"]), session(models["prefill"])
    step_feed = {"char": np.array([5], np.int32), **states}
    chars = np.random.default_rng(0).integers(1, 28, (1, prefill_len)).astype(np.int32)
    prefill_feed = {"chars": chars, **states}
    return (timed(lambda: step.run(None, step_feed), steps),
            timed(lambda: prefill.run(None, prefill_feed), max(1, steps // prefill_len)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, nargs="*", default=[256, 600], help="hidden sizes to try")
    parser.add_argument("--embed-dim", type=int, default=None, help="embedding size (default: 64 for H<600, else H)")
    parser.add_argument("--layers", type=int, default=2, help="stacked layers")
    parser.add_argument("--vocab-size", type=int, default=3,
                        help="output words; small isolates the cells from the head (default 3)")
    parser.add_argument("--steps", type=int, default=500, help="step calls per timing round")
    parser.add_argument("--prefill-len", type=int, default=100, help="characters per prefill call")
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, 1 thread, batch 1, {args.layers} layers, "
          f"vocab {args.vocab_size}; step in us/keystroke, prefill in us per {args.prefill_len} chars")
    print(f"{'cell':6} {'H':>4} | {'step matmul':>11} {'step native':>11} | "
          f"{'prefill matmul':>14} {'prefill native':>14}")
    for units in args.units:
        embed = args.embed_dim or (64 if units < 600 else units)
        for cell in NATIVE_CELLS:
            config = ModelConfig(cell=cell, layers=args.layers, units=units, embed_dim=embed,
                                 vocab_size=args.vocab_size)
            (sm, pm), (sn, pn) = (bench(config, impl, args.steps, args.prefill_len)
                                  for impl in ("matmul", "native"))
            print(f"{cell:6} {units:4} | {sm:11.1f} {sn:11.1f} | {pm:14.0f} {pn:14.0f}")


if __name__ == "__main__":
    main()
