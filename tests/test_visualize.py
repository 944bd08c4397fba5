"""Connectivity, cell-state heat maps, run curves and accuracy by letters typed (issue 11).

Connectivity is checked against central finite differences of a float64 NumPy forward pass
(tests/reference.py), perturbing the one-hot input itself; the figures are checked for their exact
pixel size and for actually holding a picture; the HTML page for fetching nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import mlx.core as mx
import numpy as np
import pytest
import reference as ref
from mlx.utils import tree_flatten

from edge_rnn import connectivity as conn
from edge_rnn import figures, visualize
from edge_rnn.evaluate import evaluate, run_splits
from edge_rnn.model import ModelConfig, RNNModel, load, save
from edge_rnn.vocab import N_SYMBOLS, PAD, Vocab

IDS = np.array([1, 21, 9, 6, 1, 4, 2, 21], dtype=np.int32)  # " the cat"
TARGETS = np.array([5, 5, 5, 5, 7, 7, 7, 7], dtype=np.int32)


def reference_logits(cfg: ModelConfig, params: dict, onehot: np.ndarray) -> np.ndarray:
    """float64 forward from a (B, T, 28) one-hot-like input: x = onehot @ [0-row; embedding]."""
    table = np.concatenate([np.zeros((1, cfg.embed_dim)), params["embedding"]])
    x = onehot @ table
    n_states = {"gru": 1, "lstm": 2, "nlstm": 1 + cfg.depth}[cfg.cell]
    for k in range(cfg.layers):
        p = {name[len(f"layers.{k}."):]: v for name, v in params.items() if name.startswith(f"layers.{k}.")}
        state = tuple(np.zeros((onehot.shape[0], cfg.units)) for _ in range(n_states))
        x, _ = ref.run_sequence(cfg.cell, p, x, state)
    return x @ params["head.weight"].T + params["head.bias"]


def finite_difference_connectivity(cfg, params, ids, targets, n, eps=1e-5) -> np.ndarray:
    """||d logit[n, targets[n]] / d onehot[t]||^2 for every t, by central differences in float64."""
    T = len(ids)
    onehot = np.eye(N_SYMBOLS)[ids]
    plus = np.repeat(onehot[None], T * N_SYMBOLS, axis=0)
    minus = plus.copy()
    for t in range(T):
        for s in range(N_SYMBOLS):
            plus[t * N_SYMBOLS + s, t, s] += eps
            minus[t * N_SYMBOLS + s, t, s] -= eps
    lp = reference_logits(cfg, params, plus)[:, n, targets[n]]
    lm = reference_logits(cfg, params, minus)[:, n, targets[n]]
    grad = ((lp - lm) / (2 * eps)).reshape(T, N_SYMBOLS)
    return (grad**2).sum(axis=-1)


@pytest.mark.parametrize("cell,layers,autodiff", [("gru", 2, False), ("lstm", 2, False), ("nlstm", 1, False),
                                                  ("lstm", 1, True)])
def test_connectivity_equals_finite_differences(cell, layers, autodiff):
    mx.random.seed(3)
    cfg = ModelConfig(cell=cell, layers=layers, units=6, embed_dim=5, vocab_size=8, depth=2)
    model = RNNModel(cfg)
    for c in model.layers:
        c.manual_backward = not autodiff
    params = {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(model.parameters())}
    C = conn.connectivity(model, IDS, TARGETS)
    assert C.shape == (len(IDS), len(IDS))
    for n in (0, 3, 5, len(IDS) - 1):
        expected = finite_difference_connectivity(cfg, params, IDS, TARGETS, n)
        assert expected[: n + 1].max() > 1e-6  # the check is not vacuous
        np.testing.assert_allclose(C[n], expected, rtol=2e-3, atol=1e-9 * expected.max())
        assert np.all(C[n, n + 1:] == 0)  # the future never feeds the present
    # a subset of output positions gives the same rows as all of them
    np.testing.assert_allclose(conn.connectivity(model, IDS, TARGETS, np.array([5, 2])), C[[5, 2]], rtol=1e-5)


def test_letters_typed_counts_from_the_space():
    ids = np.array([[1, 21, 9, 6, 1, 4, 2, 0, 0]])
    np.testing.assert_array_equal(conn.letters_typed(ids), [[0, 1, 2, 3, 0, 1, 2, 3, 4]])


def test_context_accuracy_ignores_padding(trained):
    run, _ = trained
    model, vocab = load(run)
    data = run_splits(run, vocab).test
    one = conn.context_accuracy(model, data, batch_size=1)  # no padding at all
    padded = conn.context_accuracy(model, data, batch_size=16)  # right-padded batches
    assert one["count"].sum() == data.n_chars() == int((data.targets != PAD).sum())
    np.testing.assert_array_equal(padded["count"], one["count"])
    np.testing.assert_allclose(padded["top1"], one["top1"])
    np.testing.assert_allclose(padded["top3"], one["top3"])
    # summed over buckets it is evaluate()'s top-1, whose denominator is the non-pad tokens
    overall = (padded["top1"] * padded["count"]).sum() / padded["count"].sum()
    assert overall == pytest.approx(evaluate(model, data, 16)["top1"], abs=1e-6)
    assert padded["top1"][3] > padded["top1"][0]  # seeing letters of the word helps


def test_encode_text_labels_each_character_with_its_word(trained):
    run, _ = trained
    model, vocab = load(run)
    enc = conn.encode_text(model, vocab, "The capital, of France!")
    assert enc.text == " the capital of france"
    assert [vocab.words[t] for t in enc.targets[:5]] == ["the"] * 4 + ["capital"]
    assert enc.known.all()


def is_picture(path, size_inches) -> np.ndarray:
    image = matplotlib.image.imread(path)
    w, h = size_inches
    assert image.shape[:2] == (round(h * figures.DPI), round(w * figures.DPI))
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05  # not blank
    assert len(np.unique(rgb, axis=0)) > 50  # text, colour maps and lines, not a flat fill
    return image


def test_plot_of_runs_is_the_expected_picture(trained, tmp_path):
    run, _ = trained
    out = tmp_path / "runs.png"
    curves = visualize.run_plot([run, run], out)
    is_picture(out, figures.RUNS_SIZE)
    assert len(curves) == 2 and curves[0].context["count"].sum() > 0


def test_heat_maps_of_a_trained_run(trained, tmp_path):
    run, _ = trained
    out = tmp_path / "states.png"
    text = "the capital of france is paris"
    panels = visualize.run_inspect(run, text, out)
    assert [name for name, _ in panels] == ["layer 1 h: hidden state"]  # tiny is a 1-layer GRU
    is_picture(out, figures.states_size(len(text) + 1, 1, 32))
    assert np.abs(panels[0][1]).max() > 0.1


def test_nested_lstm_heat_maps_show_outer_and_inner_memories(tmp_path):
    mx.random.seed(0)
    model = RNNModel(ModelConfig(cell="nlstm", layers=2, units=12, depth=3, embed_dim=8, vocab_size=4))
    vocab = Vocab.from_counts(["the", "cat", "sat", "on"])
    save(model, tmp_path / "run", vocab)
    text = "the cat sat"
    panels = visualize.run_inspect(tmp_path / "run", text, tmp_path / "states.png", max_units=8)
    assert [name.split(":")[0] for name in [p[0] for p in panels]] == [
        f"layer {k} c{d}" for k in (1, 2) for d in range(3)]
    is_picture(tmp_path / "states.png", figures.states_size(len(text) + 1, 6, 8))
    # the traced states are the cells' own: stepping the model gives the same outer memory
    ids = conn.encode_text(model, vocab, text).ids
    state = model.initial_state(1)
    for t in range(len(ids)):
        _, state = model.step(mx.array(ids[t:t + 1]), state)
    np.testing.assert_allclose(panels[3][1][-1], np.array(state[1][1][0]), rtol=1e-6)  # layer 2 c0


def test_connectivity_pictures_and_self_contained_page(trained, tmp_path):
    run, _ = trained
    text = "the capital of france is paris"
    r = visualize.run_connectivity(run, text, 12, tmp_path / "strip.png")
    is_picture(tmp_path / "strip.png", figures.strip_size(len(r.text)))
    visualize.run_connectivity(run, text, None, tmp_path / "matrix.png")
    is_picture(tmp_path / "matrix.png", figures.matrix_size(len(r.text)))
    visualize.run_connectivity(run, text, None, tmp_path / "page.html")
    page = (tmp_path / "page.html").read_text()
    # nothing fetched: no URLs, no external scripts, styles, images or fonts, no requests from script
    for forbidden in ("http:", "https:", "//", "src=", "<link", "@import", "url(", "fetch(", "XMLHttpRequest"):
        assert forbidden not in page.replace("<\\/", ""), forbidden
    data = json.loads(re.search(r"const data = (\{.*?\});\n", page).group(1))
    assert data["text"] == r.text
    assert np.allclose(np.array(data["conn"]), figures.row_normalised(r.C), atol=1e-4)
    assert data["targets"][12] == r.target_names[12]


def edge_rnn(*args):
    return subprocess.run([sys.executable, "-c", "from cli.main import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_cli_connectivity_inspect_and_plot(trained, tmp_path):
    run, _ = trained
    result = edge_rnn("connectivity", run, "the capital of fra", "--target-pos", "17", "--out", tmp_path / "c.html")
    assert result.returncode == 0, result.stderr
    # "fra" is no word of the vocabulary: the model's own top-1 stands in for it, and says so
    assert "the capital of fra" in result.stdout and "france (model's guess)" in result.stdout
    assert (tmp_path / "c.html").is_file()
    result = edge_rnn("inspect", run, "the cat", "--out", tmp_path / "s.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.png").is_file()
    result = edge_rnn("plot", run, "--out", tmp_path / "p.png", "--max-batches", "2")
    assert result.returncode == 0, result.stderr
    assert "letters typed" in result.stdout and (tmp_path / "p.png").is_file()


@pytest.mark.parametrize("args,fragment", [
    (["connectivity", "RUN", "the cat", "--out", "x.pdf"], "--out must end in .html or .png"),
    (["connectivity", "RUN", "the cat", "--target-pos", "99"], "--target-pos must lie in 0..7"),
    (["connectivity", "RUN", "123 !!"], "no usable characters"),
    (["inspect", "/no/such/run", "the cat"], "not a run directory"),
])
def test_cli_bad_input_is_one_line(trained, args, fragment):
    run, _ = trained
    result = edge_rnn(*[str(run) if a == "RUN" else a for a in args])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_html_page_in_a_browser_fetches_nothing_and_follows_the_mouse(trained, tmp_path):
    """Chromium (Debian's, driven by Playwright) loads the page with every request recorded."""
    from playwright.sync_api import sync_playwright

    run, _ = trained
    r = visualize.run_connectivity(run, "the capital of france", None, tmp_path / "page.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page()
        requests, errors = [], []
        page.on("request", lambda req: requests.append(req.url))
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto((tmp_path / "page.html").as_uri())
        spans = page.query_selector_all("#text span")
        assert len(spans) == len(r.text)
        spans[9].hover()
        info = page.inner_text("#info")
        colour = spans[5].evaluate("s => getComputedStyle(s).backgroundColor")
        future = spans[15].evaluate("s => getComputedStyle(s).backgroundColor")
        browser.close()
    assert requests == [(tmp_path / "page.html").as_uri()] and not errors
    assert info.startswith(f"output at position 9 ('{r.text[9]}'), target: {r.target_names[9]}")
    assert future == "rgb(255, 255, 255)" and colour != future  # coloured up to the hovered character only


def test_char_lm_runs_work_too(tmp_path):
    """A char-LM run: the target of each character is the next symbol, the last one the model's guess."""
    mx.random.seed(1)
    model = RNNModel(ModelConfig(cell="cifg", layers=2, units=8, embed_dim=4, task="charlm", vocab_size=1))
    save(model, tmp_path / "run")
    r = visualize.run_connectivity(tmp_path / "run", "the cat", 4, tmp_path / "c.png")
    assert r.target_names[:4] == ["t", "h", "e", "\u00b7"] and not r.known[-1] and r.known[:-1].all()
    assert r.C[4, :5].max() > 0
    panels = visualize.run_inspect(tmp_path / "run", "the cat", tmp_path / "s.png", max_units=8)
    assert [name for name, _ in panels] == ["layer 1 c: memory", "layer 2 c: memory"]


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("script,published", [("reproduce_article.py", "2.1170"), ("reproduce_nlstm.py", "1.437")])
def test_reproduction_scripts_run_end_to_end(script, published, corpus, tmp_path):
    """Both scripts, a few steps on the demo corpus: tables beside the published numbers, figures."""
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--corpus", corpus, "--scale", "0.02",
                             "--steps", "3", "--out", str(out)], capture_output=True, text=True, timeout=900,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "results.md").read_text()
    assert published in report and report in result.stdout and "Ordering by test" in report
    assert len(json.loads((out / "results.json").read_text())) == (3 if "article" in script else 4)
    is_picture(out / "curves.png", figures.RUNS_SIZE)
    if "article" in script:
        for cell in ("gru", "lstm", "nlstm"):
            assert (out / f"connectivity-{cell}.html").is_file()
            matplotlib.image.imread(out / f"states-{cell}.png")
    # a folder the script did not write is never replaced
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    refused = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--corpus", corpus, "--out", str(other)],
                             capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert refused.returncode != 0 and "not written by a reproduction script" in refused.stderr
    assert (other / "keep.txt").is_file()
