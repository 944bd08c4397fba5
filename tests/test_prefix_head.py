"""The prefix-range head: its suggestions are the full head's prefix-filtered suggestions.

Two bundles of one run: the full head exported with log-probs (so the runtime filters the whole
distribution by the typed prefix) and the prefix-range head (which computes only the rows of the
words starting with that prefix). Typing real-looking text one keystroke at a time, both must
suggest the same words in the same order, and the recurrent states must be bit-identical.
"""

from collections import Counter

import mlx.core as mx
import numpy as np
import onnx
import pytest
from mlx.utils import tree_map

from edge_rnn.data import demo_corpus
from edge_rnn.export.bundle import export_bundle, prefix_order, read_manifest
from edge_rnn.export.onnx import PREFIX_FULL_SHARE, export_onnx
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel, save
from edge_rnn.runtime import SYMBOL_ID, open_session, prefix_range
from edge_rnn.vocab import Vocab

K = 3
# the 300 most frequent words of the demo corpus, in frequency order, "a" and "i" among them
WORDS = [w for w, _ in Counter(demo_corpus(3000, seed=0).split()).most_common(300)]
# ~100 characters typed from other sentences of the same generator: mostly known words, a few
# unknown ones (whose prefixes soon match no word: empty ranges)
TEXT = " " + demo_corpus(40, seed=11)[:100] + " zebra xylophone a i "


def make_run(run_dir, cell: str, depth: int = 2, layers: int = 1, seed: int = 0, head_dim: int = 0):
    """A random tiny model (biases too) with the WORDS vocabulary, saved as a run dir."""
    mx.random.seed(seed)
    config = ModelConfig(cell=cell, layers=layers, units=16, depth=depth, embed_dim=8, vocab_size=len(WORDS),
                         head_dim=head_dim)
    model = RNNModel(config)
    rng = np.random.default_rng(seed)
    model.update(tree_map(lambda a: mx.array(rng.normal(0, 0.6, a.shape), dtype=mx.float32), model.parameters()))
    save(model, run_dir, Vocab.from_counts(WORDS))
    return model


@pytest.fixture(scope="module", params=[("gru", 1, 0), ("nlstm", 1, 0), ("lstm", 2, 0), ("cifg", 2, 6)],
                ids=["gru", "nlstm", "lstm-2l", "cifg-2l-bottleneck"])
def bundles(request, tmp_path_factory):
    cell, layers, head_dim = request.param
    root = tmp_path_factory.mktemp(cell)
    make_run(root / "run", cell, layers=layers, head_dim=head_dim)
    full = export_bundle(root / "run", root / "full", top_k=K, with_log_probs=True)
    prefix = export_bundle(root / "run", root / "prefix", top_k=K, prefix_head=True)
    return full, prefix


def type_both(full, prefix, text: str):
    """Yield (typed, full session, prefix session) after every keystroke of ``text``."""
    a, b = open_session(full), open_session(prefix)
    for ch in text:
        a.step(SYMBOL_ID[ch])
        b.step(SYMBOL_ID[ch])
        yield a.text, a, b


def test_every_keystroke_same_words_same_order_same_state(bundles):
    full, prefix = bundles
    empty = narrow = wide = 0
    for typed, a, b in type_both(full, prefix, TEXT):
        for k in (1, K):
            want = [w for w, _ in a.suggestions(k)]
            assert [w for w, _ in b.suggestions(k)] == want, typed
        for s_full, s_prefix in zip(a.state, b.state):
            np.testing.assert_array_equal(s_full, s_prefix)  # the state never reads the range
        n = len(a.suggestions(len(WORDS)))
        empty += n == 0
        wide += n > PREFIX_FULL_SHARE * (len(WORDS) + 2)
        narrow += 0 < n <= PREFIX_FULL_SHARE * (len(WORDS) + 2)
    assert empty and narrow and wide  # all three paths of the graph were exercised


def test_probabilities_are_renormalised_over_the_prefix(bundles):
    full, prefix = bundles
    for typed, a, b in type_both(full, prefix, TEXT):
        matching = a.suggestions(len(WORDS))  # every word with the prefix, full-model probabilities
        mass = sum(p for _, p in matching)
        got = b.suggestions(K)
        want = [(w, p / mass) for w, p in matching[:K]]
        assert [w for w, _ in got] == [w for w, _ in want], typed
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=1e-4, atol=1e-7)


