"""Learning per step: edge_rnn against PyTorch on identical batches, for every cell at 1 and 2 layers.

    pip install -e ".[bench]"                      # torch (CPU build): benchmark-only dependency
    python scripts/compare_learning.py             # 5 cells x {1, 2} layers, 100/500/2000 steps
    python scripts/compare_learning.py --cells gru --layers 2 --steps 400 --variants default old-init
    python scripts/compare_learning.py --no-torch --json edge.json &      # the two sides in parallel
    python scripts/compare_learning.py --variants --json torch.json       # (one core each), then
    python scripts/compare_learning.py --merge edge.json torch.json --plot curves.png

Both sides train the same architecture (embedding -> cells -> word head) on the same batches, in
the same order: edge_rnn's own splits of the corpus (``make_splits``) and ``train.batch_at``, with
Adam at the same learning rate and schedule. edge_rnn trains exactly as ``edge-rnn train`` does
(``train.make_optimizer`` and ``train.make_step``: compiled step, hand-written BPTT, fused loss);
PyTorch is ``scripts/torch_cells.Model`` with PyTorch's default initialisation and
``torch.optim.Adam``. Both report, at each checkpoint, valid cross-entropy and top-1 on the same
first ``--eval-batches`` validation batches (``top1_known``: positions whose target is a known
word; the article's ``top1`` counts <unk> positions as misses and is printed too in the JSON).

``--variants`` adds edge_rnn rows with an initialisation or optimizer setting changed (the ablation
used to find what made stacks slow; see ``VARIANTS``). ``--merge`` joins the JSON of runs that
trained the sides apart (``--no-torch`` / ``--variants`` with no name) into one table and plot:
learning per step does not depend on which process ran it, so on two cores each side can have one.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import textwrap
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import edge_rnn  # noqa: E402,F401  (loads the fast BLAS before MLX)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from edge_rnn import train as training  # noqa: E402
from edge_rnn.bench import CORPUS_DIR  # noqa: E402
from edge_rnn.data import make_splits, normalise  # noqa: E402
from edge_rnn.cells import NestedLSTM  # noqa: E402
from edge_rnn.evaluate import evaluate  # noqa: E402
from edge_rnn.model import ModelConfig, RNNModel  # noqa: E402
from edge_rnn.schedule import learning_rate  # noqa: E402
from edge_rnn.vocab import PAD, UNK  # noqa: E402

CELLS = ("rnn", "gru", "lstm", "cifg", "nlstm")
DATE = re.compile(r", (\d{4}-\d{2}-\d{2})(?=;)")  # the run date in a header (compare_learning.main)


# ---- edge_rnn variants (the ablation) ------------------------------------------------------------

def _old_embedding(model: RNNModel, config: training.TrainConfig):
    """The embedding scale before issue 14: rows of norm ~1 (N(0, 1/E)) instead of N(0, 1)."""
    model.embedding = model.embedding * (1.0 / model.config.embed_dim**0.5)
    return model, config


def _no_bias_correction(model, config):
    """MLX Adam's default before issue 14: no bias correction (steps up to ~6x lr early on)."""
    return model, replace(config, adam_bias_correction=False)


def _old_init(model, config):
    """Both of the above: edge_rnn's training as it was when issue 14 was filed."""
    return _no_bias_correction(*_old_embedding(model, config))


def _torch_init(model: RNNModel, config):
    """PyTorch's recurrent init in our cells: every Wx, Wh, b U(-1/sqrt(H), 1/sqrt(H)), no forget bias."""
    bound = 1 / model.config.units**0.5
    for cell in model.layers:
        for name, value in _arrays(cell):
            _assign(cell, name, mx.random.uniform(-bound, bound, value.shape))
    return model, config


def _no_forget_bias(model: RNNModel, config):
    """Our init with every gate bias at 0 (no forget bias +1, no CIFG input bias -1)."""
    for cell in model.layers:
        for name, value in _arrays(cell):
            if name.split(".")[-1] == "b":
                _assign(cell, name, mx.zeros(value.shape))
    return model, config


def _nlstm_forget_bias(model: RNNModel, config, inner: bool = True):
    """The Nested LSTM's init before 2026-12-03 (the reference's): forget bias +1 at every depth;
    ``inner=False``: on the outer level only."""
    H = model.config.units
    for cell in model.layers:
        if isinstance(cell, NestedLSTM):
            cell._set_bias("f", 1.0)
            for level in cell.inner if inner else []:
                level.b = level.b.at[H : 2 * H].add(1.0)
    return model, config


def _constant_lr(model, config):
    """The recipe's schedule off: a constant learning rate."""
    return model, replace(config, schedule="constant")


