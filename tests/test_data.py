"""Corpus loading and the Distill autocomplete recipe (edge_rnn.data); offline and fast."""

import collections
import hashlib
import re
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rnn import data
from edge_rnn.data import (
    Dataset,
    autocomplete_splits,
    charlm_splits,
    demo_corpus,
    encode_autocomplete,
    encode_charlm,
    fetch_text8,
    load_corpus,
    make_splits,
    most_frequent_baseline,
    normalise,
    pack_words,
    read_text8,
)
from edge_rnn.io import EdgeRNNError
from edge_rnn.vocab import PAD, UNK, Vocab, decode_chars

# symbol ids written out: space 1, a 2, c 4, d 5, e 6, h 9, s 20, t 21
SP, A, C, D, E, H, S, T = 1, 2, 4, 5, 6, 9, 20, 21


@pytest.fixture(scope="module")
def demo():
    return demo_corpus()


def observations(ds: Dataset) -> list[str]:
    return [decode_chars(ds.chars[s : s + n]) for s, n in zip(ds.starts, ds.lengths)]


def grid_text(words_per_obs: list[list[str]]) -> str:
    """Observations of four 4-letter words: with max_len=20 each fills one observation exactly."""
    assert all(len(ws) == 4 and all(len(w) == 4 for w in ws) for ws in words_per_obs)
    return " ".join(w for ws in words_per_obs for w in ws)


def marker(i: int) -> str:
    return "q" + "".join(chr(ord("a") + (i // 26**k) % 26) for k in (2, 1, 0))


# ---------------------------------------------------------------- normalise


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "hello world"),
    ("It's 1999 -- well-known", "it s well known"),
    ("  tabs\tand\nnewlines\r\n  ", "tabs and newlines"),
    ("a <unk> b <UNK> c<unk>d", "a b c d"),
    ("café naïve Ελλάδα straße", "caf na ve stra e"),
    ("<unk> 123 !!!", ""),
    ("", ""),
    ("already normal text", "already normal text"),
])
def test_normalise(raw, expected):
    assert normalise(raw) == expected


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_normalise_is_idempotent_and_clean(raw):
    out = normalise(raw)
    assert re.fullmatch(r"([a-z]+( [a-z]+)*)?", out)
    assert normalise(out) == out


# ---------------------------------------------------------------- labels and packing


def test_hand_checked_labels():
    vocab = Vocab.from_counts(["the", "sat"])  # the=2, sat=3, cat unknown
    ds = encode_autocomplete("The cat sat.", vocab)
    assert ds.chars.tolist() == [SP, T, H, E, SP, C, A, T, SP, S, A, T]
    assert ds.targets.tolist() == [2, 2, 2, 2, UNK, UNK, UNK, UNK, 3, 3, 3, 3]
    assert ds.starts.tolist() == [0] and ds.lengths.tolist() == [12]


def test_hand_checked_labels_through_splits():
    # 30 identical observations " the cat sat" (12 characters): equal training counts, so the
    # vocabulary is alphabetical: cat=2, sat=3, the=4
    s = autocomplete_splits(" ".join(["the cat sat"] * 30), vocab_size=10, max_len=12)
    assert s.vocab.words == ["<pad>", "<unk>", "cat", "sat", "the"]
    for ds in (s.train, s.valid, s.test):
        assert ds.chars[:12].tolist() == [SP, T, H, E, SP, C, A, T, SP, S, A, T]
        assert ds.targets[:12].tolist() == [4, 4, 4, 4, 2, 2, 2, 2, 3, 3, 3, 3]
        assert ds.lengths.tolist() == [12] * len(ds)
    # always guessing "cat" (the first of the tied ids) is right on 4 of 12 positions
    assert most_frequent_baseline(s) == pytest.approx(1 / 3)
    # with a one-word vocabulary "the" and "sat" are <unk>: still misses, not skipped
    s1 = autocomplete_splits(" ".join(["the cat sat"] * 30), vocab_size=1, max_len=12)
    assert s1.vocab.words == ["<pad>", "<unk>", "cat"]
    assert s1.test.targets[:12].tolist() == [UNK] * 4 + [2] * 4 + [UNK] * 4
    assert most_frequent_baseline(s1) == pytest.approx(1 / 3)


def test_charlm_targets():
    ds = encode_charlm("ab cd", max_len=3)  # two observations: " ab", " cd"
    assert ds.chars.tolist() == [SP, A, 3, SP, C, D]
    assert ds.targets.tolist() == [A, 3, PAD, C, D, PAD]
    ds = encode_charlm("ab cd", max_len=6)  # one observation " ab cd"
    assert ds.targets.tolist() == [A, 3, SP, C, D, PAD]