def test_word_boundary_is_the_full_range(bundles):
    full, prefix = bundles
    a, b = open_session(full), open_session(prefix)
    for session in (a, b):
        session.type("he went to the ")
    assert b.prefix == ""
    assert [w for w, _ in b.suggestions(K)] == [w for w, _ in a.suggestions(K)]
    assert len(b.suggestions(K)) == K  # <pad> and <unk> are outside the range: K real words


def test_prefix_matching_no_word(bundles):
    full, prefix = bundles
    a, b = open_session(full), open_session(prefix)
    for session in (a, b):
        session.type("the capital of qzx")
    assert b.suggestions(K) == [] == a.suggestions(K)
    assert b.last.top_ids.shape == (0,)  # k = 0 in the graph
    for s_full, s_prefix in zip(a.state, b.state):
        np.testing.assert_array_equal(s_full, s_prefix)
    for session in (a, b):  # and typing on from there works
        session.type(" the ")
    assert [w for w, _ in b.suggestions(K)] == [w for w, _ in a.suggestions(K)]


def test_one_character_words(bundles):
    full, prefix = bundles
    for text in ("he said a", "then i", "x"):
        a, b = open_session(full), open_session(prefix)
        want, got = a.complete(text, K), b.complete(text, K)
        assert [w for w, _ in got] == [w for w, _ in want], text
    b = open_session(prefix)
    b.type("a")
    words = b.backend.sorted_words
    start, end = b.backend.range("a")
    assert words[start - 2] == "a"  # the word itself opens its own range
    assert all(w.startswith("a") for w in words[start - 2 : end - 2])
    assert b.backend.range("i")[1] - b.backend.range("i")[0] >= 1


def test_prefill_takes_the_range_too(bundles):
    import onnxruntime as ort

    full, prefix = bundles
    manifest = read_manifest(prefix)
    assert [i["name"] for i in manifest["export"]["prefill"]["inputs"]][-1] == "range"
    b = open_session(prefix)
    b.type("the capital of fr")
    sess = ort.InferenceSession(str(prefix / "prefill.onnx"), providers=["CPUExecutionProvider"])
    chars = np.array([[SYMBOL_ID[c] for c in b.text]], np.int32)
    zeros = {s["name"]: np.zeros((1, 16), np.float32) for s in manifest["state"]}
    out = sess.run(["top_ids"], {"chars": chars, **zeros, "range": b.backend.range("fr")})
    np.testing.assert_array_equal(out[0][0], b.last.top_ids)


def test_bundle_layout(bundles):
    full, prefix = bundles
    manifest = read_manifest(prefix)
    words = open_session(prefix).backend.labels
    assert words[:2] == ["<pad>", "<unk>"] and words[2:] == sorted(WORDS)
    assert [i["name"] for i in manifest["inputs"]][-1] == "range"
    assert manifest["inputs"][-1] == {"name": "range", "dtype": "int32", "shape": [2]}
    info = manifest["export"]["prefix_head"]
    assert info["word_boundary_range"] == [2, len(WORDS) + 2]
    assert read_manifest(full)["export"]["prefix_head"] is False
    meta = {p.key: p.value for p in onnx.load(str(prefix / "model.onnx")).metadata_props}
    assert meta["edge_rnn.prefix_head"] == "true"
    # one copy of the head: the bundle is no bigger than the full head's (which has log_probs)
    assert manifest["files"]["model.onnx"]["bytes"] <= read_manifest(full)["files"]["model.onnx"]["bytes"] + 4096


def test_prefix_range_is_the_startswith_filter():
    words = sorted(WORDS)
    labels = np.array(words)
    prefixes = {w[:n] for w in words for n in range(1, len(w) + 1)} | {"q", "zz", "xylo", "aa", "{", "a{"}
    for p in prefixes:
        start, end = prefix_range(words, p)
        hits = np.flatnonzero(np.char.startswith(labels, p)) + 2
        assert (start, end) == ((hits[0], hits[-1] + 1) if hits.size else (start, start)), p
    assert prefix_range(words, "") == (2, len(words) + 2)


def test_prefix_order_keeps_specials_first():
    words = ["<pad>", "<unk>", "the", "of", "a", "and"]
    order = prefix_order(words)
    assert order == [0, 1, 4, 5, 3, 2]
    assert [words[k] for k in order] == ["<pad>", "<unk>", "a", "and", "of", "the"]


