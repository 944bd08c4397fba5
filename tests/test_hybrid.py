"""scripts/bench_hybrid.py: the model mixed with the Kneser-Ney trigram is each of them at the
ends of the weight range, and something of both between."""

import sys
from pathlib import Path

import numpy as np

from edge_rnn.baselines import KneserNeyTrigram, training_words
from edge_rnn.evaluate import run_splits
from edge_rnn.keyboard import RunKeyboard, first_words, suggest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_hybrid import mixed_suggestions  # noqa: E402


def test_the_mixture_is_the_model_at_one_and_the_trigram_at_zero(trained):
    run, _ = trained
    splits = run_splits(run, None)
    data = first_words(splits.test, 300)
    model = RunKeyboard(run, batch_size=8)
    trigram = KneserNeyTrigram(splits.vocab, training_words(splits.train))
    mixed = mixed_suggestions(model, trigram, data, weights=(0.0, 0.5, 1.0))
    alone_model, alone_trigram = suggest(model, data), suggest(trigram, data)
    np.testing.assert_array_equal(mixed[1.0], alone_model)
    np.testing.assert_array_equal(mixed[0.0], alone_trigram)
    # between, it is neither (on this model the two disagree often enough to tell)
    assert (mixed[0.5] != alone_model).any() and (mixed[0.5] != alone_trigram).any()
