"""The keyboard runtime: backspace, accept, restarts and the prefix filter, on MLX and ONNX.

Every cell, a random tiny model saved as a run dir (MLX) and exported as a bundle (ONNX
Runtime). The promise under test: whatever path a session took (typing, backspacing through the
stack, rebuilding past its bottom with the prefill graph, restarting long observations,
accepting a suggestion), its state and suggestions are bit-identical to those of a fresh session
that typed the resulting text.
"""

import tracemalloc
from collections import Counter

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlx.utils import tree_map

from edge_rnn.data import demo_corpus
from edge_rnn.export.bundle import export_bundle
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import ModelConfig, RNNModel, save
from edge_rnn.runtime import ONNXBackend, Session, StepOutput, WordIndex, field_symbols, normalise, open_session
from edge_rnn.vocab import Vocab

WORDS = [w for w, _ in Counter(demo_corpus(2000, seed=0).split()).most_common(200)]
TEXT = demo_corpus(30, seed=5)[:150]  # ~25 words of the same generator
CELLS = [("rnn", 1), ("gru", 2), ("lstm", 1), ("cifg", 1), ("nlstm", 1)]
# small sizes so that a short text crosses the stack's bottom, drops the front of the retained
# text (continuous) or restarts observations (the default)
SMALL = dict(stack_depth=5, max_chars=48, context_chars=12, restart="continuous")
OBSERVATION = dict(SMALL, restart="observation")


def make_run(run_dir, cell: str, layers: int, seed: int = 0):
    mx.random.seed(seed)
    config = ModelConfig(cell=cell, layers=layers, units=16, depth=2, embed_dim=8, vocab_size=len(WORDS))
    model = RNNModel(config)
    rng = np.random.default_rng(seed)
    model.update(tree_map(lambda a: mx.array(rng.normal(0, 0.6, a.shape), dtype=mx.float32), model.parameters()))
    save(model, run_dir, Vocab.from_counts(WORDS))


@pytest.fixture(scope="module", params=CELLS, ids=[f"{c}-{n}l" for c, n in CELLS])
def sources(request, tmp_path_factory):
    """(run dir, ONNX bundle with log_probs, prefix-head bundle) of one cell."""
    cell, layers = request.param
    root = tmp_path_factory.mktemp(cell)
    make_run(root / "run", cell, layers)
    full = export_bundle(root / "run", root / "full", with_log_probs=True)
    prefix = export_bundle(root / "run", root / "prefix", prefix_head=True)
    return root / "run", full, prefix


def snapshot(session: Session):
    """The state as plain arrays, and the suggestions, for exact comparison."""
    state = session.state
    if not isinstance(state, list) or not isinstance(state[0], np.ndarray):  # MLX: list of tuples
        state = [np.array(a) for layer in state for a in layer]
    return session.text, [s.copy() for s in state], session.suggestions(3)


def assert_same(a: Session, b: Session, same_text: bool = True):
    text_a, state_a, sugg_a = snapshot(a)
    text_b, state_b, sugg_b = snapshot(b)
    assert text_a == text_b or not same_text
    assert sugg_a == sugg_b  # same words, same order, same float probabilities
    for x, y in zip(state_a, state_b, strict=True):
        np.testing.assert_array_equal(x, y)


def fresh(source, **options) -> Session:
    return open_session(source, **options)


@pytest.mark.parametrize("restart", ["continuous", "observation"])
@pytest.mark.parametrize("which", ["mlx", "onnx", "prefix-head"])
def test_backspace_equals_typing_the_shorter_text(sources, which, restart):
    """Continuous: the text outgrows ``max_chars`` (its front is dropped) and a rebuild starts
    from a mark; the reference types the whole shorter text. Observation: the session restarts,
    and the retained observation typed into an empty field is the reference."""
    source = sources[["mlx", "onnx", "prefix-head"].index(which)]
    text = TEXT[:70] if which == "mlx" else TEXT  # MLX steps cost ~5 ms each
    options = dict(SMALL, restart=restart)
    session = fresh(source, **options)
    session.type(text)
    typed = field_symbols(text) if restart == "continuous" else session.text
    assert len(typed) > SMALL["max_chars"] or restart == "observation"
    # 1 + 3 pop the stack (depth 5), the rest go past its bottom; an observation is shorter
    for n in (1, 3, 4, 9, 20) if restart == "continuous" else (1, 3, 4, 9):
        session.backspace(n)
        typed = typed[:-n]
        assert typed.endswith(session.text)
        shorter = fresh(source, **options)
        shorter.type(typed)
        assert_same(session, shorter, same_text=restart == "observation")
        session.type("x y")  # keep typing after a rebuild: the stack refills, a mark is added
        session.backspace(3)
        assert_same(session, shorter, same_text=restart == "observation")
        session.type("zq")  # over text taken back: its marks must not be reused
        session.backspace(2)
        assert_same(session, shorter, same_text=restart == "observation")


