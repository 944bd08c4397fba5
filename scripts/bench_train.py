"""Training throughput, ours (MLX) against PyTorch CPU, side by side in one process.

    pip install torch==2.13.0            # benchmark-only dependency (CPU build)
    python -m edge_rnn.ext               # optional: the vectorised kernels (see edge_rnn/ext)
    python scripts/bench_train.py        # edge presets + the article's 2x600, B=64, T=200
    python scripts/bench_train.py --quick

One training step = forward + backward + Adam update over a (batch, seq) block of characters with
a target at every position (the autocomplete task's shape: embedding -> cells -> word head).
"chars/s" = batch * seq / (seconds per step). For every model the implementations run
interleaved, round after round, so that load from other processes hits them alike; the table
reports the median step time over all rounds.

- torch:    nn.GRU / nn.LSTM (MKL/oneDNN kernels), hand-written CIFG and Nested LSTM modules
            (all in scripts/torch_cells.py);
            nn.Embedding + nn.Linear head + F.cross_entropy, torch.optim.Adam.
- ours:     edge_rnn.model.RNNModel with the hand-written BPTT (the default), the fused softmax
            cross-entropy, Adam, the whole step under mx.compile (as edge_rnn.train does).
- autodiff: the same model and step with ``cell.manual_backward = False`` (MLX autodiff).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # torch_cells

import edge_rnn  # noqa: E402  (loads the fast BLAS before MLX)
import mlx.core as mx  # noqa: E402
import mlx.nn as mnn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402

from edge_rnn import blas, ext  # noqa: E402
from edge_rnn.model import RNNModel, load_preset  # noqa: E402
from edge_rnn.vocab import N_SYMBOLS  # noqa: E402

CACHE_LIMIT = 8 << 30
PRESETS = ["edge-gru", "edge-lstm", "edge-nlstm", "article-gru", "article-lstm", "article-nlstm"]


# ---- PyTorch side --------------------------------------------------------------------------------

def torch_model(cfg):
    """The same model in PyTorch (``scripts/torch_cells.py``: nn.GRU/LSTM/RNN, hand-written CIFG/NLSTM)."""
    import torch_cells

    return torch_cells.Model(cfg)


def torch_runner(cfg, ids, targets):
    import torch

    torch.manual_seed(0)
    model = torch_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ids_t, targets_t = torch.from_numpy(ids).long(), torch.from_numpy(targets).long()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(ids_t, targets_t)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


# ---- our side ------------------------------------------------------------------------------------

def mlx_runner(cfg, ids, targets, manual: bool):
    # MLX's CPU allocator caches at most 32 MB of freed buffers by default, so every (B*T, V)
    # logits/gradient buffer (512 MB here) would come fresh from the OS, page faults and all.
    mx.set_cache_limit(max(mx.set_cache_limit(0), CACHE_LIMIT))
    mx.random.seed(0)
    model = RNNModel(cfg)
    for cell in model.layers:
        cell.manual_backward = manual
    optimizer = optim.Adam(learning_rate=1e-4)
    loss_and_grad = mnn.value_and_grad(model, model.loss)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def update(ids, targets):
        (loss, _), grads = loss_and_grad(ids, targets)
        optimizer.update(model, grads)
        return loss

    ids_m, targets_m = mx.array(ids), mx.array(targets)

    def step():
        loss = update(ids_m, targets_m)
        mx.eval(loss, state)
        return loss.item()

    return step


# ---- driver --------------------------------------------------------------------------------------

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=PRESETS, help="presets to run (models/NAME.json)")
    p.add_argument("--batch", type=int, default=64, help="sequences per step")
    p.add_argument("--seq", type=int, default=200, help="characters per sequence")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median step counts")
    p.add_argument("--steps", type=int, default=1, help="timed steps per implementation per round")
    p.add_argument("--no-autodiff", action="store_true", help="skip the (slow) MLX autodiff column")
    p.add_argument("--quick", action="store_true", help="small smoke run: batch 16, seq 50, edge presets, 2 rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.rounds = 16, 50, 2
        args.models = [m for m in args.models if m.startswith("edge-")] or args.models

    import torch

    print(f"# {platform.processor() or platform.machine()}, {mx.__version__=}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), BLAS under MLX: {blas.loaded or 'reference'}, "
          f"edge_rnn.ext: {'on (' + ext._ext.simd + ')' if ext.available else ext.error}", flush=True)
    print(f"# batch {args.batch}, seq {args.seq}, {args.rounds} rounds x {args.steps} step(s); "
          "median seconds per step -> chars/s\n", flush=True)

    rows = []
    for name in args.models:
        cfg = load_preset(name)
        rng = np.random.default_rng(0)
        ids = rng.integers(1, N_SYMBOLS, (args.batch, args.seq)).astype(np.int32)
        targets = rng.integers(2, cfg.n_outputs, (args.batch, args.seq)).astype(np.int32)  # all carry loss
        runners = {"torch": torch_runner(cfg, ids, targets), "ours": mlx_runner(cfg, ids, targets, True)}
        if not args.no_autodiff:
            runners["autodiff"] = mlx_runner(cfg, ids, targets, False)
        times = {k: [] for k in runners}
        for k, run in runners.items():  # warm-up: compilation, allocation
            run()
        for _ in range(args.rounds):
            for k, run in runners.items():
                for _ in range(args.steps):
                    t = time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - t)
        cps = {k: args.batch * args.seq / statistics.median(v) for k, v in times.items()}
        size = f"{cfg.layers}x{cfg.units} {cfg.cell}" + (f" d{cfg.depth}" if cfg.cell == "nlstm" else "")
        rows.append((name, size, cfg.n_outputs, cps))
        detail = ", ".join(f"{k} {' '.join(f'{t:.2f}' for t in v)}" for k, v in times.items())
        print(f"# {name}: step seconds: {detail}", flush=True)
        del runners

    print("\n| model | size | outputs | torch chars/s | ours chars/s | ours / torch | autodiff chars/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, size, outputs, cps in rows:
        auto = f"{cps['autodiff']:,.0f}" if "autodiff" in cps else "-"
        print(f"| {name} | {size} | {outputs:,} | {cps['torch']:,.0f} | {cps['ours']:,.0f} | "
              f"{cps['ours'] / cps['torch']:.2f}x | {auto} |")


if __name__ == "__main__":
    main()
