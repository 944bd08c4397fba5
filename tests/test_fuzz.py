"""Property tests (hypothesis) for what reads untrusted text: the normaliser, the dataset
builder and the bundle manifest parser."""

import json
import re
import string
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_rnn.data import encode_autocomplete, normalise
from edge_rnn.export.bundle import read_manifest
from edge_rnn.io import EdgeRNNError
from edge_rnn.vocab import Vocab, decode_chars

NORMALISED = re.compile(r"(?:[a-z]+(?: [a-z]+)*)?")
# text with plenty of ASCII words among arbitrary unicode
WORDY = st.text(alphabet=st.one_of(st.sampled_from(string.ascii_letters + "     \n\t-'.,"), st.characters()),
                max_size=400)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_normalise_gives_single_spaced_lowercase_words(text):
    out = normalise(text)
    assert NORMALISED.fullmatch(out), out
    assert normalise(out) == out  # idempotent


@settings(max_examples=300, deadline=None)
@given(WORDY)
def test_normalise_keeps_every_ascii_letter_in_order(text):
    out = normalise(text)
    if "<unk>" not in text.lower():
        assert out.replace(" ", "") == "".join(c for c in text.lower() if "a" <= c <= "z")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(WORDY, st.integers(min_value=2, max_value=30), st.integers(min_value=0, max_value=8))
def test_dataset_labels_align_with_whole_words(text, max_len, n_vocab):
    words = normalise(text).split()
    kept = [w for w in words if len(w) + 1 <= max_len]
    vocab = Vocab.from_counts(sorted(set(words))[:n_vocab])
    try:
        data = encode_autocomplete(text, vocab, max_len)
    except EdgeRNNError:
        assert not kept  # only when no word can fit
        return
    assert np.all(data.lengths <= max_len) and np.all(data.lengths >= 2)
    seen = []
    for start, length in zip(data.starts, data.lengths):
        chars = data.chars[start:start + length]
        targets = data.targets[start:start + length]
        observation = decode_chars(chars)
        assert observation.startswith(" ") and not observation.endswith(" ")  # whole words only
        obs_words = observation[1:].split(" ")
        expected = np.concatenate([[vocab.id(w)] * (len(w) + 1) for w in obs_words])
        np.testing.assert_array_equal(targets, expected)  # the space maps to the word it precedes
        seen += obs_words
    assert seen == kept  # every fitting word once, in text order, none split across observations


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
                    max_leaves=20)
MANIFESTS = st.fixed_dictionaries({"format_version": st.one_of(st.integers(-2, 3), JSON)},
                                  optional={"files": st.one_of(JSON, st.dictionaries(
                                      st.sampled_from(["model.onnx", "vocab.json", "../x", "/etc/passwd", "", "."]),
                                      st.one_of(JSON, st.fixed_dictionaries({"bytes": JSON, "sha256": JSON})))),
                                      "model": JSON})


@settings(max_examples=300, deadline=None)
@given(st.one_of(MANIFESTS.map(json.dumps), JSON.map(json.dumps), st.text(max_size=50), st.binary(max_size=50).map(
    lambda b: b.decode("latin-1"))))
def test_any_manifest_is_read_or_refused_in_one_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "manifest.json").write_text(text, encoding="utf-8", errors="surrogateescape")
        (Path(tmp) / "vocab.json").write_text("{}")
        try:
            manifest = read_manifest(Path(tmp))
        except EdgeRNNError:
            return
        assert isinstance(manifest, dict) and isinstance(manifest["format_version"], int)
