"""Training really learns, resumes exactly, and evaluation follows its stated conventions."""

import json
import math

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from edge_rnn.data import demo_corpus, make_splits
from edge_rnn.evaluate import evaluate, evaluate_run
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel, load, load_preset
from edge_rnn.train import (AVERAGE, CHECKPOINT, MatrixAdamW, TrainConfig, WeightAverage, averaged, batch_at,
                            make_optimizer, prepare, train)


def test_tiny_model_learns_far_beyond_the_most_frequent_word(trained):
    run, _ = trained
    result = evaluate_run(run, "test")
    top1, baseline = result["model"]["top1"], result["baseline"]["top1"]
    assert baseline < 0.15
    assert top1 > baseline + 0.25, (top1, baseline)  # measured ~0.6 vs 0.07
    assert result["model"]["top3"] >= top1


def test_run_dir_holds_config_weights_vocab_metrics(trained):
    run, final = trained
    for name in ("config.json", "weights.safetensors", "vocab.json", "metrics.jsonl", "train.json",
                 "checkpoint/weights.safetensors", "checkpoint/optimizer.safetensors", "checkpoint/step.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "valid"] == [75, 150]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[1] < train_losses[0]
    model, vocab = load(run)
    assert len(vocab) == model.config.n_outputs == final["vocab_size"] + 2


@pytest.mark.parametrize("dropout,weight_decay,ema,rechunk,distill,stateful,label_smoothing", [
    (0.0, 0.0, 0.0, False, 0.0, False, 0.0), (0.3, 0.0, 0.0, False, 0.0, False, 0.0),
    (0.0, 0.1, 0.0, False, 0.0, False, 0.0), (0.0, 0.0, 0.9, False, 0.0, False, 0.0),
    (0.0, 0.0, 0.0, True, 0.0, False, 0.0), (0.0, 0.0, 0.0, True, 0.5, False, 0.0),
    (0.0, 0.0, 0.0, False, 0.0, True, 0.0), (0.0, 0.0, 0.0, False, 0.0, True, 0.1)])
def test_resume_replays_the_uninterrupted_run_exactly(tmp_path, corpus, dropout, weight_decay, ema, rechunk, distill,
                                                      stateful, label_smoothing):
    """Also with dropout (the checkpoint carries the key of the masks still to come), with weight
    decay (the resumed run's optimizer is built from train.json), with a weight average (the
    checkpoint carries it; the saved models compared here are the averages), with the text cut
    anew each epoch (the cut is a function of the seed and the epoch), with a trigram teacher
    (rebuilt from the training split on resume), statefully (the checkpoint carries the state) and
    with label smoothing (train.json carries it; here with the stateful loss)."""
    cfg = load_preset("tiny")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # constant rate: the default cosine is fitted to --steps, so a 3-step run extended to 6 on
    # resume decays differently from a 6-step run by design
    settings = dict(corpus=corpus, batch_size=4, eval_every=3, eval_batches=1, schedule="constant", dropout=dropout,
                    weight_decay=weight_decay, ema=ema, rechunk=rechunk, distill=distill, stateful=stateful,
                    label_smoothing=label_smoothing)
    train(cfg, TrainConfig(steps=6, **settings), straight)
    train(cfg, TrainConfig(steps=3, **settings), resumed)
    train(cfg, TrainConfig(steps=6), resumed, resume=True)  # settings come from the run's train.json
    a, _ = load(straight)
    b, _ = load(resumed)
    for (name, x), (_, y) in zip(tree_flatten(a.parameters()), tree_flatten(b.parameters())):
        np.testing.assert_allclose(np.array(x), np.array(y), atol=1e-6, err_msg=name)


def test_refuses_to_overwrite_or_resume_nothing(tmp_path, corpus, trained):
    run, _ = trained
    with pytest.raises(EdgeRNNError, match="already holds a run"):
        train(load_preset("tiny"), TrainConfig(corpus=corpus, steps=1), run)
    with pytest.raises(EdgeRNNError, match="already reached step 150"):
        train(load_preset("tiny"), TrainConfig(steps=100), run, resume=True)
    # resuming a run that had finished (killed while exiting) has nothing to do
    assert train(load_preset("tiny"), TrainConfig(steps=150), run, resume=True)["steps"] == 150


def test_batches_are_a_pure_function_of_seed_and_step(corpus):
    splits = make_splits(demo_corpus(500), "autocomplete", 100)
    a = batch_at(splits.train, 7, 8, seed=3, max_len=200)
    b = batch_at(splits.train, 7, 8, seed=3, max_len=200)
    c = batch_at(splits.train, 7, 8, seed=4, max_len=200)
    assert a[0].shape == (8, 200)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_train_fraction_trains_on_a_share_and_eval_rebuilds_it(tmp_path, corpus):
    model_config = load_preset("tiny")
    whole = prepare(model_config, TrainConfig(corpus=corpus), tmp_path / "whole", resume=False)[2]
    config = TrainConfig(corpus=corpus, steps=4, batch_size=8, eval_every=4, train_fraction=0.25)
    run = tmp_path / "quarter"
    train(model_config, config, run)
    quarter = prepare(model_config, config, run, resume=True)[2]  # the saved recipe keeps the fraction
    assert abs(len(quarter.train) - len(whole.train) / 4) < len(whole.train) / 20
    assert quarter.vocab.words == whole.vocab.words and len(quarter.test) == len(whole.test)
    on_train = evaluate_run(run, "train")["model"]
    assert on_train["tokens"] == quarter.train.n_chars() < whole.train.n_chars() / 3
    with pytest.raises(EdgeRNNError, match="train-fraction"):
        TrainConfig(train_fraction=0)


def test_rechunked_batches_draw_each_epoch_from_its_own_cut():
    splits = make_splits(demo_corpus(500), "autocomplete", 100)
    data, per_epoch = splits.train, len(splits.train) // 8
    a = batch_at(data, 7, 8, seed=3, max_len=200, rechunk=True)
    np.testing.assert_array_equal(a[0], batch_at(data, 7, 8, seed=3, max_len=200, rechunk=True)[0])
    assert not np.array_equal(a[0], batch_at(data, 7, 8, seed=3, max_len=200)[0])
    for step, epoch in ((7, 0), (per_epoch + 2, 1)):
        ids, targets = batch_at(data, step, 8, seed=3, max_len=200, rechunk=True)
        cut = data.rechunked(3 + epoch, 200)
        rows = {tuple(x[x > 0]) for x in cut.batch(np.arange(len(cut)))[0]}
        assert all(tuple(x[x > 0]) in rows for x in ids)  # observations of this epoch's cut
        assert ids.shape == targets.shape == (8, 200)


def test_rechunk_needs_word_targets(tmp_path):
    with pytest.raises(EdgeRNNError, match="rechunk needs an autocomplete model"):
        prepare(ModelConfig(cell="gru", units=8, embed_dim=4, task="charlm"), TrainConfig(rechunk=True),
                tmp_path / "run", resume=False)
    assert not (tmp_path / "run").exists()


def test_evaluate_counts_unk_as_miss_and_masks_it_from_ce():
    """A hand-built model whose logits we control: check every metric by hand."""
    mx.random.seed(0)
    model = RNNModel(ModelConfig(cell="rnn", units=4, embed_dim=2, vocab_size=3))
    # head ignores the state and always ranks class 2 > 3 > 4 > 0 > 1
    model.head.weight = mx.zeros_like(model.head.weight)
    model.head.bias = mx.array([0.0, -1.0, 3.0, 2.0, 1.0])

    class Data:
        def batches(self, batch_size, shuffle):
            yield np.array([[1, 2, 3, 1]]), np.array([[2, 3, 1, 0]])  # last position is padding

    m = evaluate(model, Data())
    logp = np.array([0.0, -1.0, 3.0, 2.0, 1.0])
    logp = logp - np.log(np.exp(logp).sum())
    assert m["tokens"] == 3
    assert m["top1"] == pytest.approx(1 / 3)  # 2 is right, 3 is second, unk counts as a miss
    assert m["top3"] == pytest.approx(2 / 3)
    assert m["top1_known"] == pytest.approx(1 / 2)
    assert m["ce"] == pytest.approx(-(logp[2] + logp[3]) / 2, rel=1e-5)  # unk carries no loss


def test_charlm_task_reports_bits_per_character(tmp_path, corpus):
    cfg = ModelConfig(cell="lstm", units=32, embed_dim=8, task="charlm")
    final = train(cfg, TrainConfig(corpus=corpus, steps=2, batch_size=4, eval_every=2), tmp_path / "lm")
    assert final["bpc"] == pytest.approx(final["ce"] / math.log(2))
    assert 2.0 < final["bpc"] < 5.0  # near log2(27) = 4.75 after two steps; not garbage


def test_progress_eta_of_a_timed_run_is_its_time_left(tmp_path):
    """--minutes with a huge --steps: the eta is the budget left, not steps x seconds per step."""
    from edge_rnn.train import LOG, ProgressLog

    log = ProgressLog(tmp_path, start=0, total=10**9, every=0.0, echo=None, minutes=2.0)
    log.step(1, {"loss": 1.0, "acc": 0.5, "chars_per_s": 100.0})
    eta = (tmp_path / LOG).read_text().split("eta ")[-1].strip()
    assert eta in ("0:02:00", "0:01:59"), eta


def test_weight_decay_shrinks_matrices_and_leaves_biases():
    """A zero gradient moves nothing under Adam, so what moves is the decoupled decay alone:
    every matrix by exactly (1 - lr wd), no bias at all (a forget gate keeps its init)."""
    model = RNNModel(ModelConfig(cell="lstm", layers=2, units=8, embed_dim=4, vocab_size=10, head_dim=3))
    before = dict(tree_flatten(model.parameters()))
    optimizer = make_optimizer(TrainConfig(lr=0.5, warmup=0, schedule="constant", weight_decay=0.1))
    assert isinstance(optimizer, MatrixAdamW)
    optimizer.update(model, tree_map(mx.zeros_like, model.parameters()))
    after = dict(tree_flatten(model.parameters()))
    ranks = {name: x.ndim for name, x in before.items()}
    assert sorted(set(ranks.values())) == [1, 2]
    for name, x in before.items():
        factor = 1 - 0.5 * 0.1 if x.ndim >= 2 else 1.0
        np.testing.assert_allclose(np.array(after[name]), factor * np.array(x), rtol=1e-6, err_msg=name)
    assert not isinstance(make_optimizer(TrainConfig(weight_decay=0.0)), MatrixAdamW)


def test_weight_average_follows_the_ema_equations():
    """a_t = d_t a_{t-1} + (1 - d_t) w_t with d_t = min(ema, (1 + t) / (10 + t)), in NumPy."""
    model = RNNModel(ModelConfig(cell="gru", layers=1, units=4, embed_dim=3, vocab_size=5))
    average = WeightAverage(model, 0.5)
    reference = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    rng = np.random.default_rng(0)
    for t in range(1, 5):
        new = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in reference.items()}
        model.update(tree_unflatten([(k, mx.array(v)) for k, v in new.items()]))
        average.update(model, t)
        d = min(0.5, (1 + t) / (10 + t))
        reference = {k: d * reference[k] + (1 - d) * new[k] for k in reference}
    for name, x in tree_flatten(average.params):
        np.testing.assert_allclose(np.array(x), reference[name], rtol=1e-5, atol=1e-6, err_msg=name)
    with averaged(model, average):  # the average inside, the raw weights again after
        for name, x in tree_flatten(model.parameters()):
            np.testing.assert_allclose(np.array(x), reference[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for name, x in tree_flatten(model.parameters()):
        np.testing.assert_array_equal(np.array(x), new[name])


def test_a_run_with_ema_saves_the_average_and_resumes_from_the_raw_weights(tmp_path, corpus):
    run = tmp_path / "run"
    train(load_preset("tiny"), TrainConfig(corpus=corpus, steps=6, batch_size=4, eval_every=6, eval_batches=1,
                                           ema=0.9), run)
    saved = dict(tree_flatten(load(run)[0].parameters()))
    raw = mx.load(str(run / CHECKPOINT / "weights.safetensors"))
    average = mx.load(str(run / CHECKPOINT / AVERAGE))
    assert saved.keys() == raw.keys() == average.keys()
    for name in saved:
        np.testing.assert_array_equal(np.array(saved[name]), np.array(average[name]), err_msg=name)
    assert any(not np.allclose(np.array(raw[k]), np.array(average[k])) for k in raw)


def test_a_run_from_before_weight_decay_and_averaging_resumes_as_it_was(tmp_path, corpus):
    """Its train.json lacks the settings, which are on by default now: it goes on without them."""
    run = tmp_path / "run"
    train(load_preset("tiny"), TrainConfig(corpus=corpus, steps=3, batch_size=4, eval_every=3, eval_batches=1,
                                           weight_decay=0.0, ema=0.0), run)
    saved = json.loads((run / "train.json").read_text())
    del saved["weight_decay"], saved["ema"]
    (run / "train.json").write_text(json.dumps(saved))
    _, optimizer, _, config, average, start, _ = prepare(load_preset("tiny"), TrainConfig(steps=6), run, resume=True)
    assert (config.weight_decay, config.ema, average, start) == (0.0, 0.0, None, 3)
    assert not isinstance(optimizer, MatrixAdamW)
    assert (TrainConfig().weight_decay, TrainConfig().ema) == (0.2, 0.998)  # what a new run gets
