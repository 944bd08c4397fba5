"""Data-parallel training: 2 ranks on 127.0.0.1 (mlx.launch, ring backend) learn what 1 does.

Both ranks must end with identical parameters, equal (to float tolerance) to one process trained
on the same global batches with the same seed, and report the single process's validation
metrics. A rank that dies makes the other stop with one clear line, not hang.
"""

import json
import os
import shutil
import socket
import time
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("distributed_worker.py")


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    """The first of two free consecutive ports (the ring backend listens on one per rank)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def launch(ranks: int, *args, timeout: float = 240) -> subprocess.CompletedProcess:
    """The worker as one plain process, or under mlx.launch on loopback with the ring backend."""
    if ranks == 1:
        command = [sys.executable, str(WORKER), *args]
    else:
        command = [shutil.which("mlx.launch") or "mlx.launch", "-n", str(ranks), "--backend", "ring",
                   "--starting-port", str(free_port()), "--python", sys.executable, str(WORKER), *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("dist")
    one, two = root / "one", root / "two"
    for ranks, out in ((1, one), (2, two)):
        out.mkdir()
        result = launch(ranks, "train", corpus, str(out))
        assert result.returncode == 0, result.stdout + result.stderr
    return one, two


def test_both_ranks_hold_identical_parameters_equal_to_one_process(runs):
    one, two = runs
    rank0, rank1 = mx.load(str(two / "rank0.safetensors")), mx.load(str(two / "rank1.safetensors"))
    single = mx.load(str(one / "rank0.safetensors"))
    assert rank0.keys() == rank1.keys() == single.keys()
    for name in single:
        np.testing.assert_array_equal(np.array(rank0[name]), np.array(rank1[name]), err_msg=name)
        np.testing.assert_allclose(np.array(rank0[name]), np.array(single[name]), atol=2e-4, rtol=1e-3,
                                   err_msg=name)
    # and they did move: 12 steps at lr 1e-2 change the weights far beyond that tolerance
    initial = mx.load(str(two / "init0.safetensors"))
    assert all(float(mx.abs(initial[n] - rank0[n]).max()) > 1e-2 for n in single)


def test_validation_metrics_equal_one_process(runs):
    one, two = runs
    single, parallel = json.loads((one / "rank0.json").read_text()), json.loads((two / "rank0.json").read_text())
    assert parallel == json.loads((two / "rank1.json").read_text())
    assert parallel["tokens"] == single["tokens"]
    for key in ("ce", "top1", "top3"):
        assert parallel[key] == pytest.approx(single[key], abs=1e-4), key


def test_only_rank_0_writes_and_the_run_records_its_ranks(runs):
    _, two = runs
    settings = json.loads((two / "run" / "train.json").read_text())
    assert settings["ranks"] == 2 and settings["batch_size"] == 8
    lines = (two / "run" / "metrics.jsonl").read_text().splitlines()
    assert len([l for l in lines if '"valid"' in l]) == 2  # steps 6 and 12, once each, not per rank


def test_resume_with_another_number_of_ranks_is_one_clear_error(runs):
    from edge_rnn.io import EdgeRNNError
    from edge_rnn.model import load_preset
    from edge_rnn.train import TrainConfig, train

    _, two = runs
    with pytest.raises(EdgeRNNError, match="trained on 2 rank"):
        train(load_preset("tiny"), TrainConfig(steps=20), two / "run", resume=True)


def test_a_rank_that_dies_stops_the_other_with_one_line(tmp_path, corpus):
    """Ranks started by hand (as on hosts without a launcher watching them): when rank 1 dies,
    rank 0's next all-reduce fails and the CLI says so in one line, within seconds."""
    port = free_port()
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    procs = [subprocess.Popen([sys.executable, str(WORKER), "die", corpus, str(tmp_path)], cwd=ROOT,
                              env={**ENV, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    start = time.monotonic()
    out0, err0 = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=60)
    assert procs[1].returncode == 17  # it died as arranged, at step 3 of 200
    assert procs[0].returncode == 1, out0 + err0
    lines = [line for line in err0.splitlines() if line.strip() and not line.startswith("[ring]")]
    assert len(lines) == 1 and "another rank stopped" in lines[0], err0
    assert "Traceback" not in err0 + out0
    assert time.monotonic() - start < 100