def _no_clip(model, config):
    return model, replace(config, clip=None)


def _arrays(module):
    from mlx.utils import tree_flatten
    return tree_flatten(module.parameters())


def _assign(module, dotted: str, value: mx.array) -> None:
    *path, leaf = dotted.split(".")
    for part in path:
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    setattr(module, leaf, value)


VARIANTS = {
    "default": lambda m, c: (m, c),
    "old-init": _old_init,
    "old-embedding": _old_embedding,
    "no-bias-correction": _no_bias_correction,
    "torch-init": _torch_init,
    "no-forget-bias": _no_forget_bias,
    "nlstm-forget-bias": _nlstm_forget_bias,
    "nlstm-outer-forget-bias": lambda m, c: _nlstm_forget_bias(m, c, inner=False),
    "constant-lr": _constant_lr,
    "no-clip": _no_clip,
}


# ---- the two trainers ----------------------------------------------------------------------------

class EdgeTrainer:
    """edge_rnn as ``edge-rnn train`` runs it (optimizer, schedule and step from ``edge_rnn.train``)."""

    def __init__(self, cfg: ModelConfig, config: training.TrainConfig, variant: str):
        mx.random.seed(config.seed)
        self.model, self.config = VARIANTS[variant](RNNModel(cfg), config)
        self.optimizer = training.make_optimizer(self.config)
        self.optimizer.init(self.model.trainable_parameters())
        mx.eval(self.model.parameters(), self.optimizer.state)
        self.step_fn = training.make_step(self.model, self.optimizer, self.config.clip)
        self.steps = 0

    def step(self, ids: np.ndarray, targets: np.ndarray) -> float:
        self.steps += 1  # the schedule's rate for this update, set as `edge-rnn train` sets it
        self.optimizer.learning_rate = learning_rate(self.config, self.steps)
        loss, _, _ = self.step_fn(mx.array(ids), mx.array(targets))
        mx.eval(loss, self.model.parameters(), self.optimizer.state)
        return float(loss)

    def evaluate(self, valid, batch_size: int, batches: int) -> dict:
        return evaluate(self.model, valid, batch_size, batches)


class TorchTrainer:
    """The same model in PyTorch, PyTorch's init, torch.optim.Adam with the same schedule and clip."""

    def __init__(self, cfg: ModelConfig, config: training.TrainConfig):
        import torch
        import torch_cells

        self.torch = torch
        torch.manual_seed(config.seed)
        self.model = torch_cells.Model(cfg)
        self.clip = config.clip
        self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda k: learning_rate(config, k + 1) / config.lr)  # LambdaLR counts from 0

    def step(self, ids: np.ndarray, targets: np.ndarray) -> float:
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        loss = self.model.loss(torch.from_numpy(ids).long(), torch.from_numpy(targets).long())
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.sched.step()
        return float(loss.detach())

    def evaluate(self, valid, batch_size: int, batches: int) -> dict:
        """``edge_rnn.evaluate.evaluate``'s ce / top1 / top1_known, computed in PyTorch."""
        torch = self.torch
        ce = n_loss = n_valid = n_unk = hits = 0.0
        with torch.no_grad():
            for k, (ids, targets) in enumerate(valid.batches(batch_size, shuffle=False)):
                if k >= batches:
                    break
                t = torch.from_numpy(targets).long()
                logits = self.model(torch.from_numpy(ids).long())
                w = self.model.loss_weights(t)
                ce += float((torch.nn.functional.cross_entropy(logits.transpose(1, 2), t, reduction="none") * w).sum())
                rank = (logits > logits.gather(-1, t[..., None])).sum(-1)
                n_loss += float(w.sum())
                n_valid += float((t != PAD).sum())
                n_unk += float((t == UNK).sum())
                hits += float((w & (rank < 1)).sum())
        return {"ce": ce / max(n_loss, 1), "top1": hits / max(n_valid, 1),
                "top1_known": hits / max(n_valid - n_unk, 1)}


# ---- driver --------------------------------------------------------------------------------------

