"""Stateful training (``TrainConfig.stateful``): lanes of the training text read window after
window, the state carried between steps, exactly what one long forward pass computes."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from edge_rnn.data import demo_corpus, make_splits
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel
from edge_rnn.train import CARRY, CHECKPOINT, TrainConfig, stream_at, train


@pytest.fixture(scope="module")
def data():
    return make_splits(demo_corpus(800), "autocomplete", 150, seed=0).train


def test_each_row_reads_its_lane_window_after_window(data):
    B, T = 4, 50
    lane = len(data.chars) // B
    per_epoch = lane // T - 1
    first, _, fresh = stream_at(data, 0, B, seed=3, max_len=T)
    assert fresh.all() and first.shape == (B, T)
    starts = []
    for step in range(per_epoch):
        ids, targets, fresh = stream_at(data, step, B, seed=3, max_len=T)
        assert not fresh.any() if step else fresh.all()
        # find each row in the text: it is the window after the previous one, inside its own lane
        for b in range(B):
            text = data.chars[b * lane:(b + 1) * lane]
            hits = [i for i in range(len(text) - T + 1) if np.array_equal(text[i:i + T], ids[b])]
            assert hits, (step, b)
            start = b * lane + (hits[0] if step == 0 else starts[b] + T - b * lane)
            np.testing.assert_array_equal(data.chars[start:start + T], ids[b])
            np.testing.assert_array_equal(data.targets[start:start + T], targets[b])
            if step == 0:
                starts.append(start)
            else:
                starts[b] = start
    nxt, _, fresh = stream_at(data, per_epoch, B, seed=3, max_len=T)
    assert fresh.all()  # a new epoch: new offset, zero state
    with pytest.raises(EdgeRNNError, match="stateful training needs at least"):
        stream_at(data, 0, len(data.chars) // 150, seed=0, max_len=100)


def test_the_carried_state_continues_the_text_exactly(data):
    """Window 2 from window 1's final state scores what a forward pass over both does on window 2."""
    mx.random.seed(1)
    model = RNNModel(ModelConfig(cell="cifg", units=16, embed_dim=6, layers=2, vocab_size=150, head_dim=8))
    (a, ta, _), (b, tb, _) = stream_at(data, 0, 3, 0, 40), stream_at(data, 1, 3, 0, 40)
    ids, targets = mx.array(np.concatenate([a, b], axis=1)), mx.array(np.concatenate([ta, tb], axis=1))
    _, (_, _, carry) = model.stream_loss(ids[:, :40], targets[:, :40], None)
    loss, (n, _, final) = model.stream_loss(ids[:, 40:], targets[:, 40:], carry)
    logits, state = model(ids)
    w = model.loss_weights(targets[:, 40:])
    ce = nn.losses.cross_entropy(logits[:, 40:], targets[:, 40:], reduction="none")
    np.testing.assert_allclose(float(loss), float((ce * w).sum() / w.sum()), rtol=1e-5)
    for a, b in zip(final, state):
        for x, y in zip(a, b):
            np.testing.assert_allclose(np.array(x), np.array(y), atol=1e-5)
    # the carry matters (a random model forgets within 40 characters: compare 3 in)
    _, (_, _, from_zero) = model.stream_loss(ids[:, 40:43], targets[:, 40:43], None)
    _, (_, _, carried) = model.stream_loss(ids[:, 40:43], targets[:, 40:43], carry)
    assert np.abs(np.array(from_zero[0][0]) - np.array(carried[0][0])).max() > 1e-2


def test_the_training_loop_carries_the_state_from_step_to_step(tmp_path, corpus, monkeypatch):
    """Each step starts from the state the step before returned (zero in an epoch's first), and
    the checkpoint keeps the last one for a resume."""
    import edge_rnn.train as training

    calls = []

    def recording(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(*a):
            out = step(*a)
            calls.append((a[-1], out[-1]))
            return out
        return wrapped

    real = training.make_step
    monkeypatch.setattr(training, "make_step", recording)
    cfg = ModelConfig(cell="lstm", units=16, embed_dim=6, vocab_size=150)
    run = tmp_path / "run"
    train(cfg, TrainConfig(corpus=corpus, steps=3, batch_size=4, eval_every=3, eval_batches=1, stateful=True), run)
    assert len(calls) == 3
    flat = [[np.array(x) for layer in state for x in layer] for call in calls for state in call]
    assert all((x == 0).all() for x in flat[0])  # the first step starts from zero
    for step in (1, 2):  # input of step k+1 == output of step k
        for x, y in zip(flat[2 * step], flat[2 * step - 1]):
            np.testing.assert_array_equal(x, y)
            assert np.abs(x).max() > 0.01
    saved = mx.load(str(run / CHECKPOINT / CARRY))
    np.testing.assert_array_equal(np.array(saved["0.1"]), flat[-1][1])  # the LSTM's c


def test_stateful_refuses_rechunk_and_distill():
    with pytest.raises(EdgeRNNError, match="stateful and rechunk exclude each other"):
        TrainConfig(stateful=True, rechunk=True)
    # the teacher's slots follow observations, not a lane's windows
    with pytest.raises(EdgeRNNError, match="stateful and distill exclude each other"):
        TrainConfig(stateful=True, distill=0.5)
