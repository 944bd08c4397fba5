"""Bundles (export, manifest, checksums, failure modes) and the streaming runtime over them."""

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

import edge_rnn.export.onnx as onnx_export
from edge_rnn.export.bundle import FORMAT_VERSION, export_bundle, read_manifest, state_names
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel, load, save
from edge_rnn.runtime import normalise, open_session
from edge_rnn.vocab import SYMBOLS, Vocab

WORDS = ["the", "of", "and", "is", "a", "capital", "france", "french", "fraction", "frame", "fragile",
         "paris", "city", "river", "free", "from", "front", "fruit", "fry", "capture"]
RAW = "The  Capital-of FRANCE!! is Paris, 2024"  # what a user types
NORM = " the capital of france is paris "  # what the model sees (manifest rules, leading space)


def make_run(run_dir, cell="lstm", layers=2, seed=0):
    """A run dir holding a tiny random model (biases random too), its vocab and a metrics log."""
    mx.random.seed(seed)
    model = RNNModel(ModelConfig(cell=cell, layers=layers, units=12, embed_dim=6, vocab_size=len(WORDS)))
    rng = np.random.default_rng(seed)
    model.update(tree_map(lambda a: mx.array(rng.normal(0, 0.6, a.shape), dtype=mx.float32), model.parameters()))
    save(model, run_dir, Vocab.from_counts(WORDS))
    (run_dir / "metrics.jsonl").write_text('{"event": "train", "step": 10, "loss": 3.1}\n'
                                           '{"event": "eval", "split": "valid", "step": 10, "ce": 2.9}\n'
                                           '{"event": "train", "step": 11, "loss": 3.0}\n{"truncat')
    return model


@pytest.fixture
def run_dir(tmp_path):
    make_run(tmp_path / "run")
    return tmp_path / "run"


def test_bundle_holds_files_vocab_and_manifest(run_dir, tmp_path):
    out = export_bundle(run_dir, tmp_path / "bundle", top_k=3)
    manifest = read_manifest(out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "prefill.onnx",
                                                     "vocab.json", "weights.bin"]
    assert set(manifest["files"]) == {"model.onnx", "prefill.onnx", "vocab.json", "weights.bin"}
    assert manifest["files"]["model.onnx"]["bytes"] == (out / "model.onnx").stat().st_size
    assert manifest["format_version"] == FORMAT_VERSION and manifest["target"] == "onnx"
    assert manifest["model"] == {"cell": "lstm", "layers": 2, "units": 12, "depth": None, "embed_dim": 6,
                                 "task": "autocomplete", "vocab_size": len(WORDS), "n_outputs": len(WORDS) + 2}
    names = state_names(ModelConfig(cell="lstm", layers=2))
    assert [s["name"] for s in manifest["state"]] == names == ["l0_h", "l0_c", "l1_h", "l1_c"]
    assert [i["name"] for i in manifest["inputs"]] == ["char", *names]
    assert [o["name"] for o in manifest["outputs"]] == ["top_ids", "top_probs", *[f"{n}_next" for n in names]]
    assert manifest["top_k"] == 3 and manifest["text"]["symbols"] == SYMBOLS
    assert manifest["source"]["metrics"]["final_eval"]["ce"] == 2.9  # the cut-off last line is skipped
    assert manifest["source"]["metrics"]["last"]["step"] == 11
    assert json.loads((out / "vocab.json").read_text()) == Vocab.from_counts(WORDS).to_json()


