"""Randomized kill-and-resume: train, SIGKILL the run N times at random moments, resume each time
with the same command plus --resume, and check the end is bit-identical to an uninterrupted run.

Kills come two ways, mixed at random: from outside (``kill -9`` after a random delay, whatever the
run is doing: loading data, stepping, evaluating, writing a checkpoint) and from inside at a named
point (``EDGE_RNN_CRASH_AT``: start, step, eval or checkpoint, at a random occurrence). Checkpoints
are taken every few seconds (``--checkpoint-minutes``) as well as at each validation.

    python scripts/fault_injection.py --trials 3 --kills 6 --steps 80

Prints one line per kill and a summary: kills, resumes, and trials that finished bit-exact.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
POINTS = ("start", "step", "eval", "checkpoint")


def command(corpus: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-c", "from cli.main import main; main()", "train", "--preset", "tiny",
            "--units", "24", "--vocab-size", "120", "--corpus", str(corpus), "--steps", str(steps),
            "--batch-size", "8", "--eval-every", "10", "--seed", "7", "--checkpoint-minutes", "0.02",
            "--out", str(out)]


def env(crash_at: str | None = None) -> dict:
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    e.pop("EDGE_RNN_CRASH_AT", None)
    if crash_at:
        e["EDGE_RNN_CRASH_AT"] = crash_at
    return e


def state(run: Path) -> dict[str, bytes]:
    ckpt = run / "checkpoint"
    tensors = {**{f"w/{k}": v for k, v in load_file(ckpt / "weights.safetensors").items()},
               **{f"o/{k}": v for k, v in load_file(ckpt / "optimizer.safetensors").items()}}
    return {k: v.dtype.str.encode() + v.tobytes() for k, v in tensors.items()}


def checkpoint_step(run: Path) -> int:
    path = run / "checkpoint" / "step.json"
    return json.loads(path.read_text())["step"] if path.exists() else 0


def trial(corpus: Path, work: Path, steps: int, kills: int, rng: random.Random, reference: dict,
          seconds: float) -> tuple[int, int, bool]:
    out = work / f"run-{rng.randrange(1 << 30)}"
    done_kills = resumes = 0
    first = True
    while True:
        args = command(corpus, out, steps) + ([] if first else ["--resume"])
        if not first:
            resumes += 1
        if done_kills < kills:
            if rng.random() < 0.5:
                point = rng.choice(POINTS)
                crash_at = f"{point}:{1 if point == 'start' else rng.randint(1, 3 if point in ('eval', 'checkpoint') else 8)}"
                how, proc = f"inside at {crash_at}", subprocess.Popen(args, env=env(crash_at), stdout=subprocess.DEVNULL,
                                                                     stderr=subprocess.PIPE, text=True)
            else:
                delay = rng.uniform(0.1, 0.9) * seconds  # within an uninterrupted run's time
                proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                try:
                    proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                how = f"kill -9 after {delay:.1f} s"
            _, err = proc.communicate(timeout=900)
            if proc.returncode == -signal.SIGKILL:
                done_kills += 1
                print(f"  kill {done_kills}: {how}; checkpoint at step {checkpoint_step(out)}", flush=True)
            elif proc.returncode != 0:
                raise SystemExit(f"run failed (exit {proc.returncode}): {err.strip()}")
            else:
                print(f"  ({how}: the run finished first)", flush=True)
                break
        else:
            proc = subprocess.run(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=900)
            if proc.returncode != 0:
                raise SystemExit(f"resume failed (exit {proc.returncode}): {proc.stderr.strip()}")
            break
        first = False
    return done_kills, resumes, state(out) == reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3, help="independent runs, each killed --kills times")
    parser.add_argument("--kills", type=int, default=6, help="SIGKILLs per trial")
    parser.add_argument("--steps", type=int, default=80, help="training steps of each run")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill schedule (default: random)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    sys.path.insert(0, str(ROOT))
    from edge_rnn.data import demo_corpus

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "demo.txt"
        corpus.write_text(demo_corpus(n_sentences=3000, seed=1))
        t0 = time.perf_counter()
        ref = subprocess.run(command(corpus, work / "reference", args.steps), env=env(), capture_output=True, text=True)
        if ref.returncode != 0:
            raise SystemExit(ref.stderr)
        reference, seconds = state(work / "reference"), time.perf_counter() - t0
        print(f"fault injection (schedule seed {seed}): {args.trials} trials x {args.kills} kills, "
              f"{args.steps} steps each (uninterrupted run: {seconds:.1f} s)", flush=True)
        totals = [0, 0, 0]
        for k in range(args.trials):
            print(f"trial {k + 1}:", flush=True)
            kills, resumes, exact = trial(corpus, work, args.steps, args.kills, rng, reference, seconds)
            print(f"  -> {kills} kills, {resumes} resumes, {'bit-exact' if exact else 'DIFFERENT'}", flush=True)
            totals = [totals[0] + kills, totals[1] + resumes, totals[2] + exact]
        print(f"kills {totals[0]}, resumes {totals[1]}, bit-exact finishes {totals[2]}/{args.trials}")
        if totals[2] != args.trials:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
