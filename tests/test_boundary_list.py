"""The word-boundary list: at the space before a word, a prefix-head bundle with ``boundary_words=N``
ranks only the N most frequent words (``model_boundary.onnx``), everywhere else it is the
prefix head.

The reference is independent of the graph: the full head's log-probabilities (a bundle exported
with ``log_probs``), restricted to the N most frequent words of the vocabulary (``WORDS`` is in
frequency order) and renormalised. The boundary graph's logits for those words are the whole
head's, so its suggestions must be exactly that top-k, in fp32 and after ``edge-rnn quantize``
against the full head quantized the same way.
"""

import numpy as np
import onnx
import pytest

from edge_rnn.export.bundle import export_bundle, read_manifest
from edge_rnn.io import EdgeRNNError
from edge_rnn.runtime import SYMBOL_ID, open_session
from test_prefix_head import K, TEXT, WORDS, make_run

N = 40  # of the 300 words


@pytest.fixture(scope="module", params=[("gru", 2), ("nlstm", 1)], ids=["gru-2l", "nlstm"])
def bundles(request, tmp_path_factory):
    """{precision: (full head with log_probs, prefix head with an N-word boundary list)}"""
    from edge_rnn.quantize import quantize

    cell, layers = request.param
    root = tmp_path_factory.mktemp(f"boundary-{cell}")
    make_run(root / "run", cell, layers=layers, seed=3)
    full = export_bundle(root / "run", root / "full", top_k=K, with_log_probs=True)
    listed = export_bundle(root / "run", root / "listed", top_k=K, prefix_head=True, boundary_words=N)
    out = {"fp32": (full, listed)}
    for to in ("int8", "fp16"):
        out[to] = (quantize(full, to, out=root / f"full-{to}", max_chars=300)[0],
                   quantize(listed, to, out=root / f"listed-{to}", max_chars=300)[0])
    return out


def listed_suggestions(full_session, k: int) -> list[tuple[str, float]]:
    """The reference: the full head's top-k among the N most frequent words, renormalised over them."""
    log_probs = full_session.last.log_probs[2 : N + 2].astype(np.float64)
    probs = np.exp(log_probs - log_probs.max())
    probs /= probs.sum()
    top = np.argsort(-log_probs, kind="stable")[:k]
    return [(WORDS[i], float(probs[i])) for i in top]


@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16"])
def test_boundaries_rank_the_list_elsewhere_the_prefix(bundles, precision):
    full, listed = bundles[precision]
    a, b = open_session(full), open_session(listed)
    boundaries = changed = narrow = 0
    for ch in TEXT:
        a.step(SYMBOL_ID[ch])
        b.step(SYMBOL_ID[ch])
        got = b.suggestions(K)
        if b.prefix == "":
            want = listed_suggestions(a, K)
            boundaries += 1
            changed += [w for w, _ in want] != [w for w, _ in a.suggestions(K)]
            assert [w for w, _ in got] == [w for w, _ in want], a.text
            assert [p for _, p in got] == pytest.approx([p for _, p in want], rel=1e-4), a.text
        else:
            narrow += 1
            assert [w for w, _ in got] == [w for w, _ in a.suggestions(K)], a.text
        for s_full, s_listed in zip(a.state, b.state):
            np.testing.assert_array_equal(s_full, s_listed)  # the list never touches the state
    # every word boundary of the text was checked, and the list mattered at some of them
    assert boundaries == TEXT.count(" ") and narrow and changed


def test_the_runtime_runs_the_boundary_graph_at_boundaries_only(bundles):
    _, listed = bundles["int8"]
    session = open_session(listed)
    backend = session.backend
    ran = set()
    for ch in TEXT:
        session.step(SYMBOL_ID[ch])
        ran.add((backend.graph_for(backend.range(session.prefix)) is backend._boundary, session.prefix == ""))
    assert ran == {(True, True), (False, False)}


@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16"])
def test_bundle_layout(bundles, precision):
    """The manifest names the graph; the graph keeps the contract's inputs (``range`` unread) and
    gathers its rows from the head the other graphs store: the bundle grows by the list's ids."""
    _, listed = bundles[precision]
    head = read_manifest(listed)["export"]["prefix_head"]
    assert head["boundary_words"] == N and head["split"]["boundary"] == "model_boundary.onnx"
    graph = onnx.load(str(listed / "model_boundary.onnx"), load_external_data=False).graph
    narrow = onnx.load(str(listed / "model_narrow.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == [i.name for i in narrow.input]
    assert [o.name for o in graph.output] == [o.name for o in narrow.output]
    assert "range" not in {v for n in graph.node for v in n.input}
    ops = {n.op_type for n in graph.node}
    assert "Gather" in ops and "If" not in ops
    heads = {t.name for t in graph.initializer if t.name.startswith("head.")}
    assert heads and heads <= {t.name for t in narrow.initializer}  # the same stored rows


def test_the_list_costs_its_ids_in_bytes(bundles, tmp_path):
    full, listed = bundles["fp32"]
    plain = export_bundle(full.parent / "run", tmp_path / "plain", top_k=K, prefix_head=True)
    size = lambda b: read_manifest(b)["files"]["weights.bin"]["bytes"]  # noqa: E731
    assert 0 < size(listed) - size(plain) <= 8 * N + 64


def test_bad_lists_are_one_line_errors(bundles, tmp_path):
    run = bundles["fp32"][0].parent / "run"
    for kwargs, match in [({"prefix_head": False, "boundary_words": N}, "prefix-range head"),
                          ({"prefix_head": True, "boundary_words": K - 1}, "between top_k"),
                          ({"prefix_head": True, "boundary_words": len(WORDS) + 1}, "between top_k"),
                          ({"prefix_head": True, "boundary_words": N, "fmt": "coreml"}, "ONNX bundles only")]:
        with pytest.raises(EdgeRNNError, match=match):
            export_bundle(run, tmp_path / "bad", top_k=K, **kwargs)
        assert not (tmp_path / "bad").exists()


def test_step_bytes_count_the_list_at_boundaries(bundles, tmp_path):
    """``edge_rnn.bench.onnx_step_bytes`` (the latency table's bound): a boundary reads the list's
    rows, not the whole head; other ranges read what they read without the list."""
    from edge_rnn.bench import onnx_step_bytes

    full, listed = bundles["fp32"]
    plain = export_bundle(full.parent / "run", tmp_path / "plain", top_k=K, prefix_head=True)
    n_out = len(WORDS) + 2
    with_list, without = (onnx_step_bytes(b / "model.onnx", read_manifest(b)["export"]["prefix_head"])
                          for b in (listed, plain))
    assert with_list(10) == without(10) and with_list(N) == without(N)
    assert with_list(n_out - 2) == without(N) < without(n_out - 2)