def test_bundle_runs_in_plain_onnxruntime(run_dir, tmp_path):
    """An app needs nothing but the bundle: json + numpy + onnxruntime, rules from the manifest."""
    out = export_bundle(run_dir, tmp_path / "bundle")
    script = r"""
import json, sys
import numpy as np
import onnxruntime as ort
bundle, text = sys.argv[1], sys.argv[2]
manifest = json.load(open(bundle + "/manifest.json"))
words = json.load(open(bundle + "/vocab.json"))["words"]
rules = manifest["text"]
s = "".join(ch.lower() if ch.isascii() else ch for ch in text)
s = "".join(ch if ch in rules["keep"] else " " for ch in s)
while rules["collapse_spaces"] and "  " in s:
    s = s.replace("  ", " ")
if rules["leading_space"] and not s.startswith(" "):
    s = " " + s
sess = ort.InferenceSession(bundle + "/" + manifest["export"]["model"])
state = {v["name"]: np.zeros([1 if d == "batch" else d for d in v["shape"]], np.float32) for v in manifest["state"]}
out_names = [o["name"] for o in manifest["outputs"]]
for ch in s:
    out = dict(zip(out_names, sess.run(out_names, {"char": np.array([rules["symbols"].index(ch)], np.int32), **state})))
    state = {name: out[name + "_next"] for name in state}
    print(" ".join(words[i] for i in out["top_ids"][0]))
assert "edge_rnn" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", script, str(out), RAW], capture_output=True, text=True,
                            cwd=tmp_path, check=True)
    model, expected = load(run_dir)[0], []
    state = model.initial_state(1)
    for ch in NORM:
        logits, state = model.step(mx.array([SYMBOLS.index(ch)]), state)
        top = np.argsort(-np.array(logits[0]), kind="stable")[:3]
        expected.append(" ".join((["<pad>", "<unk>"] + WORDS)[i] for i in top))
    assert result.stdout.splitlines() == expected


def test_damaged_or_missing_weights_are_one_line_errors(run_dir, tmp_path):
    weights = run_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(EdgeRNNError, match="damaged") as err:
        export_bundle(run_dir, tmp_path / "bundle")
    assert "\n" not in str(err.value)
    weights.unlink()
    with pytest.raises(EdgeRNNError, match="no weights"):
        export_bundle(run_dir, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_existing_output_needs_force_and_is_left_untouched(run_dir, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EdgeRNNError, match="not empty"):
        export_bundle(run_dir, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    export_bundle(run_dir, out, force=True)
    assert not (out / "keep.txt").exists()
    read_manifest(out)


def test_failure_mid_export_leaves_nothing(run_dir, tmp_path, monkeypatch):
    def broken_export(model, out_dir, **kwargs):
        (out_dir / "model.onnx").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx_export, "export_onnx", broken_export)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="disk full"):
        export_bundle(run_dir, tmp_path / "bundle")
    assert sorted(tmp_path.iterdir()) == before  # no bundle, no temporary folder


def test_read_manifest_detects_tampering_and_missing_files(run_dir, tmp_path):
    out = export_bundle(run_dir, tmp_path / "bundle")
    vocab = json.loads((out / "vocab.json").read_text())
    vocab["words"][5] = vocab["words"][5][::-1]  # same size: only the sha256 can tell
    (out / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(EdgeRNNError, match="vocab.json is damaged or was changed"):
        read_manifest(out)
    (out / "prefill.onnx").unlink()
    with pytest.raises(EdgeRNNError, match="prefill.onnx is missing"):
        read_manifest(out)
    with pytest.raises(EdgeRNNError, match="not a bundle"):
        read_manifest(tmp_path)


def test_bad_format_and_precision_raise(run_dir, tmp_path):
    with pytest.raises(EdgeRNNError, match="unknown export format"):
        export_bundle(run_dir, tmp_path / "a", fmt="tflite")
    with pytest.raises(EdgeRNNError, match="unknown precision"):
        export_bundle(run_dir, tmp_path / "b", precision="bf16")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- runtime -------------------------------------------------------------------------------------

def test_run_dir_and_bundle_complete_alike(run_dir, tmp_path):
    bundle = export_bundle(run_dir, tmp_path / "bundle", with_log_probs=True)
    from_run = open_session(run_dir).complete("the capital of fra", k=3)
    from_bundle = open_session(bundle).complete("the capital of fra", k=3)
    assert [w for w, _ in from_run] == [w for w, _ in from_bundle]
    np.testing.assert_allclose([p for _, p in from_run], [p for _, p in from_bundle], atol=1e-5)
    fra = [w for w in WORDS if w.startswith("fra")]
    assert len(from_run) == 3 and all(w in fra for w, _ in from_run)
    assert [p for _, p in from_run] == sorted((p for _, p in from_run), reverse=True)


def test_suggestions_after_a_space_are_whole_words_without_specials(run_dir):
    session = open_session(run_dir)
    suggestions = session.complete("the capital of ", k=len(WORDS) + 2)
    assert sorted(w for w, _ in suggestions) == sorted(WORDS)  # every word, <pad>/<unk> never
    assert sum(p for _, p in suggestions) < 1.0


def test_feed_normalises_like_the_manifest(run_dir):
    session = open_session(run_dir)
    session.type(RAW)
    assert session.text == NORM == " " + normalise(RAW).strip() + " "
    session.type(" Paris")  # no double space across feeds
    assert session.text == NORM + "paris"
    session.reset()
    assert session.text == "" and session.suggestions() == []


@pytest.mark.parametrize("typed,want", [("Hello, World", "hello world"), ("the ", "the "), (" Paris", " paris"),
                                        ("Café!", "caf "), ("", ""), ("!! 42", " "), ("don't", "don t")])
def test_normalise_keeps_word_breaks_at_the_ends(typed, want):
    assert normalise(typed) == want


def test_feeding_in_pieces_equals_feeding_at_once(run_dir):
    pieces, whole = open_session(run_dir), open_session(run_dir)
    for piece in ["The", " capital", " o", "f ", " fr"]:
        pieces.type(piece)
    whole.type("the capital of fr")
    assert pieces.text == whole.text == " the capital of fr"
    assert pieces.suggestions() == whole.suggestions()


def test_step_returns_the_models_top_k(run_dir):
    session = open_session(run_dir)
    ids, probs = session.step(SYMBOLS.index(" "))
    assert len(ids) == 3 and np.all(np.diff(probs) <= 0) and 0 < probs.sum() <= 1
    with pytest.raises(EdgeRNNError):
        session.step(28)


def test_bundle_without_log_probs_filters_its_top_ids(run_dir, tmp_path):
    small = open_session(export_bundle(run_dir, tmp_path / "top8", top_k=8))
    assert small.backend.step(1, small.backend.initial_state())[0].log_probs is None
    suggestions = small.complete("the capital of fr", k=3)
    top = [(["<pad>", "<unk>"] + WORDS)[i] for i in small.last.top_ids]
    assert [w for w, _ in suggestions] == [w for w in top if w.startswith("fr")][:3]
    # with a top-k over every output, filtering top_ids finds what the full distribution finds
    full = open_session(export_bundle(run_dir, tmp_path / "all", top_k=len(WORDS) + 2))
    want = open_session(run_dir).complete("the capital of fr", k=3)
    assert [w for w, _ in full.complete("the capital of fr", k=3)] == [w for w, _ in want]
    assert len(want) == 3


def test_open_session_rejects_other_folders(tmp_path):
    with pytest.raises(EdgeRNNError, match="neither a run directory"):
        open_session(tmp_path)


def test_charlm_bundle_suggests_next_symbols(tmp_path):
    mx.random.seed(1)
    save(RNNModel(ModelConfig(cell="gru", units=8, embed_dim=4, vocab_size=1, task="charlm")), tmp_path / "run")
    bundle = export_bundle(tmp_path / "run", tmp_path / "bundle", with_log_probs=True)
    assert read_manifest(bundle)["outputs_are"] == "symbols"
    from_run = open_session(tmp_path / "run").complete("hello wor", k=5)
    from_bundle = open_session(bundle).complete("hello wor", k=5)
    assert [s for s, _ in from_run] == [s for s, _ in from_bundle]
    assert len(from_run) == 5 and all(s in SYMBOLS[1:] for s, _ in from_run)
