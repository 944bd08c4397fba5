"""Label smoothing (``RNNModel.smoothing_term``): the loss it gives is the cross-entropy against
``(1 - epsilon) onehot + epsilon uniform`` over the classes that can be targets, written out over
every logit, in value and gradient; and training takes it from the flag to ``train.json``."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from edge_rnn.data import demo_corpus, make_splits
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel
from edge_rnn.train import TrainConfig, batch_at, train
from edge_rnn.vocab import PAD, UNK


def reference_loss(model, ids, targets, epsilon, first):
    """Cross-entropy against the smoothed target, written out over every logit."""
    logits, _ = model(ids)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    V = logits.shape[-1]
    uniform = np.zeros(V, np.float32)
    uniform[first:] = 1 / (V - first)
    onehot = mx.array(np.eye(V, dtype=np.float32)[np.array(targets)])
    target = (1 - epsilon) * onehot + epsilon * mx.array(uniform)
    weights = model.loss_weights(targets)
    ce = -(target * logp).sum(-1)
    return (ce * weights).sum() / weights.sum()


@pytest.mark.parametrize("task,head_dim", [("autocomplete", 0), ("autocomplete", 6), ("charlm", 0)])
def test_the_smoothing_term_is_the_cross_entropy_against_the_smoothed_target(task, head_dim):
    """Values and gradients against the smoothed target written out over all logits (autodiff);
    the uniform share skips <pad> (and, for words, <unk>), which are never targets."""
    splits = make_splits(demo_corpus(400), task, 150, seed=0)
    mx.random.seed(0)
    vocab_size = len(splits.vocab) - 2 if task == "autocomplete" else None
    model = RNNModel(ModelConfig(cell="lstm", units=12, embed_dim=5, layers=2, vocab_size=vocab_size or 150,
                                 head_dim=head_dim, task=task))
    model.head.bias = 3 * mx.random.normal(model.head.bias.shape)  # a confident head, far from uniform
    ids, targets = (mx.array(a) for a in batch_at(splits.train, 2, 4, seed=0, max_len=200))
    assert (np.array(targets) == PAD).any()  # padding carries no loss and no smoothing
    first = UNK + 1 if task == "autocomplete" else PAD + 1
    ours = nn.value_and_grad(model, lambda i, t: model.loss(i, t, smoothing=0.2)[0])
    ref = nn.value_and_grad(model, lambda i, t: reference_loss(model, i, t, 0.2, first))
    (a, ga), (b, gb) = ours(ids, targets), ref(ids, targets)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    plain = float(model.loss(ids, targets)[0])
    assert abs(float(a) - plain) > 1e-2  # the spread share changes the loss
    for (name, x), (_, y) in zip(tree_flatten(ga), tree_flatten(gb)):
        np.testing.assert_allclose(np.array(x), np.array(y), atol=2e-6, err_msg=name)


def test_label_smoothing_is_a_share_of_the_word_objectives_target():
    with pytest.raises(EdgeRNNError, match=r"label-smoothing must be in \[0, 1\)"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(EdgeRNNError, match="label-smoothing needs the word objective"):
        TrainConfig(label_smoothing=0.1, objective="prefix")
    with pytest.raises(EdgeRNNError, match=r"distill \+ label-smoothing must be <= 1"):
        TrainConfig(label_smoothing=0.2, distill=0.9)


def test_a_smoothed_run_learns_and_records_its_setting(tmp_path, corpus):
    run = tmp_path / "run"
    cfg = ModelConfig(cell="gru", units=32, embed_dim=8, vocab_size=150)
    final = train(cfg, TrainConfig(corpus=corpus, steps=40, batch_size=8, eval_every=40, eval_batches=2,
                                   label_smoothing=0.1), run)
    assert final["top1"] > 0.1
    assert json.loads((run / "train.json").read_text())["label_smoothing"] == 0.1