@pytest.mark.parametrize("restart", ["continuous", "observation"])
@pytest.mark.parametrize("which", [1, 2], ids=["onnx", "prefix-head"])
def test_the_output_ring_equals_plain_runs(sources, which, restart):
    """Keystrokes written in place into the ring (wrapping it many times: 7 slots here) give
    what plain ``run`` calls give, through typing, backspaces into and past the stack, rebuilds
    from marks and restarts; and the ring is really used."""
    ringed = fresh(sources[which], **dict(SMALL, restart=restart))
    plain = Session(ONNXBackend(sources[which], in_place=False), **dict(SMALL, restart=restart))
    rng = np.random.default_rng(1)
    in_ring = 0
    for _ in range(40):
        n = int(rng.integers(0, 9))
        if rng.random() < 0.4:
            ringed.backspace(n), plain.backspace(n)
        else:
            chunk = TEXT[int(rng.integers(0, len(TEXT) - 9)):][:n]
            ringed.type(chunk), plain.type(chunk)
        assert_same(ringed, plain)
        in_ring += ringed.last is not None and any(
            np.shares_memory(ringed.last.top_probs, slot.out.top_probs) for slot in ringed.backend._slots)
    assert len(ringed.backend._slots) == SMALL["stack_depth"] + 2 and in_ring >= 10 and not plain.backend._slots


def test_restarted_observations_stay_short_and_match_a_fresh_session(sources):
    _, full, _ = sources
    session = fresh(full, **OBSERVATION)
    longest = 0
    for word in TEXT.split():
        session.type(word + " ")
        longest = max(longest, len(session.text))
    assert longest <= SMALL["max_chars"]
    assert session.text != normalise(TEXT)  # it did restart
    again = fresh(full, **OBSERVATION)
    again.type(session.text)  # the retained observation, typed into an empty field
    assert_same(session, again)


def test_continuous_mode_never_restarts_and_keeps_a_bounded_text(sources):
    _, full, _ = sources
    continuous, restarting = fresh(full, **SMALL), fresh(full, **OBSERVATION)
    continuous.type(TEXT)
    restarting.type(TEXT)
    assert len(continuous.text) <= SMALL["max_chars"]
    assert not np.array_equal(continuous.state[0], restarting.state[0])


@pytest.mark.parametrize("which", [0, 1, 2], ids=["mlx", "onnx", "prefix-head"])
def test_accept_then_continue_equals_typing_the_word(sources, which):
    source = sources[which]
    for partial, word in [("the capital of fr", "france"), ("he went to par", "the")]:
        accepted, typed = fresh(source), fresh(source)
        accepted.type(partial)
        accepted.accept(word)
        accepted.type("and")
        typed.type(partial.rsplit(" ", 1)[0] + f" {word} and")
        assert_same(accepted, typed)


def test_accept_refuses_what_is_not_a_word(sources):
    session = fresh(sources[1])
    session.type("the")
    for bad in ["", "Paris", "two words", "é"]:
        with pytest.raises(EdgeRNNError):
            session.accept(bad)


def test_backspace_to_nothing_is_an_empty_field(sources):
    session = fresh(sources[1], **SMALL)
    session.type("the cat")
    session.backspace(100)
    assert session.text == "" and session.suggestions() == []
    session.type("the")
    assert_same(session, (lambda s: (s.type("the"), s)[1])(fresh(sources[1], **SMALL)))


def test_prefix_filter_by_bisection_matches_a_scan_of_every_word(sources):
    """The bisected candidate range holds exactly the words a full scan finds."""
    session = fresh(sources[1])
    index = session._index
    for prefix in ["", "t", "th", "the", "fr", "zz", "a", "capital"]:
        want = [i for i, w in enumerate(session.backend.labels) if i > 1 and w.startswith(prefix)]
        assert sorted(index.candidates(prefix).tolist()) == want


