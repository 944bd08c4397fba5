"""Held-out metrics: cross-entropy, top-1/top-3 accuracy, bits per character.

Conventions (say them wherever a number is shown):

- ``ce`` is the mean cross-entropy (nats) over the tokens that carry loss: not ``<pad>``, and for
  autocomplete not ``<unk>`` either, exactly the training loss.
- ``top1``/``top3`` follow the Distill article: argmax over *all* output classes at every non-pad
  position, and a position whose target is ``<unk>`` counts as a miss (the model cannot name a word
  it does not know). ``top1_known`` leaves those positions out.
- ``bpc`` (char-LM task) is ``ce / ln 2``.
- With ``prefix`` (a run trained with the prefix objective, ``edge_rnn.prefix``) every one of these
  is over the words of the typed prefix only, as its training loss was: ``top1`` is then the
  suggestion a keyboard shows first, and ``"objective": "prefix"`` says so in the metrics.

Batching does not change the numbers: every observation starts from a zero state and padding is
only ever on the right, so a padded batch computes the same per-position outputs as batch size 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np

from edge_rnn import distributed
from edge_rnn.data import Dataset, Splits, load_corpus, make_splits, most_frequent_baseline
from edge_rnn.io import EdgeRNNError
from edge_rnn.loss import mask_outside
from edge_rnn.model import TRAIN, RNNModel, load, load_config
from edge_rnn.prefix import PrefixRanges, run_objective
from edge_rnn.vocab import PAD, UNK, Vocab


def _batch_sums(model: RNNModel, ids: mx.array, targets: mx.array,
                prefix: tuple[mx.array, mx.array] | None = None) -> mx.array:
    """Per-batch sums: [ce over loss tokens, loss tokens, non-pad tokens, unk tokens, top1, top3].

    ``prefix``: ``(order, ranges)`` as in ``RNNModel.loss``, ``targets`` as positions in ``order``.
    """
    if prefix is None:
        logits, _ = model(ids)
    else:
        order, ranges = prefix
        logits = mask_outside(model.output(model.features(ids)[0], order), ranges)
    logits = logits.astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    target_logp = mx.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weights = model.loss_weights(targets)
    valid = targets != PAD
    # rank of the target = number of classes scoring strictly higher; top-k hit iff rank < k
    target_logit = mx.take_along_axis(logits, targets[..., None], axis=-1)
    rank = (logits > target_logit).sum(axis=-1)
    hit = valid & (targets != UNK) if model.config.task == "autocomplete" else valid
    return mx.stack([
        -(target_logp * weights).sum(),
        weights.sum(),
        valid.sum(),
        (targets == UNK).sum() if model.config.task == "autocomplete" else mx.array(0),
        (hit & (rank < 1)).sum(),
        (hit & (rank < 3)).sum(),
    ]).astype(mx.float32)


def evaluate(model: RNNModel, data: Dataset, batch_size: int = 64, max_batches: int | None = None,
             ranks: distributed.Ranks = distributed.Ranks(None), prefix: PrefixRanges | None = None) -> dict:
    """Metrics of ``model`` on ``data`` (all of it, or the first ``max_batches`` batches); over the
    typed prefix's words only with ``prefix`` (see the module's conventions).

    With several ranks each takes every ``size``-th batch and the sums are added over ranks:
    the same numbers as one process.
    """
    sums = np.zeros(6, dtype=np.float64)
    order = None if prefix is None else mx.array(prefix.order)
    for k, (ids, targets) in enumerate(data.batches(batch_size, shuffle=False)):
        if max_batches is not None and k >= max_batches:
            break
        if k % ranks.size != ranks.rank:
            continue
        ranges = None
        if prefix is not None:
            targets, ranges = prefix.batch(ids, targets)
            ranges = (order, mx.array(ranges))
        sums += np.array(_batch_sums(model, mx.array(ids), mx.array(targets), ranges), dtype=np.float64)
    if ranks.size > 1:  # float32 on the wire: counts stay exact below 2**24 per rank
        sums = np.array(distributed.all_sum(mx.array(sums.astype(np.float32)), ranks), dtype=np.float64)
    ce_sum, n_loss, n_valid, n_unk, top1, top3 = sums
    ce = float(ce_sum / max(n_loss, 1))
    metrics = {
        "ce": ce,
        "top1": float(top1 / max(n_valid, 1)),
        "top3": float(top3 / max(n_valid, 1)),
        "tokens": int(n_valid),
    }
    if prefix is not None:
        metrics["objective"] = "prefix"
    if model.config.task == "autocomplete":
        metrics["top1_known"] = float(top1 / max(n_valid - n_unk, 1))
        metrics["unk_rate"] = float(n_unk / max(n_valid, 1))
    else:
        metrics["bpc"] = ce / math.log(2)
    return metrics


def run_splits(run_dir: Path, vocab: Vocab | None) -> Splits:
    """Rebuild a run's data exactly (same corpus, seed, vocabulary) from its ``train.json``."""
    path = Path(run_dir) / TRAIN
    if not path.is_file():
        raise EdgeRNNError(f"{run_dir} has no {TRAIN}: it was not made by edge-rnn train")
    settings = json.loads(path.read_text())
    config = load_config(run_dir)
    splits = make_splits(load_corpus(settings["corpus"]), config.task, config.vocab_size,
                         settings.get("max_len", 200), settings.get("seed", 0))
    splits = splits.train_share(settings.get("train_fraction", 1.0), settings.get("seed", 0))
    if vocab is not None and splits.vocab is not None and splits.vocab.words != vocab.words:
        raise EdgeRNNError(f"{run_dir}: its corpus {settings['corpus']!r} no longer gives the run's vocabulary")
    return splits


def evaluate_run(run_dir: Path, split: str = "test", batch_size: int = 64) -> dict:
    """Metrics of a saved run on one of its splits, with the most-frequent-word baseline."""
    if split not in ("train", "valid", "test"):
        raise EdgeRNNError(f"unknown split {split!r}; choose train, valid or test")
    model, vocab = load(run_dir)
    splits = run_splits(run_dir, vocab)
    result = {"model": evaluate(model, getattr(splits, split), batch_size, prefix=run_prefix(run_dir, splits.vocab))}
    if splits.task == "autocomplete" and split == "test":
        result["baseline"] = {"top1": most_frequent_baseline(splits)}
    return result


def run_prefix(run_dir: Path, vocab: Vocab | None) -> PrefixRanges | None:
    """The prefix objective's ranges when the run was trained with it (its metrics follow it)."""
    return PrefixRanges.from_vocab(vocab) if vocab is not None and run_objective(run_dir) == "prefix" else None


def evaluate_corpus(run_dir: Path, corpus: str, batch_size: int = 64) -> dict:
    """Metrics of a saved run on any text: normalised like training, cut into observations the
    same way, labelled with the run's own vocabulary (words outside it are ``<unk>``)."""
    from edge_rnn.data import encode_autocomplete, encode_charlm

    model, vocab = load(run_dir)
    text = load_corpus(corpus)
    if model.config.task == "autocomplete":
        if vocab is None:
            raise EdgeRNNError(f"{run_dir} has no vocab.json; labelling text needs the run's words")
        data = encode_autocomplete(text, vocab)
    else:
        data = encode_charlm(text)
    return {"model": evaluate(model, data, batch_size, prefix=run_prefix(run_dir, vocab))}
