"""The prefix objective (edge_rnn.prefix): each position's softmax over the words its typed letters
allow, checked against a brute-force reading of the text (which words start with the letters
typed so far) and a plain NumPy cross-entropy; gradients of the fused path against autodiff."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from edge_rnn.data import Dataset, autocomplete_splits, demo_corpus
from edge_rnn.evaluate import evaluate
from edge_rnn.export.bundle import export_bundle, read_manifest
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel
from edge_rnn.prefix import PrefixRanges
from edge_rnn.runtime import open_session
from edge_rnn.train import TrainConfig, train
from edge_rnn.vocab import PAD, UNK, SYMBOLS, Vocab


@pytest.fixture(scope="module")
def splits():
    return autocomplete_splits(demo_corpus(n_sentences=400, seed=3), vocab_size=60, max_len=60)


def typed_prefixes(ids: np.ndarray) -> list[list[str]]:
    """The letters typed of the current word at every position, read character by character."""
    rows = []
    for row in ids:
        typed, out = "", []
        for symbol in row:
            typed = "" if symbol in (PAD, 1) else typed + SYMBOLS[symbol]
            out.append(typed)
        rows.append(out)
    return rows


def test_ranges_hold_exactly_the_words_of_the_typed_prefix(splits):
    vocab = splits.vocab
    prefix = PrefixRanges.from_vocab(vocab)
    assert sorted(prefix.order[:2]) == [PAD, UNK] and list(prefix.order[:2]) == [0, 1]
    sorted_words = [vocab.words[i] for i in prefix.order]
    assert sorted_words[2:] == sorted(vocab.words[2:])
    np.testing.assert_array_equal(prefix.order[prefix.position], np.arange(len(vocab)))
    ids, targets = splits.train.batch(np.arange(8))
    sorted_targets, ranges = prefix.batch(ids, targets)
    np.testing.assert_array_equal(prefix.order[sorted_targets], targets)
    checked = 0
    for b, row in enumerate(typed_prefixes(ids)):
        for t, typed in enumerate(row):
            if targets[b, t] in (PAD, UNK):
                continue
            lo, hi = ranges[b, t]
            want = {w for w in vocab.words[2:] if w.startswith(typed)}
            assert set(sorted_words[lo:hi]) == want, (typed, vocab.words[targets[b, t]])
            assert lo <= sorted_targets[b, t] < hi
            checked += 1
    assert checked > 150
    assert (ranges[ids == 1] == [2, len(vocab)]).all()  # the space before a word: every word


def reference_loss(logits: np.ndarray, targets: np.ndarray, allowed: list[list[set[int]]]) -> float:
    """Mean over positions with a known target of -log softmax over the allowed word ids only."""
    total, n = 0.0, 0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if targets[b, t] in (PAD, UNK):
                continue
            ids = sorted(allowed[b][t])
            z = logits[b, t, ids].astype(np.float64)
            total += np.log(np.exp(z - z.max()).sum()) + z.max() - logits[b, t, targets[b, t]]
            n += 1
    return total / n


@pytest.mark.parametrize("manual", [True, False], ids=["fused", "autodiff"])
def test_loss_equals_numpy_over_the_allowed_words(splits, manual):
    vocab = splits.vocab
    prefix = PrefixRanges.from_vocab(vocab)
    mx.random.seed(1)
    model = RNNModel(ModelConfig(cell="gru", layers=2, units=16, embed_dim=8, vocab_size=len(vocab) - 2))
    for cell in model.layers:
        cell.manual_backward = manual
    ids, targets = splits.train.batch(np.arange(6))
    sorted_targets, ranges = prefix.batch(ids, targets)
    loss, (n, hits) = model.loss(mx.array(ids), mx.array(sorted_targets), None,
                                 (mx.array(prefix.order), mx.array(ranges)))
    logits = np.array(model(mx.array(ids))[0])
    allowed = [[{vocab.index[w] for w in vocab.words[2:] if w.startswith(typed)} for typed in row]
               for row in typed_prefixes(ids)]
    np.testing.assert_allclose(loss.item(), reference_loss(logits, targets, allowed), rtol=1e-5)
    want_hits = sum(max(allowed[b][t], key=lambda w: (logits[b, t, w], -prefix.position[w])) == targets[b, t]
                    for b in range(ids.shape[0]) for t in range(ids.shape[1]) if targets[b, t] not in (PAD, UNK))
    assert hits.item() == want_hits
    assert n.item() == ((targets != PAD) & (targets != UNK)).sum()


def test_fused_gradients_equal_autodiff(splits):
    prefix = PrefixRanges.from_vocab(splits.vocab)
    ids, targets = splits.train.batch(np.arange(5))
    sorted_targets, ranges = prefix.batch(ids, targets)
    args = (mx.array(ids), mx.array(sorted_targets), None, (mx.array(prefix.order), mx.array(ranges)))
    mx.random.seed(2)
    model = RNNModel(ModelConfig(cell="lstm", layers=2, units=12, embed_dim=6, vocab_size=len(splits.vocab) - 2,
                                 head_dim=5))
    grads = {}
    for manual in (True, False):
        for cell in model.layers:
            cell.manual_backward = manual
        _, g = nn.value_and_grad(model, model.loss)(*args)
        grads[manual] = dict(tree_flatten(g))
    for key, want in grads[False].items():
        want, got = np.array(want), np.array(grads[True][key])
        assert np.isfinite(want).all(), key
        scale = max(np.abs(want).max(), 1e-12)
        np.testing.assert_allclose(got / scale, want / scale, rtol=1e-5, atol=1e-6, err_msg=key)


def test_training_and_export_with_the_prefix_objective(tmp_path, corpus):
    run = tmp_path / "run"
    config = TrainConfig(corpus=corpus, steps=4, batch_size=8, eval_every=4, objective="prefix")
    final = train(ModelConfig(cell="gru", layers=1, units=16, embed_dim=8, vocab_size=50), config, run)
    assert np.isfinite(final["ce"])
    assert json.loads((run / "train.json").read_text())["objective"] == "prefix"
    # its scores compare only within a prefix: a plain top-k bundle would show words that do not fit
    with pytest.raises(EdgeRNNError, match="--prefix-head"):
        export_bundle(run, tmp_path / "plain")
    assert not (tmp_path / "plain").exists()
    bundle = export_bundle(run, tmp_path / "b", prefix_head=True)
    manifest = read_manifest(bundle)
    assert manifest["source"]["objective"] == "prefix" and "objective_note" in manifest
    session = open_session(bundle)
    session.type(" the b")
    assert all(word.startswith("b") for word, _ in session.suggestions(3))
    word_run = tmp_path / "word"
    train(ModelConfig(cell="gru", layers=1, units=16, embed_dim=8, vocab_size=50),
          TrainConfig(corpus=corpus, steps=1, batch_size=8), word_run)
    manifest = read_manifest(export_bundle(word_run, tmp_path / "w"))
    assert manifest["source"]["objective"] == "word" and "objective_note" not in manifest
    with pytest.raises(EdgeRNNError, match="objective"):
        TrainConfig(objective="spelling")
    with pytest.raises(EdgeRNNError, match="autocomplete"):
        train(ModelConfig(cell="gru", layers=1, units=8, task="charlm"),
              TrainConfig(corpus=corpus, steps=1, objective="prefix"), tmp_path / "charlm")


def test_unknown_words_and_padding_get_every_word():
    vocab = Vocab.from_counts(["the", "then", "a"])
    prefix = PrefixRanges.from_vocab(vocab)
    data = Dataset(chars=np.array([1, 21, 9, 6, 1, 2, 1, 2, 2], np.uint8),  # " the a aa"
                   targets=np.array([2, 2, 2, 2, 4, 4, UNK, UNK, UNK], np.int32),
                   starts=np.array([0]), lengths=np.array([9]))
    ids, targets = data.batch(np.array([0, 0]))
    ids, targets = np.pad(ids, ((0, 0), (0, 2))), np.pad(targets, ((0, 0), (0, 2)))
    sorted_targets, ranges = prefix.batch(ids, targets)
    words = [vocab.words[i] for i in prefix.order]
    assert [words[lo:hi] for lo, hi in ranges[0, :6]] == [
        ["a", "the", "then"], ["the", "then"], ["the", "then"], ["the", "then"], ["a", "the", "then"], ["a"]]
    assert (ranges[0, 6:] == [2, 5]).all()  # <unk> and <pad>: no loss, every word


def test_evaluate_follows_the_objective(splits):
    """With the prefix ranges ``evaluate`` reports the training loss's own numbers: its CE is the
    prefix loss, its top-1 the loss's hits (over non-pad positions, <unk> a miss)."""
    prefix = PrefixRanges.from_vocab(splits.vocab)
    mx.random.seed(3)
    model = RNNModel(ModelConfig(cell="gru", layers=1, units=16, embed_dim=8, vocab_size=len(splits.vocab) - 2))
    data = Dataset(splits.valid.chars, splits.valid.targets, splits.valid.starts[:7], splits.valid.lengths[:7])
    ids, targets = data.batch(np.arange(7))
    sorted_targets, ranges = prefix.batch(ids, targets)
    loss, (n, hits) = model.loss(mx.array(ids), mx.array(sorted_targets), None, (mx.array(prefix.order), mx.array(ranges)))
    got = evaluate(model, data, batch_size=7, prefix=prefix)
    assert got["objective"] == "prefix"
    np.testing.assert_allclose(got["ce"], loss.item(), rtol=1e-5)
    assert got["top1"] == pytest.approx(hits.item() / (targets != PAD).sum())
    plain = evaluate(model, data, batch_size=7)
    assert "objective" not in plain and plain["ce"] > got["ce"]
