"""The trigram teacher (``edge_rnn.distill``): its targets are the trigram's, sit on the spaces
before words, and the loss it adds is the cross-entropy against the mixed target."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from edge_rnn.baselines import KneserNeyTrigram, training_words
from edge_rnn.data import demo_corpus, make_splits
from edge_rnn.distill import Teacher
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel
from edge_rnn.train import TrainConfig, batch_at, prepare, teacher_at, train
from edge_rnn.vocab import PAD, SPACE, UNK


@pytest.fixture(scope="module")
def splits():
    return make_splits(demo_corpus(800), "autocomplete", 150, seed=0)


@pytest.fixture(scope="module")
def teacher(splits):
    return Teacher.build(splits.train, splits.vocab, k=8)


def test_each_space_before_a_word_gets_the_trigrams_best_words_for_its_history(splits, teacher):
    data = splits.train
    assert np.array_equal(teacher.context_of >= 0, data.chars == SPACE)
    trigram = KneserNeyTrigram(splits.vocab, training_words(data))
    rng = np.random.default_rng(0)
    for i in rng.choice(len(data), 20, replace=False):
        start, n = int(data.starts[i]), int(data.lengths[i])
        words = list(data.targets[start:start + n][data.chars[start:start + n] == SPACE])
        for j, p in enumerate(np.flatnonzero(data.chars[start:start + n] == SPACE)):
            u, v = ([trigram.bos, trigram.bos] + words[:j])[-2:]  # the history restarts per observation
            q = trigram.distribution(u, v).copy()
            q[[PAD, UNK]] = 0
            best = np.argsort(-q, kind="stable")[:8]
            row = teacher.context_of[start + p]
            np.testing.assert_allclose(np.sort(teacher.probs[row]), np.sort(q[best] / q[best].sum()), rtol=1e-6)
            assert q[teacher.words[row]].min() >= q[best].min() - 1e-12  # the best 8, ties aside
            assert teacher.probs[row][0] == teacher.probs[row].max()
    assert PAD not in teacher.words and UNK not in teacher.words
    assert 0 < teacher.mass <= 1


def test_a_batch_of_teachers_is_row_for_row_with_the_training_batch(splits, teacher):
    ids, _ = batch_at(splits.train, 5, 8, seed=1, max_len=200)
    at, words, probs = teacher_at(teacher, splits.train, 5, 8, seed=1, max_len=200)
    assert at.shape == (8, 100) and words.shape == probs.shape == (8, 100, 8)
    for b in range(8):
        spaces = np.flatnonzero(ids[b] == SPACE)
        used = probs[b].sum(-1) > 0
        assert used.sum() == len(spaces)
        np.testing.assert_array_equal(at[b, used], spaces)
        np.testing.assert_allclose(probs[b, used].sum(-1), 1, rtol=1e-5)


def reference_loss(model, ids, targets, alpha, at, words, probs):
    """Cross-entropy against the mixed target, written out over every logit."""
    logits, _ = model(ids)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    B, T, V = logits.shape
    target = mx.array(np.eye(V, dtype=np.float32)[np.array(targets)])  # (B, T, V) one-hot
    soft = np.zeros((B, T, V), np.float32)
    share = np.zeros((B, T), np.float32)
    for b in range(B):
        for s in range(at.shape[1]):
            if probs[b, s].sum() > 0:
                np.add.at(soft[b, at[b, s]], words[b, s], probs[b, s])
                share[b, at[b, s]] = alpha
    target = target * (1 - mx.array(share))[..., None] + alpha * mx.array(soft) * (mx.array(share) > 0)[..., None]
    weights = model.loss_weights(targets)
    ce = -(target * logp).sum(-1)
    return (ce * weights).sum() / weights.sum()


@pytest.mark.parametrize("head_dim", [0, 6])
def test_the_teacher_term_is_the_cross_entropy_against_the_mixed_target(splits, teacher, head_dim):
    """Values and gradients against the mixture written out over all logits (autodiff)."""
    mx.random.seed(0)
    model = RNNModel(ModelConfig(cell="lstm", units=12, embed_dim=5, layers=2, vocab_size=len(splits.vocab) - 2,
                                 head_dim=head_dim))
    ids, targets = (mx.array(a) for a in batch_at(splits.train, 2, 4, seed=0, max_len=200))
    arrays = teacher_at(teacher, splits.train, 2, 4, seed=0, max_len=200)
    assert (np.array(targets) == UNK).any()  # <unk> targets carry no loss and no teacher
    at, words, probs = (mx.array(a) for a in arrays)
    ours = nn.value_and_grad(model, lambda i, t: model.loss(i, t, teacher=(0.4, at, words, probs))[0])
    ref = nn.value_and_grad(model, lambda i, t: reference_loss(model, i, t, 0.4, *arrays))
    (a, ga), (b, gb) = ours(ids, targets), ref(ids, targets)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    plain = float(model.loss(ids, targets)[0])
    assert abs(float(a) - plain) > 1e-3  # the teacher changes the loss
    for (name, x), (_, y) in zip(tree_flatten(ga), tree_flatten(gb)):
        np.testing.assert_allclose(np.array(x), np.array(y), atol=2e-6, err_msg=name)


def test_distill_is_for_the_word_objective_of_an_autocomplete_model(tmp_path):
    with pytest.raises(EdgeRNNError, match="distill needs an autocomplete model"):
        prepare(ModelConfig(cell="gru", units=8, embed_dim=4, task="charlm"), TrainConfig(distill=0.5),
                tmp_path / "run", resume=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(EdgeRNNError, match="distill needs the word objective"):
        TrainConfig(distill=0.5, objective="prefix")
    with pytest.raises(EdgeRNNError, match=r"distill must be in \[0, 1\]"):
        TrainConfig(distill=1.5)


def test_a_distilled_run_learns_and_logs_its_teacher(tmp_path, corpus):
    run = tmp_path / "run"
    cfg = ModelConfig(cell="gru", units=32, embed_dim=8, vocab_size=150)
    final = train(cfg, TrainConfig(corpus=corpus, steps=40, batch_size=8, eval_every=40, eval_batches=2,
                                   distill=0.5), run)
    assert final["top1"] > 0.1
    assert "trigram teacher x 0.5" in (run / "train.log").read_text()
