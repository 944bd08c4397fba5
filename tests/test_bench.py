"""``edge-rnn bench``: sane numbers on a bundle and a run dir, JSON output, one-line failures."""

import json
import sys

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

from edge_rnn.bench import keystrokes, memory_bandwidth, run_bench
from edge_rnn.data import demo_corpus
from edge_rnn.export.bundle import export_bundle
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel, save
from edge_rnn.vocab import Vocab
from test_cli import assert_one_line_error, edge_rnn

WORDS = sorted(set(demo_corpus(500, seed=0).split()))[:120]
STEPS = 150


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random GRU run, its full-head bundle, its prefix-head bundle and a text file."""
    root = tmp_path_factory.mktemp("bench")
    mx.random.seed(0)
    model = RNNModel(ModelConfig(cell="gru", layers=2, units=16, embed_dim=8, vocab_size=len(WORDS)))
    rng = np.random.default_rng(0)
    model.update(tree_map(lambda a: mx.array(rng.normal(0, 0.5, a.shape), dtype=mx.float32), model.parameters()))
    save(model, root / "run", Vocab.from_counts(WORDS))
    export_bundle(root / "run", root / "bundle")
    export_bundle(root / "run", root / "prefix", prefix_head=True)
    text = root / "text.txt"
    text.write_text(demo_corpus(200, seed=4))
    return root, text


def assert_sane(result, files_root):
    lat = result.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result.steps == STEPS
    assert result.prefill_chars_per_s > 0
    on_disk = {name: (files_root / name).stat().st_size for name in result.files}
    assert result.files == on_disk and result.bundle_bytes == sum(on_disk.values())
    assert 0 < result.model_bytes <= result.bundle_bytes
    assert result.peak_rss_bytes > result.rss_delta_bytes >= 0
    assert result.bandwidth_bytes_per_s > 1e8  # 0.1 GB/s: any machine does better
    assert 0 < result.step_read_bytes["p50"] <= result.model_bytes
    assert result.bound_ms["p50"] == pytest.approx(result.step_read_bytes["p50"] / result.bandwidth_bytes_per_s * 1e3)


def test_bench_a_bundle(setup):
    root, text = setup
    result = run_bench(root / "bundle", steps=STEPS, warmup=10, text_path=text)
    assert result.backend == "onnx" and result.threads == 1 and not result.prefix_head
    assert_sane(result, root / "bundle")
    assert result.model_bytes == sum((root / "bundle" / f).stat().st_size for f in ("model.onnx", "weights.bin"))


def test_bench_a_run_dir_in_mlx_and_onnx(setup):
    root, text = setup
    mlx_result = run_bench(root / "run", steps=STEPS, warmup=10, text_path=text)
    assert mlx_result.backend == "mlx"
    assert_sane(mlx_result, root / "run")
    assert mlx_result.model_bytes == (root / "run" / "weights.safetensors").stat().st_size
    onnx_result = run_bench(root / "run", backend="onnx", steps=STEPS, warmup=10, text_path=text)
    assert onnx_result.backend == "onnx" and onnx_result.source == str(root / "run")
    assert onnx_result.latency_ms["p50"] > 0


def test_prefix_head_reads_fewer_bytes_per_keystroke(setup):
    root, text = setup
    full = run_bench(root / "bundle", steps=STEPS, warmup=10, text_path=text)
    prefix = run_bench(root / "prefix", steps=STEPS, warmup=10, text_path=text)
    assert prefix.prefix_head
    assert prefix.step_read_bytes["mean"] < full.step_read_bytes["mean"]
    assert prefix.step_read_bytes["p50"] < full.step_read_bytes["p50"]


def test_bandwidth_is_measured_once_per_process():
    assert memory_bandwidth() is memory_bandwidth()


def test_keystrokes_start_with_a_space_and_wrap():
    ids = keystrokes("ab", 7)
    assert ids == [1, 2, 3, 1, 2, 3, 1]
    with pytest.raises(EdgeRNNError, match="no usable"):
        keystrokes("", 3)


def test_json_output_parses(setup):
    root, text = setup
    result = edge_rnn("bench", root / "bundle", "--steps", "50", "--warmup", "5", "--text", text, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["backend"] == "onnx" and data["steps"] == 50
    assert data["latency_ms"]["p50"] <= data["latency_ms"]["p99"] <= data["latency_ms"]["max"]
    assert data["p50_over_bound"] > 0


def test_table_output(setup):
    root, text = setup
    result = edge_rnn("bench", root / "prefix", "--steps", "50", "--warmup", "5", "--text", text)
    assert result.returncode == 0, result.stderr
    for fragment in ("p50", "p99", "prefill", "peak RSS", "bound", "prefix-range head"):
        assert fragment in result.stdout


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_backend_fails_in_one_line_off_macos(setup):
    root, _ = setup
    assert_one_line_error(edge_rnn("bench", root / "bundle", "--backend", "coreml"), "only on macOS")


def test_unknown_backend_fails_in_one_line(setup):
    root, _ = setup
    assert_one_line_error(edge_rnn("bench", root / "bundle", "--backend", "tpu"), "unknown backend 'tpu'")


@pytest.mark.parametrize("kwargs,fragment", [
    ({"backend": "mlx"}, "no MLX weights"),
    ({"steps": 0}, "--steps"),
    ({"source": "."}, "neither a run directory"),
])
def test_bad_arguments_raise_one_line_errors(setup, tmp_path, kwargs, fragment):
    """In-process (the CLI turns any EdgeRNNError into one line, as the tests above show)."""
    root, _ = setup
    source = tmp_path if kwargs.pop("source", None) else root / "bundle"
    with pytest.raises(EdgeRNNError, match=fragment):
        run_bench(source, **kwargs)
