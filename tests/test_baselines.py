"""The non-neural keyboards: Kneser-Ney probabilities against a hand-computed example, the
prefix filter and tie rule of the runtime, a proper distribution in every context."""

import numpy as np
import pytest

from edge_rnn.baselines import KneserNeyTrigram, PrefixFrequency, discount
from edge_rnn.runtime import Session
from edge_rnn.vocab import Vocab

VOCAB = Vocab.from_counts(["a", "b", "c"])  # ids: <pad> 0, <unk> 1, a 2, b 3, c 4
A, B, C, UNK = 2, 3, 4, 1
# three observations: "a b c", "a b a", "b c"
TRAIN = [np.array([A, B, C]), np.array([A, B, A]), np.array([B, C])]


def test_kneser_ney_matches_the_hand_computed_example():
    """Trigrams, with <s> = s: (s s a) x2, (s a b) x2, (a b c), (a b a), (s s b), (s b c).

    Context (a b): c(ab.) = 2, N1+(ab.) = 2 (c and a).
    Continuation counts of bigrams (distinct words before): (s a) 1, (a b) 1, (b c) 2 (a, s),
    (b a) 1, (s b) 1; for context b: N1+(.b.) = 2 + 1 = 3, N1+(b.) = 2 types.
    Of unigrams (distinct words before): a 2 (s, b), b 2 (a, s), c 1 (b); N1+(..) = 5, 3 types,
    |V| = 4 predictable outputs (<unk>, a, b, c). With every discount 0.5:
      P1(c)     = (1 - .5)/5 + .5 * 3/5 / 4          = 0.1 + 0.075  = 0.175
      P1(<unk>) = 0 + .5 * 3/5 / 4                   = 0.075
      P2(c|b)   = (2 - .5)/3 + .5 * 2/3 * P1(c)      = 0.5 + 0.058333...
      P3(c|a b) = (1 - .5)/2 + .5 * 2/2 * P2(c|b)    = 0.25 + 0.279166... = 0.529166...
    Unseen context (c a) falls back to P2(.|a): context a has only (a b), N1+(.a.) = 1:
      P2(b|a)   = (1 - .5)/1 + .5 * 1/1 * P1(b),  P1(b) = (2 - .5)/5 + 0.075 = 0.375
    """
    kn = KneserNeyTrigram(VOCAB, TRAIN, discounts=(0.5, 0.5, 0.5))
    p1_c = 0.1 + 0.075
    assert kn.p1[C] == pytest.approx(p1_c)
    assert kn.p1[UNK] == pytest.approx(0.075)
    p2_c_b = 1.5 / 3 + 0.5 * 2 / 3 * p1_c
    assert kn.distribution(A, B)[C] == pytest.approx(0.25 + 0.5 * p2_c_b)
    assert kn.distribution(C, A)[B] == pytest.approx(0.5 + 0.5 * 0.375)
    assert kn.distribution(kn.bos, kn.bos)[A] == pytest.approx(  # (s s a) 2 of (s s .) 3
        (2 - 0.5) / 3 + 0.5 * 2 / 3 * ((1 - 0.5) / 2 + 0.5 * 2 / 2 * kn.p1[A]))


def test_discounts_come_from_the_count_of_counts():
    """Trigram counts: four singletons, two doubles -> D3 = 4 / (4 + 2 * 2) = 0.5."""
    kn = KneserNeyTrigram(VOCAB, TRAIN)
    assert kn.d3 == pytest.approx(0.5)
    assert discount(np.array([1, 1, 1, 2, 3])) == pytest.approx(3 / 5)


def test_every_context_is_a_proper_distribution_over_what_can_be_predicted():
    rng = np.random.default_rng(0)
    vocab = Vocab.from_counts([f"w{chr(97 + i)}" for i in range(20)])
    train = [rng.integers(1, len(vocab), rng.integers(1, 12)) for _ in range(200)]
    kn = KneserNeyTrigram(vocab, train)
    for u in [kn.bos, 1, 2, 5, 21]:
        for v in [kn.bos, 1, 3, 21]:
            p = kn.distribution(u, v)
            assert p[0] == 0 and (p[1:] > 0).all()
            assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_suggestions_use_the_prefix_filter_the_history_and_lower_ids_on_ties():
    kn = KneserNeyTrigram(VOCAB, TRAIN, discounts=(0.5, 0.5, 0.5))
    kn.reset()
    kn.type(" a b ")  # history (a, b): c is the most probable next word
    ids, probs = kn.suggestion_ids(3)
    assert ids[0] == C and probs[0] == pytest.approx(kn.distribution(A, B)[C])
    assert UNK not in ids and 0 not in ids
    kn.type("a")  # only 'a' starts with "a"
    assert kn.suggestion_ids(3)[0].tolist() == [A]
    kn.reset()
    assert kn.suggestion_ids(3)[0].tolist() == []  # nothing typed yet, as a Session
    freq = PrefixFrequency(VOCAB, TRAIN)  # a 3, b 3, c 2: a and b tie, a has the lower id
    freq.type(" ")
    assert freq.suggestion_ids(3)[0].tolist() == [A, B, C]
    freq.type("zz")
    assert freq.suggestion_ids(3)[0].tolist() == []
    # ties go to the lower id where the alphabetical order says otherwise: zeta (id 2) before alpha
    zeta_first = Vocab(["<pad>", "<unk>", "zeta", "alpha"])
    freq = PrefixFrequency(zeta_first, [np.array([2, 3])])
    freq.type(" ")
    assert freq.suggestion_ids(2)[0].tolist() == [2, 3]


def test_an_unknown_history_word_is_unk():
    kn = KneserNeyTrigram(VOCAB, [np.array([A, UNK, C])], discounts=(0.5, 0.5, 0.5))
    kn.type(" a qqq ")
    assert kn.history() == (A, UNK)
    assert kn.suggestion_ids(1)[0].tolist() == [C]


def test_the_typing_half_follows_the_session_on_the_same_keystrokes(trained):
    """Finished words and partial word as a Session sees them, whatever is typed."""
    from edge_rnn.runtime import open_session

    run, _ = trained
    session: Session = open_session(run)
    kn = KneserNeyTrigram(VOCAB, TRAIN)
    for chunk in ["The  capital", " of", "--fr", "ance!", " is p"]:
        session.type(chunk)
        kn.type(chunk)
        assert kn.prefix == session.prefix
    assert len(kn.words) == len(session.text.split()) - 1
