"""Data-parallel training on this machine: 1 vs 2 ranks, the all-reduce's cost, when it pays.

    python scripts/bench_distributed.py [--preset edge-gru] [--batch-size 32] [--steps 12]

Measures, for the same global batch: training chars/s of one process and of 2 ranks under
``mlx.launch`` (ring backend on 127.0.0.1), the gradient bytes each step sends, and the measured
time of an all-reduce of that many bytes. From those it prints the link speeds and model sizes
at which data parallelism pays: with R ranks a step costs ``compute / R + allreduce``, where a
ring all-reduce moves ``2 (R - 1) / R * bytes`` over each link, against ``compute`` for one.
Training text: WikiText-2 from ../shared/corpus when present, else the built-in demo corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "corpus"
LINKS = {"loopback (measured)": None, "1 GbE": 0.117e9, "10 GbE": 1.17e9, "Thunderbolt 4 (IP)": 2.5e9,
         "Thunderbolt 5 (RDMA)": 8.0e9}


def corpus() -> str:
    files = sorted(SHARED.glob("wikitext2-*.txt"))
    if not files:
        return "demo"
    path = Path(tempfile.gettempdir()) / "edge-rnn-wikitext2-valid+test.txt"
    if not path.exists():
        path.write_text("".join(f.read_text() for f in files))
    return str(path)


def measure(args) -> dict:
    """Run inside each rank (or alone): seconds per training step and per gradient all-reduce."""
    from edge_rnn import distributed  # first: edge_rnn loads a fast BLAS before MLX starts

    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    from edge_rnn.data import load_corpus, make_splits
    from edge_rnn.model import RNNModel, load_preset
    from edge_rnn.train import batch_at, make_step

    mx.set_cache_limit(4 << 30)
    ranks = distributed.init()
    config = load_preset(args.preset)
    splits = make_splits(load_corpus(args.corpus), config.task, config.vocab_size, 200, 0)
    config.vocab_size = len(splits.vocab) - 2
    mx.random.seed(0)
    model = RNNModel(config)
    optimizer = optim.Adam(learning_rate=1e-3)
    optimizer.init(model.trainable_parameters())
    step = make_step(model, optimizer, None, ranks)
    rows = distributed.shard(args.batch_size, ranks)
    times, chars = [], 0
    for k in range(args.steps + 2):  # two warm-up steps: compilation, allocator
        ids, targets = batch_at(splits.train, k, args.batch_size, 0, 200)
        start = time.perf_counter()
        loss, _, _ = step(mx.array(ids[rows]), mx.array(targets[rows]))
        mx.eval(loss, model.parameters())
        if k >= 2:
            times.append(time.perf_counter() - start)
            chars += int((ids != 0).sum())
    n_params = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    reduce_s = None
    if ranks.size > 1:
        buffer = mx.zeros((n_params,))
        mx.eval(mx.distributed.all_sum(buffer))
        start = time.perf_counter()
        for _ in range(5):
            mx.eval(mx.distributed.all_sum(buffer))
        reduce_s = (time.perf_counter() - start) / 5
    return {"ranks": ranks.size, "rank": ranks.rank, "step_s": sum(times) / len(times),
            "chars_per_s": chars / sum(times), "grad_bytes": 4 * n_params, "params": n_params,
            "allreduce_s": reduce_s}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(args) -> dict:
    out = Path(tempfile.mkdtemp()) / "rank0.json"
    command = [shutil.which("mlx.launch"), "-n", "2", "--backend", "ring", "--starting-port", str(free_port()),
               "--python", sys.executable, __file__, "--worker", str(out), "--preset", args.preset,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--corpus", args.corpus]
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="edge-gru")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (split over ranks)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per configuration")
    parser.add_argument("--corpus", default=None, help="default: WikiText-2 from ../shared, else demo")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.corpus = args.corpus or corpus()
    if args.worker:
        result = measure(args)
        if result["rank"] == 0:
            Path(args.worker).write_text(json.dumps(result))
        return
    print(f"{args.preset}, global batch {args.batch_size}, {args.steps} timed steps, corpus {Path(args.corpus).name}",
          flush=True)
    one = measure(args)
    print(f"1 process: {one['step_s'] * 1e3:.0f} ms/step, {one['chars_per_s']:,.0f} chars/s", flush=True)
    two = launch_two(args)
    report(args, one, two)


def report(args, one: dict, two: dict) -> None:
    mb = one["grad_bytes"] / 1e6
    loopback = two["grad_bytes"] / two["allreduce_s"]  # bytes of gradient reduced per second
    print(f"\n| configuration | ms/step | chars/s | vs 1 process |\n|---|---:|---:|---:|")
    print(f"| 1 process | {one['step_s'] * 1e3:.0f} | {one['chars_per_s']:,.0f} | 1.00x |")
    print(f"| 2 ranks, one machine (ring, loopback) | {two['step_s'] * 1e3:.0f} | {two['chars_per_s']:,.0f} | "
          f"{two['chars_per_s'] / one['chars_per_s']:.2f}x |")
    print(f"\ngradient per step: {one['params']:,} parameters = {mb:.1f} MB; loopback all-reduce of it: "
          f"{two['allreduce_s'] * 1e3:.1f} ms ({loopback / 1e9:.2f} GB/s effective)")
    compute = one["step_s"]  # one machine's step on the whole global batch
    print(f"\nWhen 2 machines, each as fast as this one, beat one (step = compute/2 + all-reduce; "
          f"compute here {compute * 1e3:.0f} ms for the global batch):\n")
    print("| link | all-reduce of this model | 2-machine step | speed-up | pays above (compute per step) |")
    print("|---|---:|---:|---:|---:|")
    for name, bandwidth in LINKS.items():
        seconds = two["allreduce_s"] if bandwidth is None else mb * 1e6 / bandwidth  # 2 ranks: 2(R-1)/R = 1
        step = compute / 2 + seconds
        print(f"| {name} | {seconds * 1e3:.1f} ms | {step * 1e3:.0f} ms | {compute / step:.2f}x | "
              f"{2 * seconds * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