def test_suggestions_equal_a_full_sort_of_the_distribution(sources):
    """The shortcuts (graph top-k, bisected range) give what sorting every word would."""
    session = fresh(sources[1])
    labels = np.array(session.backend.labels)
    for ch in TEXT[:60]:
        session.type(ch)
        lp = session.last.log_probs
        ok = np.array([i > 1 and w.startswith(session.prefix) for i, w in enumerate(labels)])
        ids = np.flatnonzero(ok)
        best = ids[np.argsort(-lp[ids], kind="stable")[:3]]
        got = session.suggestions(3)
        assert [w for w, _ in got] == [str(labels[i]) for i in best]
        assert [p for _, p in got] == pytest.approx(np.exp(lp[best]).tolist(), rel=1e-6)


@pytest.mark.parametrize("n_words", [6, 200])  # a range sorted outright; one partitioned (> SORT_BELOW)
def test_equal_probabilities_suggest_the_lower_id_first(n_words):
    """The tie rule of every search path: equal log-probabilities keep the lower output id first."""
    words = sorted(f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(n_words))
    shuffled = list(np.random.default_rng(0).permutation(words))  # ids in another order than the words
    index = WordIndex(["<pad>", "<unk>", *shuffled], "autocomplete")
    log_probs = np.full(n_words + 2, -9.0, np.float32)
    tied = [5, 2, 7, 3]  # four equally probable words, ids out of order
    log_probs[tied] = -1.0
    out = StepOutput(np.array([0, 1, 2], np.int32), np.exp(log_probs[[0, 1, 2]]), log_probs)
    ids, probs = index.best(out, "w", 3, prefix_head=False)
    assert ids == [2, 3, 5] and probs == pytest.approx([np.exp(-1.0)] * 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=12), st.integers(0, 6), st.sampled_from(WORDS[:30])), max_size=12))
def test_fuzzed_editing_never_crashes_nor_contradicts_the_prefix(sources, actions):
    """Arbitrary unicode, control characters, backspaces and accepts, in any order."""
    session = fresh(sources[2], **SMALL)  # the prefix-head bundle: the fastest
    for action in actions:
        if isinstance(action, int):
            session.backspace(action)
        elif action in WORDS and session.text:
            session.accept(action)
        else:
            session.type(action)
        assert set(session.text) <= set(" abcdefghijklmnopqrstuvwxyz")
        assert "  " not in session.text and len(session.text) <= SMALL["max_chars"]
        for word, prob in session.suggestions(3):
            assert word.startswith(session.prefix) and word not in ("<pad>", "<unk>")
            assert 0.0 <= prob <= 1.0


def test_a_100k_character_input_keeps_memory_bounded(sources):
    _, _, prefix = sources
    session = fresh(prefix)
    junk = "".join(chr(c) for c in np.random.default_rng(0).integers(0, 0x2FFF, 2_000))
    text = ((TEXT + "\x00\t\n" + junk) * 60)[:100_000]
    session.type(text[:20_000])  # warm: allocator caches, sessions
    tracemalloc.start()
    session.type(text[20_000:])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(session.text) <= 200 and len(session._stack) <= 64
    assert peak < 8 << 20, peak  # the normalised input itself is ~80 kB; nothing grows with it


def test_bad_session_options_are_one_clear_error(sources):
    with pytest.raises(EdgeRNNError, match="restart policy"):
        fresh(sources[1], restart="sometimes")
    with pytest.raises(EdgeRNNError, match="impossible session sizes"):
        fresh(sources[1], stack_depth=0)
    with pytest.raises(EdgeRNNError, match="backspace"):
        fresh(sources[1]).backspace(-1)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_the_keystroke_fast_path_normalises_like_training(text):
    """``normalise`` of a single plain key skips the vectorised path; both agree everywhere."""
    from edge_rnn import data

    core = data.normalise(text)
    got = normalise(text)
    assert got.strip() == core and "  " not in got
    assert all(normalise(ch) == (ch.lower() if ch.isascii() and ch.isalpha() else " ") for ch in text
               if ch.lower() != "<")
