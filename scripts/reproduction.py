"""Shared by scripts/reproduce_article.py and scripts/reproduce_nlstm.py: corpus, runs, tables, provenance."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from edge_rnn import blas
from edge_rnn.data import cache_dir
from edge_rnn.evaluate import evaluate_run
from edge_rnn.model import ModelConfig, RNNModel
from edge_rnn.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "corpus"
STARTED = "reproduction-started.txt"  # marks an output folder as a reproduction's own


def corpus_spec(spec: str) -> str:
    """``wikitext2`` (valid + test from ../shared/corpus, joined once into the user's cache, never
    into the repo: run dirs keep pointing at it, so ``edge-rnn plot`` can rebuild their data),
    ``text8``, or a path."""
    if spec != "wikitext2":
        return spec
    parts = [SHARED_CORPUS / "wikitext2-valid.txt", SHARED_CORPUS / "wikitext2-test.txt"]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SystemExit(f"corpus not found: {', '.join(missing)} (pass --corpus text8 or PATH)")
    path = cache_dir() / "wikitext2-valid+test.txt"
    text = "".join(p.read_text() for p in parts)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path)


def fresh_out(path: Path) -> Path:
    """Empty ``path`` for a new reproduction; only a folder a previous one wrote (or an empty one)
    is replaced, so a mistyped ``--out`` cannot delete anything else."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not (path / STARTED).is_file():
        raise SystemExit(f"{path} exists and was not written by a reproduction script; choose another --out")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / STARTED).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    return path


def provenance() -> str:
    """Which code produced the numbers: commit (and whether the tree had changes), machine, date."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    cpu = platform.processor() or platform.machine()
    return (f"edge-rnn {commit}{dirty} ({git('log', '-1', '--format=%cs', '--', 'edge_rnn/train.py', 'edge_rnn/cells.py')} "
            f"last change to train.py/cells.py); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{os.cpu_count()} CPUs ({cpu}), BLAS {blas.loaded or 'reference'}")


def split_parameters(model: RNNModel) -> dict[str, int]:
    """The article's three columns: embedding, recurrent and dense (head) parameters."""
    return {"embedding": int(model.embedding.size), "recurrent": model.recurrent_parameters(),
            "dense": model.num_parameters() - model.recurrent_parameters() - int(model.embedding.size),
            "total": model.num_parameters()}


def train_and_test(name: str, cfg: ModelConfig, config: TrainConfig, run: Path) -> dict:
    """Train one model (a line of progress per validation, also when piped), then score its test split."""
    t0 = time.perf_counter()

    def progress(step: int, stats: dict) -> None:
        if "valid" in stats:
            v = stats["valid"]
            extra = f"bpc {v['bpc']:.3f}" if "bpc" in v else f"top-1 {v['top1']:.2%}"
            print(f"  {name} step {step:>6}/{config.steps}  train loss {stats['loss']:.3f}  valid ce {v['ce']:.3f}"
                  f"  {extra}  {time.perf_counter() - t0:.0f} s", flush=True)

    final = train(cfg, config, run, progress=progress)
    test = evaluate_run(run, "test")["model"]
    return {"name": name, "run": str(run), "steps": final["steps"], "seconds": time.perf_counter() - t0,
            "params": split_parameters(RNNModel(ModelConfig(**json.loads((run / 'config.json').read_text())))),
            "test": test}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    right = ["---:" if any(ch.isdigit() for ch in (rows[0][k] if rows else "")) else "---" for k in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(right) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
