"""How fast a stack learns: the fixes of issue 14 would fail here if reverted.

Measured (2-layer GRU 64 units, embedding 16, demo corpus, batch 16, Adam lr 1e-2 constant, 100
steps, seed 0): valid cross-entropy 1.25 with the current init and bias-corrected Adam, 3.48 with
the old ones (embedding rows of norm 1 and MLX Adam's default without bias correction, whose first
hundred steps are ~3-6x the learning rate). A 2-layer CIFG (same setting): 1.73 with its biases at
0, 2.46 with the old input-gate bias -1 (the LSTM's forget bias +1 carried over to ``f = 1 - i``).
"""

import mlx.core as mx
import pytest

from edge_rnn import schedule
from edge_rnn.data import demo_corpus, make_splits
from edge_rnn.evaluate import evaluate
from edge_rnn.model import ModelConfig, RNNModel
from edge_rnn.train import TrainConfig, batch_at, make_optimizer, make_step


@pytest.fixture(scope="module")
def splits():
    return make_splits(demo_corpus(n_sentences=3000, seed=1), "autocomplete", 400)


def trained_ce(splits, cfg: ModelConfig, config: TrainConfig, prepare=lambda model: None) -> float:
    """Valid cross-entropy after training ``cfg`` the way ``edge_rnn.train`` does (seeded);
    ``prepare`` changes the fresh model's initialisation first."""
    mx.random.seed(0)
    model = RNNModel(cfg)
    prepare(model)
    optimizer = make_optimizer(config)
    optimizer.init(model.trainable_parameters())
    step_fn = make_step(model, optimizer, None)
    for step in range(1, config.steps + 1):
        ids, targets = batch_at(splits.train, step - 1, config.batch_size, config.seed, config.max_len)
        optimizer.learning_rate = schedule.learning_rate(config, step)
        step_fn(mx.array(ids), mx.array(targets))
    return evaluate(model, splits.valid, 64)["ce"]


def valid_ce(splits, old: bool, steps: int = 100) -> float:
    """Train a 2-layer tiny GRU; ``old``: the pre-issue-14 init."""
    cfg = ModelConfig(cell="gru", layers=2, units=64, embed_dim=16, vocab_size=len(splits.vocab) - 2)
    config = TrainConfig(steps=steps, batch_size=16, lr=1e-2, schedule="constant", adam_bias_correction=not old)

    def old_embedding(model):
        if old:
            model.embedding = model.embedding / cfg.embed_dim**0.5
    return trained_ce(splits, cfg, config, old_embedding)


def test_embedding_rows_start_at_unit_variance_per_dimension():
    mx.random.seed(0)
    model = RNNModel(ModelConfig(embed_dim=64))
    var = mx.var(model.embedding).item()
    assert 0.8 < var < 1.2, var  # N(0, 1) like nn.Embedding; was 1/E = 0.016


def test_two_layer_stack_reaches_a_loss_the_old_initialisation_does_not(splits):
    new, old = valid_ce(splits, old=False), valid_ce(splits, old=True)
    assert new < 1.8, (new, old)
    assert old > new + 1.0, (new, old)


