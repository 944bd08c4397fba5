"""Reproduce the Nested LSTM paper's character-level comparison (Moniz & Krueger 2018, PTB table):
stacked LSTMs against a Nested LSTM at equal parameters, with the single-layer baseline, in test BPC.

    python scripts/reproduce_nlstm.py [--corpus wikitext2|text8|PATH] [--scale F] [--steps N] [--out DIR]

Models at ``--scale 1`` (the paper's, ~4.2-4.5 M parameters each with a 64-wide character
embedding): LSTM 1x1000, LSTM 2x600, LSTM 3x450, Nested LSTM 2x600 (one layer of depth 2: the
paper's "2 layers" of nesting, with exactly the recurrent parameters of the 2x600 stack). ``--scale
F`` multiplies every width and the embedding by F; ``--steps`` sets the training length (the paper:
35 epochs of PTB, ~56,000 steps). Training is the paper's: Adam 2e-3, batch 32, sequences of 100
characters, gradient norm clipped at 1. Our sequences are whole-word observations of at most 100
characters, each from a zero state (not one stream with carried state). Prints the table beside the
published one and writes ``results.md`` / ``results.json`` and ``curves.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import reproduction as rep

from edge_rnn import visualize
from edge_rnn.model import ModelConfig, RNNModel
from edge_rnn.train import TrainConfig

# (label, cell, layers, units at scale 1, published PTB test BPC)
MODELS = [("LSTM 1x1000", "lstm", 1, 1000, 1.489), ("LSTM 2x600", "lstm", 2, 600, 1.473),
          ("LSTM 3x450", "lstm", 3, 450, 1.486), ("Nested LSTM 2x600", "nlstm", 1, 600, 1.437)]
EMBED = 64


def config_at(cell: str, layers: int, units: int, scale: float) -> ModelConfig:
    return ModelConfig(cell=cell, layers=layers, units=max(4, round(units * scale)), depth=2,
                       embed_dim=max(4, round(EMBED * scale)), task="charlm", vocab_size=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="wikitext2", help="wikitext2 (../shared/corpus valid+test), text8 or a path")
    ap.add_argument("--scale", type=float, default=0.2, help="multiplies every width (1 = the paper)")
    ap.add_argument("--steps", type=int, default=1000, help="training steps per model (batch 32)")
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce-nlstm"), help="output folder (replaced if a previous run of this script wrote it)")
    args = ap.parse_args()

    corpus = rep.corpus_spec(args.corpus)
    rep.fresh_out(args.out)
    print(f"reproduce_nlstm: corpus {args.corpus}, scale {args.scale:g}, {args.steps} steps, batch 32, "
          "sequences <= 100, Adam 2e-3, clip 1", flush=True)
    t_all = time.perf_counter()
    results = []
    for label, cell, layers, units, published in MODELS:
        cfg = config_at(cell, layers, units, args.scale)
        config = TrainConfig(corpus=corpus, steps=args.steps, batch_size=32, lr=2e-3, clip=1.0, max_len=100,
                             eval_every=max(args.steps // 5, 1), seed=0)
        name = f"{cell}-{layers}x{cfg.units}"
        print(f"{label} at scale {args.scale:g}: {name}, embedding {cfg.embed_dim}", flush=True)
        results.append({"label": label, "published_bpc": published,
                        **rep.train_and_test(label, cfg, config, args.out / name)})
    wall = time.perf_counter() - t_all
    visualize.run_plot([Path(r["run"]) for r in results], args.out / "curves.png",
                       labels=[r["label"] for r in results],
                       title=f"Nested LSTM paper's char-level models at scale {args.scale:g} on {args.corpus}")
    report = render(results, args, wall)
    (args.out / "results.md").write_text(report + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(report)
    print(f"\nfigures and run dirs in {args.out}")


def render(results: list[dict], args, wall: float) -> str:
    rows = []
    for r, (_, cell, layers, units, _) in zip(results, MODELS):
        full = RNNModel(config_at(cell, layers, units, 1.0)).num_parameters()
        cfg = json.loads((Path(r["run"]) / "config.json").read_text())
        shape = f"{cfg['layers']}x{cfg['units']}" + (" depth 2" if cell == "nlstm" else "")
        rows.append([r["label"], shape, f"{r['params']['total']:,}", f"{full:,}", f"{r['test']['bpc']:.3f}",
                     f"{r['test']['top1']:.2%}", f"{r['published_bpc']:.3f}", f"{r['seconds'] / 60:.1f} min"])
    ours = " < ".join(r["label"] for r in sorted(results, key=lambda r: r["test"]["bpc"]))
    paper = " < ".join(r["label"] for r in sorted(results, key=lambda r: r["published_bpc"]))
    return "\n".join([
        f"### Nested LSTM paper reproduction: scale {args.scale:g}, {args.corpus}, {args.steps:,} steps of batch 32",
        "",
        rep.provenance() + f"; total wall time {wall / 60:.1f} min",
        "",
        rep.markdown_table(["model", "ours", "parameters", "parameters at scale 1", "test BPC", "test next-char top-1",
                            "published PTB test BPC", "train+eval time"], rows),
        "",
        f"Ordering by test BPC here: {ours}. Published (PTB, 35 epochs): {paper}. "
        f"BPC = test cross-entropy / ln 2 = nats x {1 / math.log(2):.4f}.",
    ])


if __name__ == "__main__":
    main()