def test_pack_words_hand_checked():
    # costs (len + 1) 3 3 4 2 5 with max_len 6: [3 3] [4 2] [5]
    assert pack_words(np.array([3, 3, 4, 2, 5]), 6).tolist() == [0, 2, 4, 5]
    assert pack_words(np.array([6, 6]), 6).tolist() == [0, 1, 2]


word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(words=st.lists(word, min_size=1, max_size=80), max_len=st.integers(2, 30))
def test_observations_hold_whole_words(words, max_len):
    text = " ".join(words)
    kept = [w for w in words if len(w) <= max_len - 1]  # overlong words are dropped
    if not kept:
        with pytest.raises(EdgeRNNError, match="no usable words"):
            encode_charlm(text, max_len)
        return
    ds = encode_charlm(text, max_len)
    obs = observations(ds)
    assert all(o.startswith(" ") and 0 < len(o) <= max_len for o in obs)
    assert "".join(obs) == "".join(" " + w for w in kept)  # no overlap, nothing lost, in order
    assert ds.starts.tolist() == np.concatenate([[0], np.cumsum(ds.lengths)[:-1]]).tolist()
    # greedy: the first word of the next observation would not have fitted
    for a, b in zip(obs, obs[1:]):
        assert len(a) + len(b.split(" ")[1]) + 1 > max_len
    # autocomplete uses the same observations; each position is labelled with its word
    vocab = Vocab.from_counts(sorted(set(kept)))
    ac = encode_autocomplete(text, vocab, max_len)
    assert np.array_equal(ac.chars, ds.chars) and np.array_equal(ac.lengths, ds.lengths)
    expected = [vocab.id(w) for w in kept for _ in range(len(w) + 1)]
    assert ac.targets.tolist() == expected


def test_splits_reassemble_the_text(demo):
    text = demo[:60_000]
    s = autocomplete_splits(text, vocab_size=100, max_len=40)
    whole = observations(encode_charlm(text, max_len=40))
    parts = observations(s.train) + observations(s.valid) + observations(s.test)
    assert sorted(parts) == sorted(whole)
    assert all(o.startswith(" ") and len(o) <= 40 for o in parts)
    for ds in (s.train, s.valid, s.test):
        assert len(ds.chars) == len(ds.targets) == ds.n_chars()
        assert ds.chars.dtype == np.uint8 and ds.targets.dtype == np.int32
        assert ds.starts.dtype == np.int64 and ds.lengths.dtype == np.int64


# ---------------------------------------------------------------- splits and vocabulary


@pytest.mark.parametrize("n_obs", [20, 101, 257])
def test_split_sizes(n_obs):
    text = grid_text([[marker(i), "aaaa", "bbbb", "cccc"] for i in range(n_obs)])
    s = charlm_splits(text, max_len=20)
    n_train, n_valid = int(0.9 * n_obs), int(0.05 * n_obs)
    assert (len(s.train), len(s.valid), len(s.test)) == (n_train, n_valid,
                                                          n_obs - n_train - n_valid)
    assert s.vocab is None and s.task == "charlm"


def test_split_is_seeded():
    text = grid_text([[marker(i), "aaaa", "bbbb", "cccc"] for i in range(200)])
    a, b = charlm_splits(text, max_len=20, seed=3), charlm_splits(text, max_len=20, seed=3)
    c = charlm_splits(text, max_len=20, seed=4)
    assert np.array_equal(a.train.chars, b.train.chars)
    assert np.array_equal(a.test.chars, b.test.chars)
    assert observations(a.test) != observations(c.test)
    # autocomplete and charlm put the same observations in the same split
    ac = autocomplete_splits(text, vocab_size=50, max_len=20, seed=3)
    assert np.array_equal(ac.valid.chars, a.valid.chars)


def test_too_small_and_empty():
    with pytest.raises(EdgeRNNError, match="corpus too small: 19 observations; need at least 20"):
        autocomplete_splits(grid_text([["aaaa"] * 4] * 19), vocab_size=5, max_len=20)
    with pytest.raises(EdgeRNNError, match="no usable words"):
        autocomplete_splits("123 !!", vocab_size=5)
    with pytest.raises(EdgeRNNError, match="unknown task"):
        make_splits("a b c", "translate", vocab_size=5)