def test_bad_combinations_are_one_line_errors(tmp_path):
    model = make_run(tmp_path / "run", "gru")
    with pytest.raises(EdgeRNNError, match="log_probs"):
        export_onnx(model, tmp_path / "a", prefix_head=True, words=["<pad>", "<unk>", *WORDS], with_log_probs=True)
    with pytest.raises(EdgeRNNError, match="output words"):
        export_onnx(model, tmp_path / "b", prefix_head=True)
    with pytest.raises(EdgeRNNError, match="ONNX"):  # Core ML has the head (test_coreml_prefix_head), not .ort
        export_bundle(tmp_path / "run", tmp_path / "c", fmt="coreml", prefix_head=True, ort_format=True)
    charlm = RNNModel(ModelConfig(cell="gru", units=8, embed_dim=4, task="charlm"))
    with pytest.raises(EdgeRNNError, match="autocomplete"):
        export_onnx(charlm, tmp_path / "d", prefix_head=True, words=["x"] * 28)


def test_top_k_stable_is_the_stable_argsort():
    """The MLX backend's O(V) top-k keeps the full sort's order, ties included."""
    from edge_rnn.runtime import top_k_stable

    rng = np.random.default_rng(0)
    for _ in range(200):
        scores = rng.integers(0, 6, rng.integers(1, 40)).astype(np.float32)  # many ties
        for k in (1, 3, 50):
            np.testing.assert_array_equal(top_k_stable(scores, k), np.argsort(-scores, kind="stable")[:k])


# ---- quantized prefix-range heads: rows stored int8 / fp16, sliced before they are dequantised ----
#
# The twin of a quantized prefix bundle is the same run's full head (with log_probs) quantized to
# the same precision: the runtime filters its whole distribution by the prefix. The int8 rows are
# quantize_dynamic's own (bit-identical to the twin's), multiplied by the same ops, and fp16 rows
# are the twin's values; so the suggestions must be the same words in the same order at every
# keystroke. Tie rule: none is needed on these models (the float32 caveat of
# ``edge_rnn.export.onnx``, a near-tie the full head's log-softmax rounds to one value, would
# show as a mismatch here and fail the test).

QUANTIZED = ("int8", "fp16")


@pytest.fixture(scope="module")
def quantized(bundles, tmp_path_factory):
    """``{to: (full-head twin, prefix bundle)}``, each quantized from the fp32 bundles."""
    from edge_rnn.quantize import quantize

    full, prefix = bundles
    root = tmp_path_factory.mktemp("quantized")
    return {to: (quantize(full, to, out=root / f"full-{to}", max_chars=300)[0],
                 quantize(prefix, to, out=root / f"prefix-{to}", max_chars=300)[0]) for to in QUANTIZED}


@pytest.mark.parametrize("to", QUANTIZED)
def test_quantized_prefix_head_suggests_what_its_twin_filters(quantized, to):
    twin, prefix = quantized[to]
    wide = narrow = 0
    for typed, a, b in type_both(twin, prefix, TEXT):
        assert [w for w, _ in b.suggestions(K)] == [w for w, _ in a.suggestions(K)], typed
        for s_twin, s_prefix in zip(a.state, b.state):
            np.testing.assert_array_equal(s_twin, s_prefix)  # same quantized cells, same states
        n = len(a.suggestions(len(WORDS)))
        wide += n > PREFIX_FULL_SHARE * (len(WORDS) + 2)
        narrow += 0 < n <= PREFIX_FULL_SHARE * (len(WORDS) + 2)
    assert wide and narrow


@pytest.mark.parametrize("to", QUANTIZED)
def test_quantized_prefix_head_stores_its_rows_compressed(quantized, to):
    """No float32 copy of the head is left anywhere in the graph, the manifest says how the rows
    are stored, and both graphs read the one copy in weights.bin."""
    from onnx import TensorProto

    _, prefix = quantized[to]
    manifest = read_manifest(prefix)
    assert manifest["export"]["prefix_head"]["rows"] == to and manifest["quantization"]["head"]
    model = onnx.load(str(prefix / "model.onnx"))
    heads = {t.name: t.data_type for t in model.graph.initializer if t.name.startswith("head.Wt")}
    want = {"int8": {"head.Wt_quantized": TensorProto.INT8, "head.Wt_scale": TensorProto.FLOAT},
            "fp16": {"head.Wt_fp16": TensorProto.FLOAT16}}[to]
    assert heads == want
    assert "head.Wt" in manifest["quantization"]["tensors"]["model.onnx"]["compressed"]


