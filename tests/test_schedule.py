"""The learning-rate schedule follows the budget, and training really applies it."""

import json
import math

import mlx.core as mx
import pytest

from edge_rnn.io import EdgeRNNError

from edge_rnn import schedule
from edge_rnn.model import load_preset
from edge_rnn.train import TrainConfig, make_optimizer, prepare, train


def test_warmup_ramps_linearly_then_cosine_decays_to_the_floor():
    config = TrainConfig(steps=1000, lr=2e-3)
    warm = schedule.warmup_steps(config)
    assert warm == 50  # 5 % of 1000
    lrs = [schedule.learning_rate(config, s) for s in range(1, 1001)]
    assert lrs[0] == pytest.approx(2e-3 / 51)
    assert all(a < b for a, b in zip(lrs[:warm], lrs[1:warm + 1]))  # rising during warm-up
    assert max(lrs) == pytest.approx(2e-3, rel=1e-3)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))  # then never rising
    assert lrs[-1] == pytest.approx(schedule.FINAL_LR_RATIO * 2e-3)
    mid = schedule.learning_rate(config, 525)  # half way through the 950 steps after the warm-up
    assert mid == pytest.approx(2e-4 + 1.8e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_a_timed_budget_decays_by_elapsed_time_whichever_ends_first():
    config = TrainConfig(steps=100_000, minutes=10, lr=1e-3)
    assert schedule.warmup_steps(config) == schedule.MAX_WARMUP
    # step 1000 of 100k is 1 % of the steps, but 5 of 10 minutes have passed: half way
    assert schedule.progress(config, 1000, 300.0) == pytest.approx(0.5)
    assert schedule.learning_rate(config, 1000, 300.0) == pytest.approx(5.5e-4, rel=1e-2)
    assert schedule.learning_rate(config, 1000, 600.0) == pytest.approx(1e-4)  # time is up: the floor
    assert schedule.learning_rate(config, 1000, 60.0) > schedule.learning_rate(config, 1000, 300.0)


def test_constant_and_unknown_schedules():
    config = TrainConfig(steps=10, lr=5e-3, schedule="constant")
    assert {schedule.learning_rate(config, s) for s in range(1, 11)} == {5e-3}
    with pytest.raises(EdgeRNNError, match="unknown schedule"):  # refused with the settings
        TrainConfig(schedule="linear")


def test_optimizer_is_bias_corrected_adam_by_default():
    """MLX's Adam defaults to no bias correction; its first steps are then ~3-6x the lr (issue 14)."""
    assert make_optimizer(TrainConfig()).bias_correction is True


def test_training_sets_the_scheduled_rate_in_the_compiled_step(tmp_path, corpus):
    config = TrainConfig(corpus=corpus, steps=20, batch_size=4, lr=1e-2, eval_every=20, eval_batches=1)
    train(load_preset("tiny"), config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "train.json").read_text())
    assert saved["schedule"] == "cosine" and saved["adam_bias_correction"] is True
    # the last update used the end of the cosine: the rate left in the restored optimizer state
    _, optimizer, _, _, _, start, _ = prepare(load_preset("tiny"), TrainConfig(steps=20), tmp_path / "run", resume=True)
    assert start == 20
    assert float(optimizer.state["learning_rate"]) == pytest.approx(1e-3, rel=1e-5)
    assert int(optimizer.state["step"]) == 20


def test_setting_the_rate_reaches_a_compiled_update():
    """The schedule relies on the rate being compiled-step *state*, not a baked-in constant."""
    import mlx.nn as nn

    from edge_rnn.model import RNNModel
    from edge_rnn.train import make_step

    mx.random.seed(0)
    model = RNNModel(load_preset("tiny"))
    optimizer = make_optimizer(TrainConfig(schedule="constant", lr=1e-2))
    optimizer.init(model.trainable_parameters())
    step = make_step(model, optimizer, None)
    ids = mx.array([[1, 2, 3, 4]])
    targets = mx.array([[2, 2, 2, 2]])
    step(ids, targets)
    before = mx.array(model.head.bias)
    optimizer.learning_rate = 0.0
    step(ids, targets)
    mx.eval(model.parameters())
    assert mx.array_equal(model.head.bias, before).item()  # lr 0: nothing moves
    assert isinstance(model.head, nn.Linear)
