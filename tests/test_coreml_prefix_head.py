"""The Core ML prefix-range head, run from the saved .mlpackage in the NumPy MIL evaluator.

Its suggestions must be the ONNX full head's prefix-filtered suggestions (ONNX Runtime, the
runtime's own filter over ``log_probs``): same words, same order, probabilities renormalised over
the range; its recurrent states must be bit-identical to the Core ML full-head program's, and its
quantized bundles must agree with their same-precision full-head twins while storing the head
rows compressed. A small test-only backend (``MILBackend``) puts the evaluator behind the
runtime's backend interface, doing what an app does with this head: pass the range of the typed
prefix, drop the padding entries (``top_ids >= end``).

What this proves and what it cannot: the saved program (ops, dynamic-shape slicing, padding to a
constant k), the stored weights and their compression encoding. Apple's kernels and the cost of
dynamic shapes on a device are not run here (Core ML's ``predict`` exists only on macOS).
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

from test_cli import assert_one_line_error, edge_rnn
from test_prefix_head import TEXT, WORDS
from edge_rnn.export.bundle import VOCAB, export_bundle, read_manifest
from edge_rnn.export.coreml import MODEL_FILE, PAD_LOGIT, export_coreml
from edge_rnn.export.mil_eval import BLOB_DTYPES, MILProgram
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel, save
from edge_rnn.quantize import quantize
from edge_rnn.runtime import SYMBOL_ID, Session, StepOutput, open_session, prefix_range
from edge_rnn.vocab import Vocab

K = 3
V = len(WORDS) + 2
PROB_TOL = 1e-5
CELLS = [("gru", 1), ("nlstm", 1), ("lstm", 2)]
CELL_IDS = ["gru", "nlstm", "lstm-2l"]


def make_run(run_dir: Path, cell: str, layers: int = 1, units: int = 16, seed: int = 0) -> RNNModel:
    """A random tiny model (biases too) with the WORDS vocabulary, saved as a run dir
    (test_prefix_head's, with the width as a parameter: int4 per-block needs units % 32 == 0)."""
    mx.random.seed(seed)
    config = ModelConfig(cell=cell, layers=layers, units=units, depth=2, embed_dim=8, vocab_size=len(WORDS))
    model = RNNModel(config)
    rng = np.random.default_rng(seed)
    model.update(tree_map(lambda a: mx.array(rng.normal(0, 0.6, a.shape), dtype=mx.float32), model.parameters()))
    save(model, run_dir, Vocab.from_counts(WORDS))
    return model


def export_quiet(run: Path, out: Path, **options) -> Path:
    with warnings.catch_warnings():  # tiny widths are not multiples of 32 (mlstate warns)
        warnings.simplefilter("ignore")
        return export_bundle(run, out, top_k=K, **options)


class MILBackend:
    """A Core ML bundle in the MIL evaluator behind ``edge_rnn.runtime``'s backend interface.

    With a prefix-range head it feeds ``range`` = the typed prefix's ids and keeps only the real
    entries (``top_ids < end``), as the manifest tells an app to. ``raw`` holds the last call's
    untrimmed outputs and range.
    """

    def __init__(self, bundle: Path):
        manifest = read_manifest(bundle)
        self.program = MILProgram.load(bundle / MODEL_FILE)
        self.labels = json.loads((bundle / VOCAB).read_text())["words"]
        self.task = manifest["model"]["task"]
        self.prefix_head = bool(manifest["export"]["prefix_head"])
        self.sorted_words = self.labels[2:]
        self.names = manifest["export"]["state_names"]
        self.raw: dict = {}

    def initial_state(self) -> dict[str, np.ndarray]:
        if self.program.states:
            return self.program.make_state()
        return {n: np.zeros(self.program.inputs[n].shape, np.float32) for n in self.names}

    def range(self, prefix: str) -> np.ndarray:
        return np.array(prefix_range(self.sorted_words, prefix), np.int32)

    def ring(self, depth: int) -> None:
        """Every step returns new arrays: no ring."""

    def own(self, state: dict) -> dict:
        return state

    def step(self, char_id: int, state: dict, prefix: str = "", slot: int | None = None) -> tuple[StepOutput, dict]:
        feed = {"char": np.array([char_id], np.int32)}
        if self.prefix_head:
            feed["range"] = self.range(prefix)
        state = {n: v.copy() for n, v in state.items()}  # the session keeps old states for backspace
        if self.program.states:
            out = self.program.predict(feed, state)
        else:
            out = self.program.predict({**feed, **state})
            state = {n: out[f"{n}_next"] for n in self.names}
        ids, probs = out["top_ids"][0], out["top_probs"][0]
        self.raw = {"top_ids": ids, "top_probs": probs, "range": feed.get("range")}
        if self.prefix_head:
            real = ids < feed["range"][1]
            ids, probs = ids[real], probs[real]
        log_probs = out["log_probs"][0] if "log_probs" in out else None
        return StepOutput(ids, probs, log_probs), state

    def prefill(self, char_ids: list[int], state: dict, prefix: str = "") -> tuple[StepOutput, dict]:
        """Core ML bundles have no prefill program: step each symbol (the state never reads the range)."""
        for char_id in char_ids:
            out, state = self.step(char_id, state, prefix)
        return out, state


def mil_session(bundle: Path) -> Session:
    return Session(MILBackend(bundle))


def type_both(reference: Session, prefix: Session, text: str):
    """Yield the typed text after every keystroke of ``text`` into both sessions."""
    for ch in text:
        reference.step(SYMBOL_ID[ch])
        prefix.step(SYMBOL_ID[ch])
        yield reference.text


def states(session: Session) -> list[np.ndarray]:
    return [session.state[n] for n in session.backend.names]


def assert_same_suggestions(reference: Session, prefix: Session, typed: str) -> None:
    """Same words in the same order for k = 1 and K; probabilities = the reference's renormalised
    over every word starting with the prefix (to PROB_TOL)."""
    for k in (1, K):
        assert [w for w, _ in prefix.suggestions(k)] == [w for w, _ in reference.suggestions(k)], typed
    matching = reference.suggestions(V)
    mass = sum(p for _, p in matching)
    got = [p for _, p in prefix.suggestions(K)]
    np.testing.assert_allclose(got, [p / mass for _, p in matching[:K]], rtol=PROB_TOL, atol=PROB_TOL)


# ---- fp32: against ONNX and against the Core ML full head ----------------------------------------

@pytest.fixture(scope="module", params=CELLS, ids=CELL_IDS)
def bundles(request, tmp_path_factory):
    """One random run as: ONNX full head with log_probs (the reference), Core ML full head (io and
    mlstate, with log_probs), Core ML prefix-range head (io and mlstate), ONNX prefix-range head."""
    cell, layers = request.param
    root = tmp_path_factory.mktemp(cell)
    make_run(root / "run", cell, layers=layers)
    return {"onnx_full": export_quiet(root / "run", root / "onnx_full", with_log_probs=True),
            "onnx_prefix": export_quiet(root / "run", root / "onnx_prefix", prefix_head=True),
            "full": export_quiet(root / "run", root / "full", fmt="coreml", with_log_probs=True),
            "prefix": export_quiet(root / "run", root / "prefix", fmt="coreml", prefix_head=True),
            "full_mlstate": export_quiet(root / "run", root / "full_mlstate", fmt="coreml",
                                         coreml_state="mlstate", with_log_probs=True),
            "prefix_mlstate": export_quiet(root / "run", root / "prefix_mlstate", fmt="coreml",
                                           coreml_state="mlstate", prefix_head=True)}


def test_every_keystroke_suggests_the_onnx_full_heads_filtered_words(bundles):
    reference, prefix = open_session(bundles["onnx_full"]), mil_session(bundles["prefix"])
    empty = narrow = wide = 0
    for typed in type_both(reference, prefix, TEXT):
        assert_same_suggestions(reference, prefix, typed)
        n = int(np.diff(prefix.backend.raw["range"])[0])
        empty += n == 0
        narrow += 0 < n < K
        wide += n >= K
    assert empty and narrow and wide  # empty ranges, ranges shorter than k (padding) and long ones


def test_states_are_the_core_ml_full_heads_bit_for_bit(bundles):
    for form in ("", "_mlstate"):
        full, prefix = mil_session(bundles["full" + form]), mil_session(bundles["prefix" + form])
        for typed in type_both(full, prefix, TEXT):
            for a, b in zip(states(full), states(prefix)):
                np.testing.assert_array_equal(a, b)  # the recurrent update never reads the range


def test_mlstate_form_suggests_its_full_head_twins_filtered_words(bundles):
    """iOS 18 states (fp16 buffers): the twin with the same states is the reference."""
    full, prefix = mil_session(bundles["full_mlstate"]), mil_session(bundles["prefix_mlstate"])
    assert prefix.backend.program.states
    for typed in type_both(full, prefix, TEXT):
        assert_same_suggestions(full, prefix, typed)


def test_raw_outputs_hold_top_k_entries_with_padding_marked(bundles):
    """Always K entries; the first min(K, end - start) are real (ids in the range, probabilities
    > 0), the rest padding (ids >= end, probability exactly 0); a range of at most K words holds
    all of its probability."""
    program = MILProgram.load(bundles["prefix"] / MODEL_FILE)
    names = read_manifest(bundles["prefix"])["export"]["state_names"]
    rng = np.random.default_rng(0)
    zeros = {n: rng.normal(0, 0.5, program.inputs[n].shape).astype(np.float32) for n in names}
    words, seen = sorted(WORDS), set()
    for p in ("", "t", "th", "the", "a", "i", "an", "q", "zebra", "xylophone", "qzx", *words):
        start, end = prefix_range(words, p)
        out = program.predict({"char": np.array([5], np.int32), **zeros, "range": np.array([start, end], np.int32)})
        ids, probs = out["top_ids"][0], out["top_probs"][0]
        real = min(K, end - start)
        assert ids.shape == probs.shape == (K,), p
        assert np.all((start <= ids[:real]) & (ids[:real] < end)) and np.all(probs[:real] > 0), p
        assert np.all(ids[real:] >= end) and np.all(probs[real:] == 0), p
        assert np.all(np.diff(probs[:real]) <= 0), p
        if 0 < end - start <= K:
            assert probs.sum() == pytest.approx(1.0, abs=1e-6), p
        seen.add(min(end - start, K))
    assert seen == set(range(K + 1))  # empty, every short range (padding) and long ranges


def test_word_boundary_is_the_full_range(bundles):
    reference, prefix = open_session(bundles["onnx_full"]), mil_session(bundles["prefix"])
    for session in (reference, prefix):
        session.type("he went to the ")
    assert prefix.prefix == ""
    assert prefix.backend.raw["range"].tolist() == [2, V]
    assert [w for w, _ in prefix.suggestions(K)] == [w for w, _ in reference.suggestions(K)]
    assert len(prefix.suggestions(K)) == K  # <pad> and <unk> are outside the range: K real words


def test_prefix_matching_no_word(bundles):
    reference, prefix, full = (open_session(bundles["onnx_full"]), mil_session(bundles["prefix"]),
                               mil_session(bundles["full"]))
    for session in (reference, prefix, full):
        session.type("the capital of qzx")
    assert prefix.suggestions(K) == [] == reference.suggestions(K)
    raw = prefix.backend.raw
    assert raw["range"][0] == raw["range"][1]  # empty
    assert np.all(raw["top_ids"] >= raw["range"][1]) and np.all(raw["top_probs"] == 0)
    for a, b in zip(states(full), states(prefix)):
        np.testing.assert_array_equal(a, b)
    for session in (reference, prefix):  # and typing on from there works
        session.type(" the ")
    assert [w for w, _ in prefix.suggestions(K)] == [w for w, _ in reference.suggestions(K)]


def test_one_character_words(bundles):
    for text in ("he said a", "then i", "x"):
        reference, prefix = open_session(bundles["onnx_full"]), mil_session(bundles["prefix"])
        want, got = reference.complete(text, K), prefix.complete(text, K)
        assert [w for w, _ in got] == [w for w, _ in want], text
    prefix = mil_session(bundles["prefix"])
    prefix.type("a")
    start, end = prefix.backend.raw["range"]
    assert prefix.backend.labels[start] == "a"  # the word itself opens its own range
    assert prefix.suggestions(K)[0][0] in {w for w in WORDS if w.startswith("a")}


def test_bundle_layout(bundles):
    manifest, onnx_manifest = read_manifest(bundles["prefix"]), read_manifest(bundles["onnx_prefix"])
    vocab = json.loads((bundles["prefix"] / VOCAB).read_text())
    assert vocab == json.loads((bundles["onnx_prefix"] / VOCAB).read_text())  # exactly ONNX's order
    assert vocab["words"][:2] == ["<pad>", "<unk>"] and vocab["words"][2:] == sorted(WORDS)
    assert manifest["inputs"][-1] == {"name": "range", "dtype": "int32", "shape": [2]}
    assert [o["shape"] for o in manifest["outputs"][:2]] == [[1, K], [1, K]]
    assert "log_probs" not in [o["name"] for o in manifest["outputs"]]
    info, onnx_info = manifest["export"]["prefix_head"], onnx_manifest["export"]["prefix_head"]
    for key in ("input", "dtype", "shape", "order", "word_boundary_range", "range_rule", "top_probs"):
        assert info[key] == onnx_info[key], key
    assert "top_ids >= range[1]" in info["padding"]
    assert read_manifest(bundles["full"])["export"]["prefix_head"] is False
    program = MILProgram.load(bundles["prefix"] / MODEL_FILE)
    meta = program_metadata(bundles["prefix"])
    assert json.loads(meta["prefix_head"]) is True
    rows = next(op for op in program.ops if op.name == "head_rows")
    assert rows.type == "slice_by_index"
    assert rows.inputs["begin"][0].WhichOneof("binding") == "name"  # from the range input, at run time
    assert {"pad", "topk", "select", "matmul"} <= program.op_types
    # one copy of the head, as many bytes of weights as the full head's
    weights = "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    assert manifest["files"][weights]["bytes"] == read_manifest(bundles["full"])["files"][weights]["bytes"]


def program_metadata(bundle: Path) -> dict:
    import coremltools as ct

    return dict(ct.models.MLModel(str(bundle / MODEL_FILE), skip_model_load=True).user_defined_metadata)


def test_padding_logit_vanishes_beside_any_real_logit():
    """exp(PAD_LOGIT - m) is exactly 0 in float32 for any logit m a model gives, and finite."""
    for m in (-1e4, -50.0, 0.0, 50.0, 1e4):
        z = np.float32(PAD_LOGIT) - np.float32(m)
        assert np.isfinite(z) and np.exp(z) == 0


# ---- quantized: against the same-precision full-head twin ----------------------------------------

@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A GRU 32 wide (int4 per block of 32 needs it) as Core ML io and mlstate bundles, full head
    (with log_probs) and prefix-range head."""
    root = tmp_path_factory.mktemp("wide")
    make_run(root / "run", "gru", units=32, seed=1)
    return {(form, head): export_quiet(root / "run", root / f"{form}-{head}", fmt="coreml", coreml_state=form,
                                       with_log_probs=head == "full", prefix_head=head == "prefix")
            for form in ("io", "mlstate") for head in ("full", "prefix")}


def stored_bytes(bundle: Path, op_name: str, input_name: str) -> list[tuple[str, int]]:
    """(dtype, bytes) of each blob in weight.bin feeding ``op_name``'s ``input_name``, followed
    back through const/constexpr ops (values, scales, zero points, tables), largest first."""
    program = MILProgram.load(bundle / MODEL_FILE)
    producer = {name: op for op in program.ops for name, _ in op.outputs}
    data = (program.path.parent / "weights" / "weight.bin").read_bytes()
    sizes: list[tuple[str, int]] = []

    def visit_value(value) -> None:
        if value.WhichOneof("value") == "blobFileValue":
            _, code, size, _ = struct.unpack_from("<IIQQ", data, value.blobFileValue.offset)
            sizes.append((BLOB_DTYPES[code], size))

    def visit(op) -> None:
        for value in op.attributes.values():
            visit_value(value)
        for bindings in op.inputs.values():
            for b in bindings:
                if b.WhichOneof("binding") == "name":
                    if b.name in producer and producer[b.name].type.startswith("const"):
                        visit(producer[b.name])
                else:
                    visit_value(b.value)

    target = next(op for op in program.ops if op.name == op_name)
    visit(producer[target.inputs[input_name][0].name])
    return sorted(sizes, key=lambda s: -s[1])


HEAD_WEIGHT = {"prefix": ("head_rows", "x"), "full": ("head_logits", "weight")}
# (form, target): the stored head weight's data bytes per fp32 byte (int8: 1 byte a value, 4-bit:
# half a byte, fp16: 2 bytes), and the whole head weight's (data + scales/offsets/table) at most
QUANTIZED = [("io", "int8", 1 / 4, 0.30), ("io", "int4", 1 / 8, 0.14), ("io", "fp16", 1 / 2, 0.5),
             ("mlstate", "int8", 1 / 4, 0.30), ("mlstate", "int4", 1 / 8, 0.16)]


@pytest.mark.parametrize("form,to,data_factor,max_factor", QUANTIZED,
                         ids=[f"{f}-{t}" for f, t, _, _ in QUANTIZED])
def test_quantized_prefix_bundle_agrees_with_its_twin_and_stores_the_rows_compressed(
        wide_run, form, to, data_factor, max_factor, tmp_path):
    twins = {}
    for head in ("full", "prefix"):
        twins[head], record = quantize(wide_run[form, head], to, out=tmp_path / f"{head}-{to}", max_chars=600)
        compressed = {t["name"]: t["stored_as"] for t in record["tensors"]["compressed"]}
        assert any(n.startswith("head_") and s.startswith("constexpr_") for n, s in compressed.items()), compressed
    manifest = read_manifest(twins["prefix"])
    assert manifest["export"]["prefix_head"]["rows_stored"].startswith(f"{to}: ")
    assert manifest["inputs"][-1]["name"] == "range"

    ((dtype, fp32_bytes),) = stored_bytes(wide_run[form, "prefix"], *HEAD_WEIGHT["prefix"])
    assert dtype == "FLOAT32"
    head = {h: stored_bytes(twins[h], *HEAD_WEIGHT[h]) for h in ("full", "prefix")}
    assert head["prefix"] == head["full"]  # compressed exactly as the twin's head, blob by blob
    assert head["prefix"][0][1] == fp32_bytes * data_factor  # the values' blob
    assert sum(size for _, size in head["prefix"]) <= fp32_bytes * max_factor

    full, prefix = mil_session(twins["full"]), mil_session(twins["prefix"])
    for typed in type_both(full, prefix, TEXT):
        assert_same_suggestions(full, prefix, typed)
        for a, b in zip(states(full), states(prefix)):
            np.testing.assert_array_equal(a, b)


# ---- bad combinations, the CLI -------------------------------------------------------------------

def test_bad_combinations_are_one_line_errors(tmp_path):
    model = make_run(tmp_path / "run", "gru")
    words = ["<pad>", "<unk>", *WORDS]
    with pytest.raises(EdgeRNNError, match="log_probs"):
        export_coreml(model, tmp_path / "a", prefix_head=True, words=words, with_log_probs=True)
    with pytest.raises(EdgeRNNError, match="output words"):
        export_coreml(model, tmp_path / "b", prefix_head=True)
    with pytest.raises(EdgeRNNError, match="301 output words"):
        export_coreml(model, tmp_path / "c", prefix_head=True, words=words[:-1])
    charlm = RNNModel(ModelConfig(cell="gru", units=8, embed_dim=4, task="charlm"))
    with pytest.raises(EdgeRNNError, match="autocomplete"):
        export_coreml(charlm, tmp_path / "d", prefix_head=True, words=["x"] * 28)
    with pytest.raises(EdgeRNNError, match="ORT"):
        export_bundle(tmp_path / "run", tmp_path / "e", fmt="coreml", prefix_head=True, ort_format=True)
    for bad in ("a", "b", "c", "d", "e"):
        assert not (tmp_path / bad / MODEL_FILE).exists()


def test_cli_exports_a_core_ml_prefix_bundle(tmp_path):
    make_run(tmp_path / "run", "gru")
    assert "Core ML" in edge_rnn("export", "--help").stdout
    result = edge_rnn("export", tmp_path / "run", "--format", "coreml", "--prefix-head", "--out", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "b")
    assert manifest["export"]["prefix_head"]["input"] == "range"
    assert mil_session(tmp_path / "b").complete("the capital of fr", K)  # runs, suggests
    charlm = RNNModel(ModelConfig(cell="gru", units=8, embed_dim=4, task="charlm"))
    save(charlm, tmp_path / "charlm")
    bad = edge_rnn("export", tmp_path / "charlm", "--format", "coreml", "--prefix-head", "--out", tmp_path / "c")
    assert_one_line_error(bad, "autocomplete")
