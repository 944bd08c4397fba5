"""Reproduce the Distill article's comparison: GRU (2 layers), LSTM (2 layers), Nested LSTM (1 layer,
depth 2) on the autocomplete task, then its two tables beside the published numbers, and figures.

    python scripts/reproduce_article.py [--corpus wikitext2|text8|PATH] [--scale F] [--out DIR]

At ``--scale 1`` this is the article's recipe: 600 units and a 600-wide embedding, the 16,384 most
frequent words, Adam 1e-3, batch 64, 14,278 steps (2 epochs of text8), no clipping, no dropout
(~6 h per model on the article's GPU; days on two CPU cores). ``--scale F`` multiplies width,
embedding, vocabulary and steps by F (batch size and learning rate stay), so the three models keep
the article's proportions: GRU and LSTM 2xW, Nested LSTM 1xW depth 2, the LSTM and the Nested LSTM
with the same recurrent parameters. Accuracy is the article's: top-1 over all classes at every
non-pad position, ``<unk>`` targets counted as misses. Writes, under ``--out``: the run dirs,
``results.md`` / ``results.json``, ``curves.png`` (training curves and accuracy by letters typed),
and per model ``connectivity-<cell>.{png,html}`` and ``states-<cell>.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import reproduction as rep

from edge_rnn import visualize
from edge_rnn.model import ModelConfig, RNNModel, load_preset
from edge_rnn.train import TrainConfig

PUBLISHED = {"gru": (2.1170, 0.5201), "lstm": (2.1713, 0.5140), "nlstm": (2.4950, 0.4710)}
ARTICLE_STEPS = 14_278
MODELS = [("GRU", "article-gru"), ("LSTM", "article-lstm"), ("Nested LSTM", "article-nlstm")]
TEXT = "the capital of france is paris and the language spoken there is french"


def scaled(preset: str, scale: float) -> ModelConfig:
    base = load_preset(preset)
    return ModelConfig(cell=base.cell, layers=base.layers, depth=base.depth,
                       units=max(4, round(base.units * scale)), embed_dim=max(4, round(base.embed_dim * scale)),
                       vocab_size=max(16, round(base.vocab_size * scale)), task=base.task)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="wikitext2", help="wikitext2 (../shared/corpus valid+test), text8 or a path")
    ap.add_argument("--scale", type=float, default=0.1, help="multiplies width, vocabulary and steps (1 = the article)")
    ap.add_argument("--steps", type=int, default=None, help="override the scaled step count")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the article's 1e-3)")
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce-article"), help="output folder (replaced if a previous run of this script wrote it)")
    ap.add_argument("--text", default=TEXT, help="sentence for the connectivity and state figures")
    args = ap.parse_args()

    corpus = rep.corpus_spec(args.corpus)
    steps = args.steps or max(1, round(ARTICLE_STEPS * args.scale))
    rep.fresh_out(args.out)
    print(f"reproduce_article: corpus {args.corpus}, scale {args.scale:g}, {steps} steps, batch 64, lr {args.lr:g}",
          flush=True)
    t_all = time.perf_counter()
    results = []
    for label, preset in MODELS:
        cfg = scaled(preset, args.scale)
        config = TrainConfig(corpus=corpus, steps=steps, batch_size=64, lr=args.lr,
                             eval_every=max(steps // 5, 1), seed=0)
        print(f"{label}: {cfg.cell} {cfg.layers}x{cfg.units}, embedding {cfg.embed_dim}, {cfg.vocab_size:,} words",
              flush=True)
        results.append({"label": label, "preset": preset,
                        **rep.train_and_test(label, cfg, config, args.out / cfg.cell)})
    wall = time.perf_counter() - t_all

    for r in results:
        run = Path(r["run"])
        cell = run.name
        visualize.run_connectivity(run, args.text, None, args.out / f"connectivity-{cell}.html")
        visualize.run_connectivity(run, args.text, len(" " + args.text) - 1, args.out / f"connectivity-{cell}.png")
        visualize.run_inspect(run, args.text, args.out / f"states-{cell}.png")
    visualize.run_plot([Path(r["run"]) for r in results], args.out / "curves.png",
                       labels=[r["label"] for r in results],
                       title=f"article models at scale {args.scale:g} on {args.corpus}")

    report = render(results, args, steps, wall)
    (args.out / "results.md").write_text(report + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(report)
    print(f"\nfigures and run dirs in {args.out}")


def render(results: list[dict], args, steps: int, wall: float) -> str:
    """The article's two tables, ours beside the published ones, as Markdown to paste."""
    config_rows = []
    for r in results:
        full = rep.split_parameters(RNNModel(load_preset(r["preset"])))
        ours = r["params"]
        cfg = json.loads((Path(r["run"]) / "config.json").read_text())
        shape = f"{cfg['layers']}x{cfg['units']}" + (f" depth {cfg['depth']}" if cfg["cell"] == "nlstm" else "")
        config_rows.append([r["label"], shape, f"{ours['embedding']:,}", f"{ours['recurrent']:,}", f"{ours['dense']:,}",
                            f"{full['embedding']:,} / {full['recurrent']:,} / {full['dense']:,}"])
    result_rows = []
    for r in results:
        ce, acc = PUBLISHED[json.loads((Path(r["run"]) / "config.json").read_text())["cell"]]
        t = r["test"]
        result_rows.append([r["label"], f"{t['ce']:.4f}", f"{t['top1']:.2%}", f"{t['top3']:.2%}", f"{ce:.4f}",
                            f"{acc:.2%}", f"{r['steps']:,}", f"{r['seconds'] / 60:.1f} min"])
    by_ce = " < ".join(r["label"] for r in sorted(results, key=lambda r: r["test"]["ce"]))
    return "\n".join([
        f"### Article reproduction: scale {args.scale:g}, {args.corpus}, {steps:,} steps of batch 64, lr {args.lr:g}",
        "",
        rep.provenance() + f"; total wall time {wall / 60:.1f} min",
        "",
        rep.markdown_table(["model", "configuration", "embedding", "recurrent", "dense",
                            "scale 1 (article): embedding / recurrent / dense"], config_rows),
        "",
        rep.markdown_table(["model", "test CE", "test top-1", "test top-3", "published CE", "published top-1",
                            "steps", "train+eval time"], result_rows),
        "",
        f"Ordering by test CE here: {by_ce} (published: GRU < LSTM < Nested LSTM). CE in nats over "
        "loss tokens (no pad/unk); top-k over all classes, <unk> = miss; published: text8, 2x600, "
        "16,384 words, 14,278 steps.",
    ])


if __name__ == "__main__":
    main()
