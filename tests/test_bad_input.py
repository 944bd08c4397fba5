"""Bad input, as a user meets it: one clear line on stderr, a non-zero exit, no traceback, and
nothing good overwritten. docs/bad-input.md lists every case here with the message it gets."""

import errno
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge_rnn.export.bundle import export_bundle
from edge_rnn.io import EdgeRNNError, atomic_write_text
from edge_rnn.model import load_preset
from edge_rnn.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


def edge_rnn(*args, prelude: str = "", env: dict | None = None):
    """The CLI in a fresh interpreter; ``prelude`` runs first (to mock a failing write)."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                **(env or {})}
    code = f"{prelude}\nfrom cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=full_env)


def assert_one_line_error(result, fragment: str) -> str:
    assert result.returncode not in (0, None), result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]
    if os.environ.get("EDGE_RNN_BAD_INPUT_LOG"):  # how docs/bad-input.md's messages were collected
        with open(os.environ["EDGE_RNN_BAD_INPUT_LOG"], "a") as f:
            f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                                "exit": result.returncode, "message": lines[0]}) + "\n")
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus) -> Path:
    run = tmp_path_factory.mktemp("bad") / "run"
    cfg = load_preset("tiny")
    cfg.units, cfg.vocab_size = 16, 120
    train(cfg, TrainConfig(corpus=corpus, steps=2, batch_size=4, eval_every=2, eval_batches=1), run)
    return run


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory) -> Path:
    return export_bundle(run_dir, tmp_path_factory.mktemp("bundle") / "b", with_log_probs=True)


def copy_of(path: Path, tmp_path: Path) -> Path:
    dest = tmp_path / path.name
    shutil.copytree(path, dest)
    return dest


def train_on(tmp_path, corpus, *extra):
    return edge_rnn("train", "--preset", "tiny", "--units", "16", "--steps", "2", "--batch-size", "4",
                    "--corpus", corpus, "--out", tmp_path / "out", *extra)


# --- corpora -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content,fragment", [
    ("empty", b"", "no usable characters"),
    ("binary", bytes(range(256)) * 64, "is not valid UTF-8"),
    ("no-letters", b"1234 5678 !!! ??? -- 42\n" * 200, "no usable characters"),
    ("cjk-only", "日本語のテキスト ✓ ★ 😀 ".encode() * 500, "no usable characters"),
    ("few-words", "Ünïcödé ✓ café naïve — the end\n".encode() * 3, "corpus too small"),
])
def test_bad_corpus_file(tmp_path, name, content, fragment):
    path = tmp_path / f"{name}.txt"
    path.write_bytes(content)
    assert_one_line_error(train_on(tmp_path, path), fragment)
    assert not (tmp_path / "out" / "config.json").exists()


def test_missing_corpus(tmp_path):
    assert_one_line_error(train_on(tmp_path, tmp_path / "nope.txt"), "corpus file not found")


def test_huge_corpus(tmp_path, monkeypatch):
    from edge_rnn import data

    path = tmp_path / "big.txt"
    path.write_text("word " * 1000)
    monkeypatch.setattr(data, "MAX_CORPUS_BYTES", 1000)
    with pytest.raises(EdgeRNNError, match="5,000 bytes; corpora up to 1,000 bytes"):
        data.load_corpus(str(path))


def test_arbitrary_unicode_corpus_trains(tmp_path, corpus):
    """Mixed scripts, emoji, combining marks and lone surrogates' neighbours around real words."""
    noise = "Ünïcödé ✓ 日本語 e\u0301 🎉 \u200b Ελληνικά "
    text = "".join(noise + line + "\n" for line in Path(corpus).read_text().splitlines()[:400])
    path = tmp_path / "mixed.txt"
    path.write_text(text, encoding="utf-8")
    result = train_on(tmp_path, path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["cell"] == "gru"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_tampered_or_truncated_text8_zip(tmp_path, damage):
    cache = tmp_path / "cache"
    cache.mkdir()
    if damage == "garbage":
        (cache / "text8.zip").write_bytes(b"PK\x03\x04 not really a zip" * 100)
    else:
        with zipfile.ZipFile(cache / "text8.zip", "w") as z:
            z.writestr("text8", " anarchism originated as a term of abuse" * 5000)
        data = (cache / "text8.zip").read_bytes()
        (cache / "text8.zip").write_bytes(data[: len(data) // 2])
    result = edge_rnn("train", "--corpus", "text8", "--out", tmp_path / "out", env={"EDGE_RNN_CACHE": str(cache)})
    assert_one_line_error(result, "is corrupt (sha256 mismatch)")
    assert not (cache / "text8.zip").exists()  # removed, so the next run downloads afresh


# --- run dirs and bundles ----------------------------------------------------------------------

def test_truncated_weights(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    data = (run / "weights.safetensors").read_bytes()
    (run / "weights.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(edge_rnn("info", run), "is damaged or does not match")


def test_tampered_weights_header(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    data = bytearray((run / "weights.safetensors").read_bytes())
    at = data.index(b"embedding")
    data[at:at + 9] = b"EMBEDDING"  # a tensor the model does not have
    (run / "weights.safetensors").write_bytes(bytes(data))
    assert_one_line_error(edge_rnn("complete", run, "the "), "is damaged or does not match")


def test_truncated_checkpoint_on_resume(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    (run / "checkpoint" / "optimizer.safetensors").write_bytes(b"\x08\x00\x00\x00")
    assert_one_line_error(edge_rnn("train", "--steps", "4", "--out", run, "--resume"), "checkpoint is damaged")


def test_vocabulary_does_not_match_weights(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    vocab = json.loads((run / "vocab.json").read_text())
    key = "words" if isinstance(vocab, dict) else None
    if key:
        vocab[key] = vocab[key][:-5]
    else:
        vocab = vocab[:-5]
    (run / "vocab.json").write_text(json.dumps(vocab))
    assert_one_line_error(edge_rnn("eval", run), "do not belong together")


def test_bundle_file_changed_after_export(bundle, tmp_path):
    b = copy_of(bundle, tmp_path)
    (b / "vocab.json").write_text((b / "vocab.json").read_text().replace("the", "teh", 1))
    assert_one_line_error(edge_rnn("complete", "--bundle", b, "the "), "was changed (sha256 mismatch)")


def test_manifest_naming_a_file_outside_the_bundle(bundle, tmp_path):
    b = copy_of(bundle, tmp_path)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"bytes": 1, "sha256": "0" * 64}
    (b / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(edge_rnn("complete", "--bundle", b, "the "), "is not a file inside the bundle")


# --- unknown names and impossible sizes --------------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (["--cell", "transformer"], "unknown cell 'transformer'"),
    (["--preset", "enormous"], "unknown preset 'enormous'"),
    (["--task", "translate"], "unknown task 'translate'"),
    (["--units", "0"], "units must be >= 1"),
    (["--layers", "0"], "layers must be >= 1"),
    (["--batch-size", "0"], "batch-size must be >= 1"),
    (["--steps", "0"], "steps must be >= 1"),
    (["--lr", "0"], "lr must be > 0"),
    (["--dropout", "1"], "dropout must be in [0, 1), got 1.0"),
    (["--weight-decay", "-0.1"], "weight-decay must be in [0, 1), got -0.1"),
    (["--ema", "1"], "ema must be in [0, 1), got 1.0"),
    (["--train-fraction", "1.5"], "train-fraction must be in (0, 1], got 1.5"),
    (["--objective", "spelling"], "unknown objective 'spelling'"),
    (["--objective", "prefix", "--task", "charlm"], "the prefix objective needs an autocomplete model"),
    (["--vocab-size", "100000"], "distinct words of the training split"),
])
def test_unknown_names_and_impossible_sizes(tmp_path, corpus, args, fragment):
    assert_one_line_error(train_on(tmp_path, corpus, *args), fragment)


def test_unknown_export_format(run_dir, tmp_path):
    assert_one_line_error(edge_rnn("export", run_dir, "--format", "tflite", "--out", tmp_path / "b"), "tflite")


# --- where things are written ------------------------------------------------------------------

def test_output_that_cannot_be_created(tmp_path, corpus):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = edge_rnn("train", "--preset", "tiny", "--corpus", corpus, "--steps", "1", "--out", blocker / "run")
    assert_one_line_error(result, "cannot create run directory")
    assert blocker.read_text() == "not a folder"


def test_export_to_an_unwritable_place(run_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_one_line_error(edge_rnn("export", run_dir, "--out", blocker / "b"), "is a file, not a folder")


FULL_DISK_ONNX = """
import errno, onnx
def save(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
onnx.save = onnx.save_model = save
"""


def test_full_disk_during_export_keeps_the_old_bundle(run_dir, bundle, tmp_path):
    b = copy_of(bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in b.iterdir()}
    result = edge_rnn("export", run_dir, "--out", b, "--force", prelude=FULL_DISK_ONNX)
    assert_one_line_error(result, "No space left on device")
    assert {p.name: p.read_bytes() for p in b.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_full_disk_during_checkpoint_keeps_the_old_one(run_dir, tmp_path, monkeypatch):
    """MLX's safetensors writer ignores write errors (it 'succeeds' on /dev/full): the truncated
    file it would leave is caught before the rename."""
    import mlx.core as mx

    run = copy_of(run_dir, tmp_path)
    before = {p.name: p.read_bytes() for p in (run / "checkpoint").iterdir()}
    real = mx.save_safetensors

    def truncating(path, arrays, *a, **k):
        real(path, arrays, *a, **k)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) - 100])

    monkeypatch.setattr(mx, "save_safetensors", truncating)
    with pytest.raises(EdgeRNNError, match="incomplete \\(disk full\\?\\)"):
        train(load_preset("tiny"), TrainConfig(steps=4), run, resume=True)
    assert {p.name: p.read_bytes() for p in (run / "checkpoint").iterdir()} == before


def test_full_disk_on_a_text_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text("good")

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(EdgeRNNError, match="could not write .*No space left on device"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                      (0o077, 0o600, 0o700)])
def test_written_files_get_the_umask_mode(run_dir, tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        out = export_bundle(run_dir, tmp_path / "bundle", with_log_probs=True)
        atomic_write_text(tmp_path / "note.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "note.txt").stat().st_mode & 0o777 == file_mode
    assert out.stat().st_mode & 0o777 == dir_mode
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == file_mode for p in files), \
        {p.name: oct(p.stat().st_mode & 0o777) for p in files}


def test_run_dir_files_are_readable_by_others(tmp_path, corpus):
    old = os.umask(0o022)
    try:
        result = train_on(tmp_path, corpus)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {"weights.safetensors", "optimizer.safetensors", "config.json", "train.log"} <= {p.name for p in files}
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in files), {p.name: oct(p.stat().st_mode) for p in files}
    assert all(p.stat().st_mode & 0o777 == 0o755 for p in (tmp_path / "out").rglob("*") if p.is_dir())


# --- no unsafe loading -------------------------------------------------------------------------

def test_no_pickle_anywhere():
    """Runs and bundles are JSON, safetensors, ONNX and Core ML protobufs: nothing that can run code."""
    import re

    unsafe = re.compile(r"\bpickle\b|allow_pickle|torch\.load|np\.load\(|joblib|\bdill\b|(?<![\w.])(eval|exec)\(")
    sources = [p for d in ("edge_rnn", "cli") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 10
    for path in sources:
        code = "\n".join(line for line in path.read_text().splitlines() if "never pickle" not in line)
        assert not unsafe.search(code), (path, unsafe.search(code).group())
