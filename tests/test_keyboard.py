"""Keyboard metrics: a hand-scored example, the batched run path against the real Session, bundles
(fp32 full head and prefix head) through the CLI, and a model that beats both baselines."""

import json

import numpy as np
import pytest

from edge_rnn.data import encode_autocomplete
from edge_rnn.evaluate import run_splits
from edge_rnn.export.bundle import export_bundle
from edge_rnn.keyboard import RunKeyboard, first_words, keyboard_report, metrics, n_words, suggest
from edge_rnn.runtime import open_session
from edge_rnn.vocab import Vocab, decode_chars
from test_cli import assert_one_line_error, edge_rnn


class Scripted:
    """A keyboard that shows fixed suggestions, one list per keystroke, and records what it saw."""

    def __init__(self, script):
        self.script, self.typed = list(script), ""

    def reset(self):
        self.typed += "|"

    def type(self, text):
        self.typed += text

    def suggestion_ids(self, k=3):
        return np.array(self.script.pop(0)[:k], np.int64), np.zeros(0)


def test_metrics_of_a_hand_scored_example():
    """ " ab zz c": ab (id 2), zz (OOV), c (id 3); one row per keystroke.

    ab: shown top-1 after 1 letter -> 1 + 1 tap = 2 keys (3 without);
    zz: never shown -> 3 keys (3); c: shown 2nd at 0 letters -> 1 tap (2). KSR = 1 - 6/8.
    """
    data = encode_autocomplete("ab zz c", Vocab.from_counts(["ab", "c"]))
    script = [[3], [2], [2], [2, 3], [], [], [2, 3], [3]]
    keyboard = Scripted(script)
    r = metrics(data, suggest(keyboard, data))
    assert keyboard.typed == "| ab zz c"
    assert (r["words"], r["positions"]) == (3, 8)
    assert r["top1"] == pytest.approx(3 / 8) and r["top3"] == pytest.approx(4 / 8)
    assert r["keystrokes"] == {"without": 8, "with": 6} and r["ksr"] == pytest.approx(0.25)
    assert r["oov_rate"] == pytest.approx(1 / 3) and r["next_word_top3"] == pytest.approx(1 / 3)
    by = r["by_letters"]
    assert [by[b]["positions"] for b in ("0", "1", "2", "3", "4+")] == [3, 3, 2, 0, 0]
    assert (by["0"]["top1"], by["1"]["top1"], by["2"]["top1"]) == (0, pytest.approx(2 / 3), 0.5)


def test_a_word_shown_only_when_fully_typed_saves_nothing():
    data = encode_autocomplete("ab", Vocab.from_counts(["ab"]))
    r = metrics(data, suggest(Scripted([[], [], [2]]), data))
    assert r["keystrokes"] == {"without": 3, "with": 3} and r["ksr"] == 0


def test_max_words_cuts_the_text_after_that_many_words(trained):
    run, _ = trained
    test = run_splits(run, None).test
    for n in (1, 30, 100):
        few = first_words(test, n)
        assert n_words(few) == n
        whole = " ".join(decode_chars(test.chars[s:s + k]).strip() for s, k in zip(test.starts, test.lengths))
        assert " ".join(decode_chars(few.chars[s:s + k]).strip() for s, k in zip(few.starts, few.lengths)) \
            == " ".join(whole.split()[:n])
    assert first_words(test, 10**9) is test


def test_the_batched_run_gives_the_suggestions_of_the_session(trained):
    """Sequence call over a batch of observations == one MLX step per keystroke in a Session."""
    run, _ = trained
    data = first_words(run_splits(run, None).test, 40)
    fast = suggest(RunKeyboard(run, batch_size=3), data)
    slow = suggest(open_session(run, restart="continuous"), data)
    assert len(fast) == data.lengths.sum() and (fast[:, 0] >= 2).mean() > 0.8  # -1: no word has the prefix
    assert not np.isin(fast, [0, 1]).any()
    np.testing.assert_array_equal(fast, slow)


def test_bundles_are_scored_through_the_session_like_the_run(trained, tmp_path):
    """fp32 full head and the alphabetical prefix head (relabelled ids) score what the run does."""
    run, _ = trained
    full = export_bundle(run, tmp_path / "full", with_log_probs=True)
    prefix = export_bundle(run, tmp_path / "prefix", prefix_head=True)
    reports = {name: keyboard_report(path, max_words=150) for name, path in
               [("run", run), ("full", full), ("prefix", prefix)]}
    model = {name: next(iter(r["keyboards"].values())) for name, r in reports.items()}
    for name in ("full", "prefix"):
        assert model[name]["words"] == model["run"]["words"]
        for key in ("top1", "top3", "ksr"):
            assert model[name][key] == pytest.approx(model["run"][key], abs=0.01), (name, key)
    # the baselines do not depend on the ids' order
    for name in ("prefix frequency", "KN trigram"):
        assert reports["prefix"]["keyboards"][name]["top1"] == reports["run"]["keyboards"][name]["top1"]


