"""Does the model add to a trigram keyboard? The model and the Kneser-Ney trigram, mixed.

Issue 14 asks an edge model to beat a word trigram by itself; on WikiText-2 in 30 minutes none
does (README, "On WikiText-2"). A keyboard app may ship both, so this asks the next question: is
a mixture better than either, and by how much? At every position the two score the words
consistent with the typed letters (``runtime.WordIndex``; never ``<pad>``/``<unk>``), each
renormalised over those words, since the model's distribution already conditions on the letters
and the trigram's does not, and are mixed linearly::

    score(w) = lam * p_model(w | chars) / Z_model + (1 - lam) * P_KN(w | u v) / Z_KN

ties to the lower id, as every keyboard here. ``lam`` = 1 is the model's keyboard and 0 the
trigram's (``tests/test_hybrid.py``). ``lam`` is chosen by KSR on the first ``--max-words``
words of the validation split, then reported on the test split's, beside both alone.

    python scripts/bench_hybrid.py --run DIR/run    # a run trained by bench_keyboard.py --out DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edge_rnn.baselines import KneserNeyTrigram, training_words
from edge_rnn.data import Dataset, make_splits
from edge_rnn.keyboard import SLOTS, RunKeyboard, first_words, metrics
from edge_rnn.runtime import top_k_stable
from edge_rnn.vocab import SYMBOLS

WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def mixed_suggestions(model: RunKeyboard, trigram: KneserNeyTrigram, data: Dataset,
                      weights: tuple[float, ...] = WEIGHTS, k: int = SLOTS) -> dict[float, np.ndarray]:
    """``{lam: (positions, k) suggested ids}`` for every weight in one pass over ``data``, each
    observation typed into a fresh field (the trigram's history restarts with it, as the model's
    state does)."""
    out = {w: np.full((int(data.lengths.sum()), k), -1, np.int64) for w in weights}
    row = 0
    for rows, chars, log_probs in model.log_probs(data):
        for b, n in enumerate(data.lengths[rows]):
            trigram.reset()
            for t in range(n):
                trigram.type(SYMBOLS[chars[b, t]])
                ids = trigram.candidates(trigram.prefix)  # alphabetical; never <pad>/<unk>
                if len(ids):
                    p_model = np.exp(log_probs[b, t, ids])
                    p_model /= p_model.sum()
                    p_kn = trigram.scores()[ids]  # a copy: normalised in place
                    p_kn /= p_kn.sum()
                    for w in weights:
                        best = ids[top_k_stable(w * p_model + (1 - w) * p_kn, k, ids)]
                        out[w][row, :len(best)] = best
                row += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a run trained on WikiText-2 by bench_keyboard.py")
    ap.add_argument("--max-words", type=int, default=5000, help="words scored on each split")
    ap.add_argument("--stream-words", type=int, default=2000, help="as bench_keyboard.py held them out")
    args = ap.parse_args()

    import bench_keyboard  # beside this script: the same text, split as the run was trained

    _, rest = bench_keyboard.held_out(args.stream_words)
    model = RunKeyboard(args.run)
    splits = make_splits(rest, "autocomplete", model.model.config.vocab_size)
    if splits.vocab.words != model.vocab.words:
        raise SystemExit(f"{args.run} was not trained on this text (its vocabulary differs)")
    trigram = KneserNeyTrigram(splits.vocab, training_words(splits.train))
    results = {}
    for split in ("valid", "test"):
        t0 = time.perf_counter()
        data = first_words(getattr(splits, split), args.max_words)
        results[split] = {w: metrics(data, s) for w, s in mixed_suggestions(model, trigram, data).items()}
        print(f"{split}: {len(data)} observations scored at {len(WEIGHTS)} weights in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)

    best = max(WEIGHTS[1:-1], key=lambda w: results["valid"][w]["ksr"])
    print(f"\nValidation split, first {results['valid'][0.0]['words']:,} words: KSR by weight of the model")
    print("\n| lam | " + " | ".join(f"{w:g}" for w in WEIGHTS) + " |\n|---|" + "---:|" * len(WEIGHTS))
    for key, name in (("ksr", "KSR"), ("top1", "top-1")):
        print(f"| {name} | " + " | ".join(f"{results['valid'][w][key]:.2%}" for w in WEIGHTS) + " |")
    test = results["test"]
    print(f"\nTest split, first {test[0.0]['words']:,} words ({test[0.0]['positions']:,} positions); "
          f"lam = {best:g} (best validation KSR)\n")
    print(bench_keyboard.HEADER)
    for w, name in ((1.0, "model"), (0.0, "KN trigram"), (best, f"model + KN trigram, lam {best:g}")):
        print(bench_keyboard.row(name, test[w]))
    mixed, tri = test[best], test[0.0]
    print(f"\nmixture vs trigram: {100 * (mixed['top1'] - tri['top1']):+.2f} pt top-1, "
          f"{100 * (mixed['ksr'] - tri['ksr']):+.2f} pt KSR")


if __name__ == "__main__":
    main()