def wikitext2() -> str:
    files = [CORPUS_DIR / "wikitext2-valid.txt", CORPUS_DIR / "wikitext2-test.txt"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        sys.exit(f"corpus not found: {', '.join(missing)} (run from the project root)")
    return normalise("\n".join(f.read_text() for f in files))


def run_pair(name: str, trainer, splits, args, checkpoints: list[int], log) -> dict:
    curve, t0, losses = [], time.perf_counter(), []
    for step in range(1, max(checkpoints) + 1):
        ids, targets = training.batch_at(splits.train, step - 1, args.batch, args.seed, args.max_len)
        losses.append(trainer.step(ids, targets))
        if step in checkpoints or step % args.eval_every == 0:
            m = trainer.evaluate(splits.valid, args.batch, args.eval_batches)
            curve.append({"step": step, "train_loss": float(np.mean(losses[-args.eval_every:])), **m,
                          "seconds": time.perf_counter() - t0})
            log(f"  {name:>22} step {step:5d}  train {curve[-1]['train_loss']:.3f}  valid ce {m['ce']:.3f}  "
                f"top1 {m['top1_known']:.3f}  ({curve[-1]['seconds']:.0f} s)")
    return {"name": name, "curve": curve}


def table(results: list[dict], checkpoints: list[int]) -> str:
    head = " | ".join(f"CE @{c}" for c in checkpoints) + " | " + " | ".join(f"top-1 @{c}" for c in checkpoints)
    lines = [f"| cell | layers | trained by | {head} |", "|---|---:|---|" + "---:|" * 2 * len(checkpoints)]
    for r in results:
        for run in r["runs"]:
            at = {p["step"]: p for p in run["curve"]}
            ce = " | ".join(f"{at[c]['ce']:.3f}" if c in at else "-" for c in checkpoints)
            top = " | ".join(f"{at[c]['top1_known']:.3f}" if c in at else "-" for c in checkpoints)
            lines.append(f"| {r['cell']} | {r['layers']} | {run['name']} | {ce} | {top} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({r["cell"] for r in results}, key=CELLS.index)
    layers = sorted({r["layers"] for r in results})
    fig, axes = plt.subplots(len(layers), len(cells), figsize=(max(3.2 * len(cells), 5), 2.8 * len(layers) + 0.6),
                             squeeze=False, sharex=True, sharey=True)
    for r in results:
        ax = axes[layers.index(r["layers"])][cells.index(r["cell"])]
        for run in r["runs"]:
            steps = [p["step"] for p in run["curve"]]
            style = "k--" if run["name"] == "pytorch" else None
            args = (steps, [p["ce"] for p in run["curve"]]) + ((style,) if style else ())
            ax.plot(*args, marker="o", label=run["name"])
        ax.set_title(f"{r['cell']} {r['layers']}x{r['units']}")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel("valid cross-entropy")
    max(axes.flat, key=lambda a: len(a.lines)).legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, width=int(13 * fig.get_figwidth())), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(paths: list[Path], checkpoints: list[int], plot_path: Path | None) -> None:
    """One table (and plot) from several ``--json`` files: the runs of each (cell, layers), in the
    order the files are given, at ``checkpoints``; the files' headers must agree (same corpus,
    sizes and recipe). Files of several ``--seed`` values: the table and plot are of the first
    seed's runs, and a second table gives edge-rnn minus PyTorch per seed (``seed_table``)."""
    files = [json.loads(path.read_text()) for path in paths]
    headers = {DATE.sub("", f["header"]) for f in files}  # runs of one setting may span days
    if len(headers) > 1:
        sys.exit("--merge: the files were run with different settings:\n" + "\n".join(sorted(headers)))
    dates = sorted({d for f in files for d in DATE.findall(f["header"])})
    header = DATE.sub(f", {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else ""), files[0]["header"]) \
        if dates else files[0]["header"]
    by_seed: dict[int, dict[tuple[str, int], dict]] = {}
    for f in files:
        merged = by_seed.setdefault(f.get("seed", 0), {})  # files written before the key: seed 0
        for r in f["results"]:
            merged.setdefault((r["cell"], r["layers"]), {**r, "runs": []})["runs"] += r["runs"]
    seeds = sorted(by_seed)
    results = sorted(by_seed[seeds[0]].values(), key=lambda r: (r["layers"], CELLS.index(r["cell"])))
    print(f"# {header}\n\n" + table(results, sorted(checkpoints)))
    if len(seeds) > 1:
        print(f"\nedge-rnn minus PyTorch on each seed's batches and initialisation\n\n{seed_table(by_seed, sorted(checkpoints))}")
    if plot_path:
        plot(results, plot_path, header)
        print(f"\nplot: {plot_path}")


def seed_table(by_seed: dict[int, dict[tuple[str, int], dict]], checkpoints: list[int]) -> str:
    """Per (cell, layers, checkpoint) with both sides on two or more seeds: edge-rnn's top-1 minus
    PyTorch's and PyTorch's CE minus edge-rnn's (positive: edge-rnn ahead) on each seed, their
    mean, and how far PyTorch's own top-1 moves from seed to seed (its max minus min): a gap
    smaller than that is within what a seed changes."""
    def point(seed: int, key: tuple[str, int], name: str, step: int) -> dict | None:
        runs = by_seed[seed].get(key, {}).get("runs", [])
        at = {p["step"]: p for run in runs if run["name"] == name for p in run["curve"]}
        return at.get(step)

    seeds = sorted(by_seed)
    keys = sorted({k for merged in by_seed.values() for k in merged}, key=lambda k: (k[1], CELLS.index(k[0])))
    lines = [f"| cell | layers | step | top-1 gap, seeds {' / '.join(map(str, seeds))} | mean | "
             f"CE gap, seeds {' / '.join(map(str, seeds))} | mean | PyTorch top-1 range over seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for cell, layers in keys:
        for step in checkpoints:
            pairs = {s: (point(s, (cell, layers), "edge-rnn", step), point(s, (cell, layers), "pytorch", step))
                     for s in seeds}
            pairs = {s: (e, t) for s, (e, t) in pairs.items() if e and t}
            if len(pairs) < 2:
                continue
            top = {s: e["top1_known"] - t["top1_known"] for s, (e, t) in pairs.items()}
            ce = {s: t["ce"] - e["ce"] for s, (e, t) in pairs.items()}
            torch_top = [t["top1_known"] for e, t in pairs.values()]
            cells = lambda gaps: " / ".join(f"{gaps[s]:+.3f}" if s in gaps else "-" for s in seeds)  # noqa: E731
            lines.append(f"| {cell} | {layers} | {step} | {cells(top)} | {np.mean(list(top.values())):+.4f} | "
                         f"{cells(ce)} | {np.mean(list(ce.values())):+.4f} | {max(torch_top) - min(torch_top):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--units", type=int, default=128)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--head-dim", type=int, default=0, help="bottleneck before the head, both sides (0: none)")
    p.add_argument("--vocab", type=int, default=2000, help="output words")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="constant", help="edge_rnn.schedule name, applied to both sides")
    p.add_argument("--clip", type=float, default=None, help="global gradient-norm clip, both sides")
    p.add_argument("--checkpoints", nargs="+", type=int, default=[100, 500, 2000])
    p.add_argument("--steps", type=int, default=None, help="stop here (drops later checkpoints)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--variants", nargs="*", default=["default"], choices=list(VARIANTS),
                   help="edge_rnn rows (none: PyTorch only)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--torch-threads", type=int, default=1, help="learning per step does not depend on it")
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write every curve here")
    p.add_argument("--plot", type=Path, default=None, help="write the learning curves here (PNG)")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="no training: join these --json files (same settings) into one table and plot")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.checkpoints, args.plot)
    checkpoints = sorted(c for c in args.checkpoints if args.steps is None or c <= args.steps)
    if args.steps is not None and args.steps not in checkpoints:
        checkpoints.append(args.steps)

    mx.set_cache_limit(4 << 30)
    splits = make_splits(wikitext2(), "autocomplete", args.vocab, args.max_len, args.seed)
    config = training.TrainConfig(steps=max(checkpoints), batch_size=args.batch, lr=args.lr, clip=args.clip,
                                  schedule=args.schedule, max_len=args.max_len, seed=args.seed,
                                  weight_decay=0.0, ema=0.0)  # the PyTorch twin's plain Adam, last weights
    import torch
    torch.set_num_threads(args.torch_threads)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    header = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, mlx {mx.__version__}, torch "
              f"{torch.__version__}, {date}; WikiText-2 valid+test (90/5/5), {args.vocab} words, batch "
              f"{args.batch}, units {args.units}, embed {args.embed}, Adam lr {args.lr} schedule "
              f"{args.schedule} clip {args.clip}, valid = first {args.eval_batches} batches")
    print(f"# {header}", flush=True)
    results = []
    for cell in args.cells:
        for layers in args.layers:
            cfg = ModelConfig(cell=cell, layers=layers, units=args.units, embed_dim=args.embed,
                              vocab_size=len(splits.vocab) - 2, head_dim=args.head_dim)
            print(f"# {cell} {layers}x{args.units}", flush=True)
            runs = []
            for variant in args.variants:
                label = "edge-rnn" if variant == "default" else f"edge-rnn {variant}"
                runs.append(run_pair(label, EdgeTrainer(cfg, config, variant), splits, args, checkpoints, print))
            if not args.no_torch:
                runs.append(run_pair("pytorch", TorchTrainer(cfg, config), splits, args, checkpoints, print))
            results.append({"cell": cell, "layers": layers, "units": args.units, "runs": runs})
            if args.json:
                args.json.write_text(json.dumps({"header": header, "seed": args.seed, "results": results}, indent=1))
    print("\n" + table(results, checkpoints))
    if args.plot:
        plot(results, args.plot, header)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