def one_graph_outputs(bundle, text: str):
    """``model.onnx`` (the If form) stepped through ``text`` with the runtime's ranges."""
    import onnxruntime as ort

    session = open_session(bundle)
    backend = session.backend
    graph = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    state = backend.initial_state()
    for ch in text:
        session.step(SYMBOL_ID[ch])
        feed = {"char": np.array([SYMBOL_ID[ch]], np.int32), **dict(zip(backend.state_names, state)),
                "range": backend.range(session.prefix)}
        out = graph.run(backend._fetch, feed)
        state = out[2:]
        yield session, out


@pytest.mark.parametrize("to", ("fp32", *QUANTIZED))
def test_split_graphs_are_the_if_graph_without_its_if(bundles, quantized, to):
    """The runtime runs model_narrow.onnx or model_wide.onnx per keystroke: no If in either, and
    top-k, probabilities and states bit-identical to model.onnx's at every keystroke."""
    bundle = bundles[1] if to == "fp32" else quantized[to][1]
    split = read_manifest(bundle)["export"]["prefix_head"]["split"]
    for file in (split["narrow"], split["wide"]):
        assert "If" not in {n.op_type for n in onnx.load(str(bundle / file), load_external_data=False).graph.node}
    used = set()
    for session, out in one_graph_outputs(bundle, TEXT):
        np.testing.assert_array_equal(session.last.top_ids, out[0][0])
        np.testing.assert_array_equal(session.last.top_probs, out[1][0])
        for a, b in zip(session.state, out[2:], strict=True):
            np.testing.assert_array_equal(a, b)
        lo, hi = session.backend.range(session.prefix)
        used.add(hi - lo > read_manifest(bundle)["export"]["prefix_head"]["full_gemm_above_rows"])
    assert used == {True, False}  # both graphs ran


def test_int4_prefix_head_is_a_one_line_refusal(bundles, tmp_path):
    from edge_rnn.quantize import quantize

    with pytest.raises(EdgeRNNError, match="MatMulNBits"):
        quantize(bundles[1], "int4", out=tmp_path / "int4")
    assert not (tmp_path / "int4").exists()


@pytest.fixture(scope="module")
def wide_head(tmp_path_factory):
    """A random GRU whose head is most of its bytes (2,002 x 128): full and prefix bundles."""
    root = tmp_path_factory.mktemp("wide")
    mx.random.seed(5)
    words = [f"{a}{b}{c}" for a in "abcdefghij" for b in "klmnopqrst" for c in "uvwxyzabcdefghijklmn"]
    model = RNNModel(ModelConfig(cell="gru", layers=1, units=128, embed_dim=16, vocab_size=len(words)))
    rng = np.random.default_rng(5)
    model.update(tree_map(lambda a: mx.array(rng.normal(0, 0.3, a.shape), dtype=mx.float32), model.parameters()))
    save(model, root / "run", Vocab.from_counts(words))
    return export_bundle(root / "run", root / "full"), export_bundle(root / "run", root / "prefix", prefix_head=True)


@pytest.mark.parametrize("to,low,high", [("int8", 0.24, 0.30), ("fp16", 0.49, 0.52)])
def test_quantized_prefix_bundle_shrinks_like_the_full_head(wide_head, to, low, high, tmp_path):
    """int8: 1 byte per head weight plus a float scale per row (~0.25 of fp32, the cells alike);
    fp16: half. The prefix bundle's weights end within 1 % of the full-head bundle quantized the
    same way; its four graphs (one-graph step, narrow and wide split, prefill) hold no weights."""
    from edge_rnn.quantize import quantize

    full, prefix = wide_head
    _, q_full = quantize(full, to, out=tmp_path / "full", max_chars=120)
    _, q_prefix = quantize(prefix, to, out=tmp_path / "prefix", max_chars=120)
    weights = {name: q["size"]["files"]["weights.bin"] for name, q in (("full", q_full), ("prefix", q_prefix))}
    source = read_manifest(prefix)["files"]["weights.bin"]["bytes"]
    assert low <= weights["prefix"] / source <= high, q_prefix["size"]
    assert weights["prefix"] == pytest.approx(weights["full"], rel=0.01)
    graphs = [n for n in q_prefix["size"]["files"] if n.endswith(".onnx")]
    assert len(graphs) == 4 and sum(q_prefix["size"]["files"][n] for n in graphs) < 64 << 10