def test_eval_keyboard_on_the_command_line(trained, corpus, tmp_path):
    run, _ = trained
    result = edge_rnn("eval", run, "--keyboard", "--max-words", 60)
    assert result.returncode == 0, result.stderr
    for fragment in ("model (run, MLX)", "prefix frequency", "KN trigram", "KSR", "letters typed"):
        assert fragment in result.stdout
    assert "words" in result.stderr  # progress, although stderr is not a terminal
    other = tmp_path / "other.txt"
    other.write_text("The capital of France is Paris. Maria was born in Spain, so she speaks Spanish.")
    result = edge_rnn("eval", run, "--keyboard", "--corpus", other, "--json")
    report = json.loads(result.stdout)
    assert report["text"] == str(other) and report["keyboards"]["KN trigram"]["words"] == 15
    assert "--keyboard" in edge_rnn("eval", "--help").stdout and "KSR protocol" in edge_rnn("eval", "--help").stdout


def test_eval_on_any_text_file(trained, corpus):
    """Cross-entropy and top-k on a text file: the run's own corpus file holds the observations of
    its three splits, so its figures are their token-weighted means."""
    from edge_rnn.evaluate import evaluate_corpus, evaluate_run

    run, _ = trained
    on_file = evaluate_corpus(run, corpus)["model"]
    parts = [evaluate_run(run, split)["model"] for split in ("train", "valid", "test")]
    tokens = sum(p["tokens"] for p in parts)
    loss_tokens = [p["tokens"] * (1 - p["unk_rate"]) for p in parts]
    assert on_file["tokens"] == tokens
    assert on_file["top1"] == pytest.approx(sum(p["top1"] * p["tokens"] for p in parts) / tokens, rel=1e-6)
    assert on_file["ce"] == pytest.approx(sum(p["ce"] * n for p, n in zip(parts, loss_tokens)) / sum(loss_tokens), rel=1e-4)
    result = json.loads(edge_rnn("eval", run, "--corpus", corpus, "--json").stdout)["model"]
    assert result["tokens"] == tokens


@pytest.mark.parametrize("args,fragment", [
    (["--max-words", "0", "--keyboard"], "--max-words must be >= 1"),
    (["--max-words", "5"], "--max-words applies to --keyboard"),
    (["--keyboard", "--corpus", "/no/such.txt"], "/no/such.txt"),
])
def test_bad_eval_input_is_one_line(trained, args, fragment):
    run, _ = trained
    assert_one_line_error(edge_rnn("eval", run, *args), fragment)


def test_a_bundle_without_its_run_cannot_build_baselines(trained, tmp_path):
    run, _ = trained
    bundle = export_bundle(run, tmp_path / "b", with_log_probs=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["source"]["run_dir"] = str(tmp_path / "gone")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(edge_rnn("eval", bundle, "--keyboard"), "training split", "not here")
    assert_one_line_error(edge_rnn("eval", bundle), "is a bundle")


@pytest.fixture(scope="module")
def longer(corpus, tmp_path_factory):
    """The tiny preset trained 1,000 steps at quickstart's batch and rate (150 are too few to pass a trigram)."""
    from edge_rnn.model import load_preset
    from edge_rnn.train import TrainConfig, train

    run = tmp_path_factory.mktemp("longer") / "tiny"
    train(load_preset("tiny"), TrainConfig(corpus=corpus, steps=1000, batch_size=32, lr=1e-2, eval_every=500), run)
    return run


def test_the_tiny_model_beats_both_baselines_on_top1_and_ksr(longer):
    """The demo corpus rewards memory beyond two words, so a trained tiny model beats both
    keyboards (1,501 test words; the trigram by about a point of top-1, the README's table)."""
    report = keyboard_report(longer)["keyboards"]
    model = report["model (run, MLX)"]
    for name in ("prefix frequency", "KN trigram"):
        assert model["top1"] > report[name]["top1"], name
        assert model["ksr"] > report[name]["ksr"], name
    assert report["KN trigram"]["top1"] > report["prefix frequency"]["top1"]  # context helps