def test_vocabulary_counts_the_training_split_only():
    n = 100
    rows = [[marker(i), "aaaa", "bbbb" if i % 2 else "cccc", "dddd" if i % 3 else "eeee"]
            for i in range(n)]
    first = autocomplete_splits(grid_text(rows), vocab_size=1000, max_len=20)
    # fill one test observation with a word found nowhere else: the packing and the permutation
    # depend only on word lengths, so it stays in the test split
    j = next(i for i in range(n) if marker(i) in observations(first.test)[0])
    rows[j] = ["zzzz"] * 4
    s = autocomplete_splits(grid_text(rows), vocab_size=1000, max_len=20)
    assert " zzzz zzzz zzzz zzzz" in observations(s.test)
    assert "zzzz" not in s.vocab.index
    zz = s.test.starts[observations(s.test).index(" zzzz zzzz zzzz zzzz")]
    assert s.test.targets[zz : zz + 20].tolist() == [UNK] * 20
    # test-split markers are unknown, training ones known
    assert all(marker(i) not in s.vocab.index for i in range(n) if marker(i) in
               " ".join(observations(s.test) + observations(s.valid)))
    train_words = " ".join(observations(s.train)).split()
    # order: descending training frequency, ties alphabetical (recomputed independently here)
    counts = collections.Counter(train_words)
    expected = sorted(counts, key=lambda w: (-counts[w], w))
    assert s.vocab.words[2:] == expected
    # a small vocabulary keeps the head; the rest of the training words become <unk>
    small = autocomplete_splits(grid_text(rows), vocab_size=3, max_len=20)
    assert small.vocab.words[2:] == expected[:3]
    assert set(np.unique(small.train.targets).tolist()) == {UNK, 2, 3, 4}


def test_train_share_keeps_whole_runs_drawn_from_all_of_the_text():
    text = grid_text([[marker(i), "aaaa", "bbbb", "cccc"] for i in range(2000)])
    whole = autocomplete_splits(text, vocab_size=3000, max_len=20, seed=1)  # one observation per marker
    half = whole.train_share(0.5, seed=3)
    assert half.vocab is whole.vocab and half.valid is whole.valid and half.test is whole.test
    everything, kept = observations(whole.train), observations(half.train)
    index = [everything.index(o) for o in kept]
    assert index == sorted(index)  # in text order
    runs = np.cumsum(~whole.train.follows) - 1  # run of each observation
    sizes = np.bincount(runs)
    assert all(np.sum(runs[index] == r) == sizes[r] for r in set(runs[index]))  # whole runs only
    assert abs(len(kept) - len(everything) / 2) <= sizes.max()
    assert min(index) < len(everything) / 10 and max(index) > len(everything) * 9 / 10  # all of the text
    assert len(half.train.chars) == len(half.train.targets) == half.train.n_chars()
    np.testing.assert_array_equal(half.train.follows, whole.train.follows[index])  # text neighbours stay so
    assert half.train.batch(np.arange(3))[1].any()  # targets travel with their characters
    assert observations(half.train.rechunked(0, 20))[0].startswith(" ")  # still cuts anew
    assert observations(whole.train_share(0.5, seed=3).train) == kept  # a pure function of the seed
    assert observations(whole.train_share(0.5, seed=4).train) != kept
    assert whole.train_share(1.0) is whole
    assert len(whole.train.sample_runs(1e-9)) >= 1  # never empty
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            whole.train.sample_runs(bad)


def test_follows_marks_observations_that_continue_the_previous_one_in_the_text():
    text = grid_text([[marker(i), "aaaa", "bbbb", "cccc"] for i in range(200)])
    s = autocomplete_splits(text, vocab_size=300, max_len=20, seed=1)  # one observation per marker
    for ds in (s.train, s.valid, s.test):
        number = {marker(i): i for i in range(200)}  # the observation's place in the text
        rows = np.array([number[o.split()[0]] for o in observations(ds)])
        assert ds.follows.tolist() == [False] + (np.diff(rows) == 1).tolist()


