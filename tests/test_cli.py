"""The command line as a user meets it: help text, one-line errors, the commands end to end."""

import subprocess
import sys

import pytest

COMMANDS = ["train", "eval", "info", "complete", "export", "quickstart"]


def edge_rnn(*args, cwd=None):
    """Run the installed console entry point's code in a fresh interpreter, like a user would."""
    return subprocess.run([sys.executable, "-c", "from cli.main import main; main()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_of_every_command():
    top = edge_rnn("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        result = edge_rnn(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout
    assert "Nested LSTM" in edge_rnn("train", "--help").stdout


@pytest.mark.parametrize("args,fragments", [
    (["train", "--cell", "transformer", "--corpus", "demo"], ["unknown cell 'transformer'"]),
    (["train", "--cell", "gru", "--corpus", "/no/such/file.txt"], ["/no/such/file.txt"]),
    (["train", "--preset", "huge"], ["unknown preset 'huge'"]),
    (["eval", "/no/such/run"], ["not a run directory"]),
    (["info", "/no/such/run"], ["not a run directory"]),
    (["complete", "/no/such/run", "the cap"], ["/no/such/run"]),
])
def test_bad_input_is_one_line(args, fragments, tmp_path):
    assert_one_line_error(edge_rnn(*args, cwd=tmp_path), *fragments)


def test_text_without_usable_characters(tmp_path):
    path = tmp_path / "digits.txt"
    path.write_text("1234 5678 !!! ???\n")
    assert_one_line_error(edge_rnn("train", "--cell", "gru", "--corpus", path, "--out", tmp_path / "r"),
                          "no usable characters")
    assert not (tmp_path / "r" / "config.json").exists()


def test_info_eval_and_complete_on_a_trained_run(trained):
    run, _ = trained
    info = edge_rnn("info", run)
    assert info.returncode == 0, info.stderr
    assert "gru" in info.stdout and "1 x 64" in info.stdout
    ev = edge_rnn("eval", run, "--split", "valid")
    assert ev.returncode == 0, ev.stderr
    assert "top1" in ev.stdout
    done = edge_rnn("complete", run, "the capital of egy", "--top-k", "3")
    assert done.returncode == 0, done.stderr
    assert "egypt" in done.stdout


def test_train_cli_writes_a_run_and_resumes(tmp_path, corpus):
    out = tmp_path / "run"
    first = edge_rnn("train", "--preset", "tiny", "--corpus", corpus, "--steps", "4", "--batch-size", "4",
                     "--eval-every", "2", "--out", out)
    assert first.returncode == 0, first.stderr
    assert (out / "weights.safetensors").is_file()
    again = edge_rnn("train", "--preset", "tiny", "--corpus", corpus, "--steps", "4", "--out", out)
    assert_one_line_error(again, "already holds a run")
    more = edge_rnn("train", "--out", out, "--resume", "--steps", "6", "--eval-every", "2")
    assert more.returncode == 0, more.stderr
    assert '"step": 6' in (out / "checkpoint" / "step.json").read_text()


def test_export_and_complete_from_the_bundle_agree_with_the_run(trained, tmp_path):
    run, _ = trained
    bundle = tmp_path / "bundle"
    exported = edge_rnn("export", run, "--format", "onnx", "--out", bundle)
    assert exported.returncode == 0, exported.stderr
    assert (bundle / "manifest.json").is_file() and (bundle / "vocab.json").is_file()
    for text in ("the capital of egy", "she speaks ", "olivia grew up in hel"):
        from_run = edge_rnn("complete", run, text, "--top-k", "5")
        from_bundle = edge_rnn("complete", text, "--bundle", bundle, "--top-k", "5")
        assert from_run.returncode == 0 and from_bundle.returncode == 0, from_bundle.stderr
        assert from_run.stdout == from_bundle.stdout
    again = edge_rnn("export", run, "--format", "onnx", "--out", bundle)
    assert_one_line_error(again, "not empty")


def test_prefix_objective_from_train_to_eval(tmp_path, corpus):
    """--objective prefix trains, and eval says its numbers are over the typed prefix's words."""
    run = tmp_path / "run"
    result = edge_rnn("train", "--preset", "tiny", "--units", "16", "--steps", "2", "--batch-size", "4",
                      "--eval-every", "2", "--corpus", corpus, "--objective", "prefix", "--out", run)
    assert result.returncode == 0, result.stderr
    result = edge_rnn("eval", run, "--split", "valid")
    assert result.returncode == 0, result.stderr
    assert "prefix objective" in " ".join(result.stdout.split())
    plain = tmp_path / "plain"
    edge_rnn("train", "--preset", "tiny", "--units", "16", "--steps", "1", "--batch-size", "4", "--corpus", corpus,
             "--out", plain)
    assert "all classes" in " ".join(edge_rnn("eval", plain, "--split", "valid").stdout.split())