def test_compare_learning_trains_edge_rnn_on_the_schedule(splits):
    """scripts/compare_learning.py once left edge-rnn at the first warm-up rate (lr/11) for the
    whole run while PyTorch followed the schedule: the edge-rnn side must set the rate per update."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import compare_learning

    cfg = ModelConfig(cell="gru", layers=1, units=16, embed_dim=8, vocab_size=len(splits.vocab) - 2)
    config = TrainConfig(steps=40, batch_size=4, lr=1e-2, schedule="cosine", warmup=2)
    trainer = compare_learning.EdgeTrainer(cfg, config, "default")
    for step in range(1, 6):
        ids, targets = batch_at(splits.train, step - 1, 4, 0, config.max_len)
        trainer.step(ids, targets)
        assert float(trainer.optimizer.learning_rate) == pytest.approx(schedule.learning_rate(config, step), rel=1e-6)


def cifg_valid_ce(splits, input_bias: float, steps: int = 100) -> float:
    """Train a 2-layer tiny CIFG like ``valid_ce``, its input-gate bias set to ``input_bias``."""
    cfg = ModelConfig(cell="cifg", layers=2, units=64, embed_dim=16, vocab_size=len(splits.vocab) - 2)
    config = TrainConfig(steps=steps, batch_size=16, lr=1e-2, schedule="constant")

    def set_bias(model):
        for cell in model.layers:
            cell._set_bias("i", input_bias)
    return trained_ce(splits, cfg, config, set_bias)


def test_two_layer_cifg_learns_with_its_default_biases_what_the_old_input_bias_does_not(splits):
    mx.random.seed(0)
    assert float(mx.abs(RNNModel(ModelConfig(cell="cifg", layers=2)).layers[1].b).max()) == 0.0
    new, old = cifg_valid_ce(splits, 0.0), cifg_valid_ce(splits, -1.0)
    assert new < 2.0, (new, old)
    assert old > new + 0.4, (new, old)


def test_compare_learning_merges_sides_trained_apart(tmp_path, capsys):
    """``--merge`` joins an edge-only and a PyTorch-only run of the same settings into one table,
    each configuration's rows together; files of different settings are refused."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import compare_learning

    def run(name, ce):
        return {"name": name, "curve": [{"step": s, "ce": ce + 1 / s, "top1_known": 0.5 - 1 / s} for s in (100, 500, 2000)]}

    def write(path, header, name, ce):
        results = [{"cell": c, "layers": 2, "units": 8, "runs": [run(name, ce)]} for c in ("lstm", "rnn")]
        path.write_text(json.dumps({"header": header, "results": results}))
        return path

    edge, torch_ = write(tmp_path / "e.json", "h", "edge-rnn", 2.0), write(tmp_path / "t.json", "h", "pytorch", 2.5)
    compare_learning.main(["--merge", str(edge), str(torch_)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| rnn") or line.startswith("| lstm")]
    assert [r.split(" | ")[:3] for r in rows] == [["| rnn", "2", "edge-rnn"], ["| rnn", "2", "pytorch"],
                                                 ["| lstm", "2", "edge-rnn"], ["| lstm", "2", "pytorch"]]
    assert rows[1].split(" | ")[5] == f"{2.5 + 1 / 2000:.3f}"  # CE @2000 of the PyTorch side
    with pytest.raises(SystemExit, match="different settings"):
        compare_learning.main(["--merge", str(edge), str(write(tmp_path / "x.json", "other", "pytorch", 2.5))])
    # the same settings run on two days merge, the header giving the span of dates
    day1 = write(tmp_path / "d1.json", "x86_64, torch 2.13, 2026-12-03; batch 32", "edge-rnn", 2.0)
    day2 = write(tmp_path / "d2.json", "x86_64, torch 2.13, 2026-12-04; batch 32", "pytorch", 2.5)
    compare_learning.main(["--merge", str(day1), str(day2)])
    assert capsys.readouterr().out.startswith("# x86_64, torch 2.13, 2026-12-03 to 2026-12-04; batch 32\n")
    with pytest.raises(SystemExit, match="different settings"):
        compare_learning.main(["--merge", str(day1), str(write(tmp_path / "d3.json", "x86_64, torch 2.13, 2026-12-04; batch 64", "pytorch", 2.5))])


def test_compare_learning_seed_table(tmp_path, capsys):
    """Files of several seeds: the main table keeps the first seed's runs, and the seed table
    gives edge-rnn minus PyTorch on each seed with its mean and PyTorch's own range over seeds."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import compare_learning

    def write(path, seed, name, top1):
        curve = [{"step": s, "ce": 2.0 - top1, "top1_known": top1} for s in (100, 500)]
        results = [{"cell": "gru", "layers": 1, "units": 8, "runs": [{"name": name, "curve": curve}]}]
        path.write_text(json.dumps({"header": "h", "seed": seed, "results": results}))
        return str(path)

    files = [write(tmp_path / "e0.json", 0, "edge-rnn", 0.50), write(tmp_path / "t0.json", 0, "pytorch", 0.51),
             write(tmp_path / "e1.json", 1, "edge-rnn", 0.55), write(tmp_path / "t1.json", 1, "pytorch", 0.53)]
    compare_learning.main(["--merge", *files, "--checkpoints", "100", "500"])
    out = capsys.readouterr().out
    main_rows = [line for line in out.splitlines() if line.startswith(("| gru | 1 | edge", "| gru | 1 | pytorch"))]
    assert [r.split(" | ")[3] for r in main_rows] == ["1.500", "1.490"]  # seed 0's CE @100 only
    gaps = [line.split(" | ") for line in out.splitlines() if line.startswith("| gru | 1 | 100")]
    assert gaps == [["| gru", "1", "100", "-0.010 / +0.020", "+0.0050", "-0.010 / +0.020", "+0.0050", "0.020 |"]]
