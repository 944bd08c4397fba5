"""Train every cell on real English text for the same time budget; print accuracy and speed.

    python scripts/bench_cells.py [--minutes 2] [--units 128] [--vocab-size 2000]

The corpus is WikiText-2 (valid + test, ~2.2 MB of Wikipedia prose) from ../shared/corpus,
normalised the text8 way, split 90/5/5 into observations exactly like text8. Each cell trains for
the same wall-clock budget (so faster cells see more data: the budget, not the step count, is what
a user pays), then is evaluated on the whole held-out test split. Accuracy conventions: see
edge_rnn/evaluate.py (top-k over all classes; <unk> positions count as misses).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edge_rnn import blas
from edge_rnn.evaluate import evaluate_run
from edge_rnn.model import ModelConfig
from edge_rnn.train import TrainConfig, train

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def corpus_file(tmp: Path) -> str:
    """WikiText-2 valid + test as one file in a temporary folder (never copied into the repo)."""
    parts = [CORPUS / "wikitext2-valid.txt", CORPUS / "wikitext2-test.txt"]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SystemExit(f"corpus not found: {', '.join(missing)}")
    path = tmp / "wikitext2.txt"
    path.write_text("".join(p.read_text() for p in parts))
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="rnn,gru,lstm,cifg,nlstm", help="comma-separated cell names")
    ap.add_argument("--minutes", type=float, default=2.0, help="training budget per cell")
    ap.add_argument("--units", type=int, default=128, help="hidden units (one layer)")
    ap.add_argument("--embed-dim", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()

    console = Console()
    console.print(f"BLAS: {blas.loaded or 'reference (slow)'}; budget {args.minutes} min per cell")
    table = Table(title=f"WikiText-2, 1x{args.units} units, {args.vocab_size:,} words, "
                        f"{args.minutes:g} min per cell")
    for col in ("cell", "steps", "train chars/s", "test ce", "test top-1", "test top-3", "baseline top-1"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = corpus_file(Path(tmp))
        for cell in args.cells.split(","):
            cfg = ModelConfig(cell=cell, layers=1, units=args.units, embed_dim=args.embed_dim,
                              vocab_size=args.vocab_size)
            run = Path(tmp) / cell
            config = TrainConfig(corpus=corpus, steps=10**9, batch_size=args.batch_size, lr=args.lr,
                                 eval_every=10**9, minutes=args.minutes)
            t0 = time.perf_counter()
            final = train(cfg, config, run)
            result = evaluate_run(run, "test")
            m = result["model"]
            speed = _train_speed(run)
            table.add_row(cell, f"{final['steps']:,}", f"{speed:,.0f}", f"{m['ce']:.3f}", f"{m['top1']:.2%}",
                          f"{m['top3']:.2%}", f"{result['baseline']['top1']:.2%}")
            console.print(f"{cell}: done in {time.perf_counter() - t0:.0f} s")
    console.print(table)


def _train_speed(run: Path) -> float:
    """Characters/second of the last logged training window (excludes evaluation time)."""
    import json

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "train"][-1]["chars_per_s"]


if __name__ == "__main__":
    main()
