"""The whole model against the NumPy reference, run-dir round trips, presets."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

import reference as ref
from edge_rnn.io import EdgeRNNError
from edge_rnn.model import Dropout, ModelConfig, RNNModel, load, load_preset, numpy_parameters, preset_names, save
from edge_rnn.vocab import Vocab


def random_model(seed=0, **kw):
    mx.random.seed(seed)
    cfg = ModelConfig(**{"cell": "lstm", "layers": 2, "units": 8, "embed_dim": 5, "vocab_size": 11, **kw})
    model = RNNModel(cfg)
    rng = np.random.default_rng(seed)
    model.update(tree_map(lambda a: mx.array(rng.normal(0, 0.5, a.shape), dtype=mx.float32), model.parameters()))
    return model


IDS = np.array([[1, 21, 9, 6, 1, 4, 2, 21, 0, 0], [1, 3, 15, 3, 1, 13, 2, 5, 6, 1]])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "cifg", "nlstm"])
def test_model_matches_numpy_reference(cell):
    model = random_model(cell=cell, depth=3)
    params = {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(model.parameters())}
    logits, _ = model(mx.array(IDS))
    np.testing.assert_allclose(np.array(logits), ref.model_logits(model.config, params, IDS), atol=1e-5, rtol=1e-5)


def test_bottleneck_head_matches_reference_and_stays_factored_for_export(tmp_path):
    """head_dim: logits = (h P^T) W^T + b against NumPy; exporters get P and W apart (H*D + D*V
    head weights instead of H*V); the config and weights survive a run dir."""
    model = random_model(cell="gru", units=8, head_dim=3)
    params = {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(model.parameters())}
    logits, _ = model(mx.array(IDS))
    np.testing.assert_allclose(np.array(logits), ref.model_logits(model.config, params, IDS), atol=1e-5, rtol=1e-5)
    exported = numpy_parameters(model)
    assert exported["bottleneck.weight"].shape == (3, 8) and exported["head.weight"].shape == (13, 3)
    assert all(exported[k].dtype == np.float32 for k in exported) and exported.keys() == params.keys()
    assert model.num_parameters() - random_model(cell="gru", units=8).num_parameters() == 8 * 3 + 3 * 13 - 8 * 13
    save(model, tmp_path, Vocab.from_counts([f"w{k}" for k in range(11)]))
    loaded, _ = load(tmp_path)
    np.testing.assert_array_equal(np.array(loaded(mx.array(IDS))[0]), np.array(logits))


def test_pad_embeds_to_zero_and_step_matches_sequence():
    model = random_model(cell="gru")
    assert np.all(np.array(model.embed(mx.array([0]))) == 0)
    logits, final = model(mx.array(IDS))
    state = model.initial_state(2)
    for t in range(IDS.shape[1]):
        step_logits, state = model.step(mx.array(IDS[:, t]), state)
        np.testing.assert_allclose(np.array(step_logits), np.array(logits[:, t]), atol=1e-5)
    for (a,), (b,) in zip(state, final):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6)


def test_dropout_masks_are_inverted_per_site_and_split_over_ranks():
    """Kept units are scaled by 1/(1-p), about 1-p of them are kept, each site has its own mask, and
    a rank's rows are exactly the global batch's mask rows (so data-parallel equals one process)."""
    x = mx.ones((8, 50, 40))
    drop = Dropout(0.25, mx.random.key(7), batch=8)
    a, b = np.array(drop(x, 0)), np.array(drop(x, 1))
    np.testing.assert_allclose(np.unique(a), [0, 1 / 0.75], rtol=1e-6)
    assert abs((a > 0).mean() - 0.75) < 0.01 and abs(a.mean() - 1) < 0.02
    assert 0.5 < (a == b).mean() < 0.7  # independent masks agree on ~0.75^2 + 0.25^2 of the units
    np.testing.assert_array_equal(np.array(drop(x, 0)), a)  # a pure function of (key, site)
    rank1 = Dropout(0.25, mx.random.key(7), batch=8, rows=slice(4, 8))
    np.testing.assert_array_equal(np.array(rank1(x[4:], 0)), a[4:])


def test_dropout_touches_training_only_and_never_the_recurrent_state():
    """With dropout the logits change but the state a layer carries is the one the (dropped) input
    gives it; without it the forward is the evaluation forward, bit for bit."""
    model = random_model(cell="gru", layers=1)
    ids = mx.array(IDS)
    clean, _ = model(ids)
    drop = Dropout(0.5, mx.random.key(0), batch=2)
    dropped, (state,) = model(ids, dropout=drop)
    assert not np.allclose(np.array(dropped), np.array(clean))
    x = drop(model.embed(ids), 0)
    h, (want,) = model.layers[0](x)
    np.testing.assert_array_equal(np.array(state[0]), np.array(want))
    np.testing.assert_allclose(np.array(dropped), np.array(model.output(drop(h, 1))), atol=1e-6)
    np.testing.assert_array_equal(np.array(model(ids)[0]), np.array(clean))


def test_loss_masks_pad_and_unk():
    model = random_model(cell="rnn")
    ids = mx.array(IDS[:1])
    targets = np.array([[5, 5, 5, 5, 1, 1, 1, 7, 0, 0]])  # 5 loss tokens, 3 unk, 2 pad
    loss, (n, _) = model.loss(ids, mx.array(targets))
    logits, _ = model(ids)
    logp = np.array(logits[0]) - np.log(np.exp(np.array(logits[0])).sum(-1, keepdims=True))
    keep = [0, 1, 2, 3, 7]
    assert int(n) == 5
    np.testing.assert_allclose(float(loss), -np.mean([logp[t, targets[0, t]] for t in keep]), rtol=1e-5)


def test_article_presets_match_the_papers_parameter_counts():
    counts = {name: RNNModel(load_preset(name)).recurrent_parameters() for name in ("article-lstm", "article-nlstm", "article-gru")}
    assert counts["article-lstm"] == 5_764_800
    assert counts["article-nlstm"] == 5_764_800
    assert counts["article-gru"] == 4_323_600 + 2 * 600  # + the reset-after GRU's recurrent bias b_hn
    head = RNNModel(load_preset("article-gru")).head
    assert head.weight.size + head.bias.size == 9_847_986  # 600 x 16,386 + 16,386


def test_every_preset_builds_and_edge_presets_are_small():
    names = preset_names()
    assert {"tiny", "edge-rnn", "edge-gru", "edge-lstm", "edge-cifg", "edge-nlstm"} <= set(names)
    for name in names:
        n = RNNModel(load_preset(name)).num_parameters()
        if name.startswith("edge-"):
            assert 1_000_000 <= n <= 3_500_000, (name, n)


def test_run_dir_round_trip(tmp_path):
    model = random_model(cell="nlstm", depth=2)
    vocab = Vocab.from_counts([f"w{k}" for k in range(11)])
    save(model, tmp_path, vocab)
    loaded, loaded_vocab = load(tmp_path)
    assert loaded.config == model.config and loaded_vocab.words == vocab.words
    a, _ = model(mx.array(IDS))
    b, _ = loaded(mx.array(IDS))
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary files left behind


def test_bad_run_dirs_give_one_line_errors(tmp_path):
    with pytest.raises(EdgeRNNError, match="not a run directory"):
        load(tmp_path)
    model = random_model()
    save(model, tmp_path, Vocab.from_counts(["a", "b"]))  # 2 words but the model has 11
    with pytest.raises(EdgeRNNError, match="do not belong together"):
        load(tmp_path)
    save(model, tmp_path, Vocab.from_counts([f"w{k}" for k in range(11)]))
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(EdgeRNNError, match="damaged"):
        load(tmp_path)
    weights.unlink()
    with pytest.raises(EdgeRNNError, match="no weights"):
        load(tmp_path)


def test_config_validation():
    with pytest.raises(EdgeRNNError, match="unknown cell"):
        ModelConfig(cell="transformer")
    with pytest.raises(EdgeRNNError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({"cell": "gru", "colour": "red"})
    cfg = ModelConfig(cell="cifg", layers=3)
    assert ModelConfig.from_dict(__import__("json").loads(cfg.to_json())) == cfg
