import sys
from pathlib import Path

import pytest

# tests import the NumPy references (tests/reference.py) as a plain module
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    """A small demo corpus written to disk: also exercises the plain-text-file corpus path."""
    from edge_rnn.data import demo_corpus

    path = tmp_path_factory.mktemp("corpus") / "demo.txt"
    path.write_text(demo_corpus(n_sentences=3000, seed=1))
    return str(path)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus):
    """The tiny preset trained briefly on the demo corpus: (run dir, final validation metrics)."""
    from edge_rnn.model import load_preset
    from edge_rnn.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run") / "tiny"
    config = TrainConfig(corpus=corpus, steps=150, batch_size=16, lr=1e-2, eval_every=75, seed=0)
    final = train(load_preset("tiny"), config, run)
    return run, final
