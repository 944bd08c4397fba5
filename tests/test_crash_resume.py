"""Crash safety of training, with real SIGKILLs of a training subprocess.

Each interrupted run is killed at a point it reaches itself (``EDGE_RNN_CRASH_AT``, see
``edge_rnn.faults``: the child SIGKILLs itself there, so nothing depends on timing on a loaded
machine), or from outside with ``kill -9`` once it has written a checkpoint; then the same command
plus ``--resume`` must finish with weights and optimizer state bit-identical to an uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
STEPS, EVAL_EVERY = 12, 4


def train_args(corpus: str, out: Path, steps: int = STEPS, *extra) -> list[str]:
    return ["train", "--preset", "tiny", "--units", "24", "--vocab-size", "120", "--corpus", corpus,
            "--steps", str(steps), "--batch-size", "8", "--eval-every", str(EVAL_EVERY), "--seed", "3",
            "--out", str(out), *extra]


def launch(args: list[str], crash_at: str | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("EDGE_RNN_CRASH_AT", None)
    if crash_at:
        env["EDGE_RNN_CRASH_AT"] = crash_at
    return subprocess.Popen([sys.executable, "-c", "from cli.main import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run(args: list[str], crash_at: str | None = None) -> subprocess.CompletedProcess:
    child = launch(args, crash_at)
    out, err = child.communicate(timeout=600)
    return subprocess.CompletedProcess(args, child.returncode, out, err)


def final_state(run_dir: Path) -> dict[str, np.ndarray]:
    ckpt = run_dir / "checkpoint"
    tensors = {f"weights/{k}": v for k, v in load_file(ckpt / "weights.safetensors").items()}
    tensors.update({f"optimizer/{k}": v for k, v in load_file(ckpt / "optimizer.safetensors").items()})
    return tensors


def assert_bit_identical(a: Path, b: Path) -> None:
    x, y = final_state(a), final_state(b)
    assert sorted(x) == sorted(y)
    assert "optimizer/step" in x  # Adam's step counter travels with the checkpoint
    for name in x:
        assert x[name].dtype == y[name].dtype and x[name].tobytes() == y[name].tobytes(), name
    assert json.loads((a / "checkpoint/step.json").read_text()) == json.loads((b / "checkpoint/step.json").read_text())
    assert (a / "weights.safetensors").read_bytes() == (b / "weights.safetensors").read_bytes()


def resumed_from(run_dir: Path) -> int:
    """The step the last resume started from, as train.log says."""
    lines = [ln for ln in (run_dir / "train.log").read_text().splitlines() if "resuming from step" in ln
             or "starting:" in ln]
    last = lines[-1]
    return int(last.split("resuming from step ")[1].split(":")[0]) if "resuming" in last else 0


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus) -> Path:
    """The uninterrupted reference run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = run(train_args(corpus, out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("crash_at,resumes_from", [
    ("start:1", 0),        # before the first checkpoint: resume starts again from step 0
    ("step:6", 4),         # in the middle of a step, after the step-4 checkpoint
    ("checkpoint:2", 4),   # while the step-8 checkpoint is being written: the step-4 one survives
    ("eval:2", 4),         # during the step-8 evaluation, before its checkpoint
])
def test_sigkill_then_resume_is_bit_identical(tmp_path, corpus, straight, crash_at, resumes_from):
    out = tmp_path / "run"
    killed = run(train_args(corpus, out), crash_at=crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run(train_args(corpus, out, STEPS, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed_from(out) == resumes_from  # lost at most one checkpoint interval
    assert_bit_identical(straight, out)
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == STEPS  # no record from the lost interval twice


def test_killed_twice_and_without_resume_the_dir_is_not_stuck(tmp_path, corpus, straight):
    out = tmp_path / "run"
    assert run(train_args(corpus, out), crash_at="start:1").returncode == -signal.SIGKILL
    # no checkpoint yet: the same command without --resume simply starts again
    assert run(train_args(corpus, out), crash_at="step:10").returncode == -signal.SIGKILL
    again = run(train_args(corpus, out))
    assert again.returncode == 1 and "already holds a run; pass --resume" in again.stderr
    assert run(train_args(corpus, out, STEPS, "--resume")).returncode == 0
    assert_bit_identical(straight, out)


def test_time_interval_checkpoints_bound_the_loss(tmp_path, corpus, straight):
    out = tmp_path / "run"
    # validation every 100 steps would leave nothing to resume from; a checkpoint every ~0 minutes does
    args = train_args(corpus, out, STEPS, "--checkpoint-minutes", "0.000001")
    killed = run(args, crash_at="step:7")
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((out / "checkpoint/step.json").read_text())["step"] == 6
    assert run([*args, "--resume"]).returncode == 0
    assert resumed_from(out) == 6
    assert_bit_identical(straight, out)


def wait_for_checkpoint(child: subprocess.Popen, out: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "checkpoint" / "step.json").exists():
        assert child.poll() is None, child.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)


def test_external_kill_9_then_resume_is_bit_identical(tmp_path, corpus):
    steps = 200  # long enough that the run is still going when its first checkpoint appears
    reference = tmp_path / "reference"
    assert run(train_args(corpus, reference, steps)).returncode == 0
    out = tmp_path / "run"
    child = launch(train_args(corpus, out, steps))
    wait_for_checkpoint(child, out)
    subprocess.run(["kill", "-9", str(child.pid)], check=True)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert run(train_args(corpus, out, steps, "--resume")).returncode == 0
    assert resumed_from(out) >= EVAL_EVERY
    assert_bit_identical(reference, out)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, corpus):
    steps = 200
    out = tmp_path / "run"
    child = launch(train_args(corpus, out, steps))
    wait_for_checkpoint(child, out)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    saved = json.loads((out / "checkpoint/step.json").read_text())["step"]
    assert f"interrupted: checkpoint saved at step {saved}" in (out / "train.log").read_text()
    assert 0 < saved < steps


def test_progress_lines_without_a_terminal(tmp_path, corpus):
    out = tmp_path / "run"
    result = run(train_args(corpus, out, STEPS, "--log-seconds", "0.000001"))
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if " step " in f" {ln.split('  ', 1)[-1]}"]
    progress = [ln for ln in lines if "chars/s" in ln]
    assert len(progress) == STEPS  # every step, at this interval
    first = progress[0].split("  ", 1)[1]
    assert first.startswith(f"step 1/{STEPS}  loss ") and " acc " in first and " eta " in first
    assert sum("valid ce" in ln for ln in lines) == STEPS // EVAL_EVERY
    logged = (out / "train.log").read_text().splitlines()
    assert [ln for ln in logged if "chars/s" in ln] == progress  # the same lines, to train.log


def test_killed_between_the_two_renames_of_a_checkpoint(tmp_path, corpus, straight):
    """atomic_dir moves the old checkpoint aside, then the new one in: a kill in between leaves only
    the old one, under its aside name; resume puts it back instead of starting again."""
    out = tmp_path / "run"
    assert run(train_args(corpus, out), crash_at="step:10").returncode == -signal.SIGKILL
    (out / "checkpoint").rename(out / ".checkpoint.old")
    assert run(train_args(corpus, out, STEPS, "--resume")).returncode == 0
    assert resumed_from(out) == 8
    assert_bit_identical(straight, out)