def test_rechunked_cuts_the_same_text_at_other_word_boundaries(demo):
    train = autocomplete_splits(demo[:60_000], vocab_size=100, max_len=40).train
    runs = train.starts[~train.follows]
    cuts = [train.rechunked(seed, 40) for seed in range(4)]
    for cut in cuts:
        assert cut.chars is train.chars and cut.targets is train.targets
        # the whole stream, once, in order; whole words of at most 40 characters
        assert cut.starts[0] == 0 and cut.starts[-1] + cut.lengths[-1] == len(train.chars)
        np.testing.assert_array_equal(cut.starts[1:], cut.starts[:-1] + cut.lengths[:-1])
        assert all(o.startswith(" ") and len(o) <= 40 for o in observations(cut))
        # runs of contiguous text are kept, so no observation joins text that was not adjacent
        np.testing.assert_array_equal(cut.starts[~cut.follows], runs)
        assert len(cut) >= len(train)
        # after its first observation a run is packed greedily: the next word would not have fitted
        words = observations(cut)
        for k in np.flatnonzero(cut.follows[:-1] & cut.follows[1:]):  # k and k + 1 in one run, k not its first
            assert len(words[k]) + len(words[k + 1].split(" ")[1]) + 1 > 40
    assert not np.array_equal(cuts[0].starts, cuts[1].starts)
    assert not np.isin(cuts[0].starts, train.starts).all()
    again = autocomplete_splits(demo[:60_000], vocab_size=100, max_len=40).train.rechunked(0, 40)
    np.testing.assert_array_equal(again.starts, cuts[0].starts)  # a pure function of the seed
    assert train.rechunked(3, 40) is cuts[3]  # kept: an epoch asks once per batch
    with pytest.raises(ValueError, match="follows"):
        encode_autocomplete(demo[:5_000], Vocab.from_counts(["the"]), 40).rechunked(0, 40)


# ---------------------------------------------------------------- batches


def test_batch_pads_on_the_right():
    ds = encode_charlm("ab cdefg h", max_len=6)  # " ab" (3), " cdefg" (6), " h" (2)
    assert ds.lengths.tolist() == [3, 6, 2]
    x, y = ds.batch(np.array([2, 0]))
    assert x.dtype == np.int32 and y.dtype == np.int32
    assert x.tolist() == [[SP, 9, 0], [SP, A, 3]]
    assert y.tolist() == [[9, 0, 0], [A, 3, 0]]
    x, _ = ds.batch(np.array([1, 2]))
    assert x.shape == (2, 6) and x[1].tolist() == [SP, 9, 0, 0, 0, 0]


def test_batches_order_shuffle_and_drop_last():
    text = grid_text([[marker(i), "aaaa", "bbbb", "cccc"] for i in range(23)])
    ds = encode_charlm(text, max_len=20)
    plain = list(ds.batches(5, shuffle=False))
    assert [x.shape for x, _ in plain] == [(5, 20)] * 4 + [(3, 20)]
    assert np.array_equal(np.concatenate([x for x, _ in plain]), ds.batch(np.arange(23))[0])
    assert len(list(ds.batches(5, shuffle=False, drop_last=True))) == 4
    one = np.concatenate([x for x, _ in ds.batches(5, shuffle=True, seed=1)])
    again = np.concatenate([x for x, _ in ds.batches(5, shuffle=True, seed=1)])
    other = np.concatenate([x for x, _ in ds.batches(5, shuffle=True, seed=2)])
    assert np.array_equal(one, again) and not np.array_equal(one, other)
    key = lambda a: sorted(map(tuple, a.tolist()))  # noqa: E731
    assert key(one) == key(ds.batch(np.arange(23))[0])  # a permutation of all observations
    with pytest.raises(ValueError):
        next(ds.batches(0, shuffle=False))


# ---------------------------------------------------------------- demo corpus


def test_demo_corpus_is_deterministic_and_normalised(demo):
    assert hashlib.sha256(demo.encode()).digest() == hashlib.sha256(demo_corpus().encode()).digest()
    assert demo_corpus(50, seed=1) != demo_corpus(50, seed=2)
    assert demo_corpus(50, seed=1) == demo_corpus(50, seed=1)
    assert normalise(demo) == demo
    assert 500_000 < len(demo) < 2_000_000
    counts = collections.Counter(demo.split())
    assert 150 <= len(counts) <= 1000
    assert counts.most_common(1)[0][1] / sum(counts.values()) < 0.12


def test_demo_corpus_long_range_structure(demo):
    capital = {c[0]: c[1] for c in data.COUNTRIES}
    language = {c[0]: c[2] for c in data.COUNTRIES}
    assert capital["france"] == "paris" and language["spain"] == "spanish"  # the table is sane
    facts = re.findall(r"the capital of (\w+) is (\w+)", demo)
    assert len(facts) > 500 and len({c for c, _ in facts}) == len(capital)
    assert all(capital[c] == y for c, y in facts)
    born = re.findall(r"(\w+) was born in (\w+) so (he|she) speaks (\w+)", demo)
    assert len(born) > 300
    for name, country, pronoun, lang in born:
        assert language[country] == lang
        assert pronoun == ("she" if name in data.FEMALE else "he")
    agree = re.findall(r"the (\w+) that the \w+ saw yesterday (was|were)", demo)
    plurals = {p for _, p in data.NOUNS}
    assert len(agree) > 300 and all((n in plurals) == (v == "were") for n, v in agree)
    bought = re.findall(r"bought (\w+) (\w+) at the market and gave (it|them)", demo)
    singular = {s for s, _ in data.ITEMS}
    assert len(bought) > 300
    assert all((n == "one") == (item in singular) == (it == "it") for n, item, it in bought)


def test_demo_splits_and_baseline(demo):
    s = make_splits(demo, "autocomplete", vocab_size=1000)
    assert s.task == "autocomplete"
    assert len(s.vocab) == 2 + len(set(" ".join(observations(s.train)).split()))
    baseline = most_frequent_baseline(s)
    assert 0.01 < baseline < 0.15
    # the constant guess is the most frequent training word, scored per position
    guess = np.bincount(s.train.targets[s.train.targets > UNK]).argmax()
    t = s.test.targets[s.test.targets != PAD]
    assert baseline == pytest.approx(np.mean(t == guess))


# ---------------------------------------------------------------- text8 download and corpora


@pytest.fixture
def text8_zip(tmp_path):
    src = tmp_path / "src" / "text8.zip"
    src.parent.mkdir()
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("text8", " anarchism originated as a term of abuse")
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


def test_fetch_text8_downloads_once(tmp_path, text8_zip):
    src, sha = text8_zip
    cache = tmp_path / "cache"
    path = fetch_text8(src.as_uri(), sha, cache)
    assert path == cache / "text8.zip" and path.read_bytes() == src.read_bytes()
    assert read_text8(path) == " anarchism originated as a term of abuse"
    src.unlink()  # a second call must not touch the network
    assert fetch_text8(src.as_uri(), sha, cache) == path
    assert [p.name for p in cache.iterdir()] == ["text8.zip"]  # no temporary files left


def test_fetch_text8_bad_checksum_leaves_nothing(tmp_path, text8_zip):
    src, _ = text8_zip
    cache = tmp_path / "cache"
    with pytest.raises(EdgeRNNError, match="corrupt"):
        fetch_text8(src.as_uri(), "0" * 64, cache)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_fetch_text8_corrupt_cache_is_removed(tmp_path, text8_zip):
    src, sha = text8_zip
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "text8.zip").write_bytes(b"truncated")
    with pytest.raises(EdgeRNNError, match="corrupt.*removed"):
        fetch_text8(src.as_uri(), sha, cache)
    assert not (cache / "text8.zip").exists()
    assert fetch_text8(src.as_uri(), sha, cache).exists()  # the next call downloads afresh


def test_fetch_text8_network_failure(tmp_path):
    with pytest.raises(EdgeRNNError, match="could not download text8 .*--corpus demo"):
        fetch_text8((tmp_path / "missing.zip").as_uri(), "0" * 64, tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*"))


def test_read_text8_rejects_other_zips(tmp_path):
    bad = tmp_path / "x.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("other", "x")
    with pytest.raises(EdgeRNNError, match="not a text8 zip"):
        read_text8(bad)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_RNN_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("EDGE_RNN_CACHE")
    assert data.cache_dir() == tmp_path / "xdg" / "edge-rnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "edge-rnn"


def test_load_corpus_text8_uses_the_cache(tmp_path, text8_zip, monkeypatch):
    src, sha = text8_zip
    monkeypatch.setattr(data, "TEXT8_URL", src.as_uri())
    monkeypatch.setattr(data, "TEXT8_SHA256", sha)
    monkeypatch.setenv("EDGE_RNN_CACHE", str(tmp_path / "cache"))
    assert load_corpus("text8") == "anarchism originated as a term of abuse"
    assert (tmp_path / "cache" / "text8.zip").exists()


def test_load_corpus(tmp_path, demo):
    assert load_corpus("demo") == demo
    good = tmp_path / "good.txt"
    good.write_text("Hello, Wörld!\n", encoding="utf-8")
    assert load_corpus(str(good)) == "hello w rld"
    with pytest.raises(EdgeRNNError, match="not found"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(EdgeRNNError, match="is a directory"):
        load_corpus(str(tmp_path))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"abc caf\xe9 ok")
    with pytest.raises(EdgeRNNError, match="not valid UTF-8 .*byte offset 7"):
        load_corpus(str(bad))
    empty = tmp_path / "digits.txt"
    empty.write_text("123 456 -- !!")
    with pytest.raises(EdgeRNNError, match=r"no usable characters \(a-z\) in .*digits.txt"):
        load_corpus(str(empty))
