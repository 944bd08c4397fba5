"""The training loop: Adam, a compiled step, periodic validation, atomic checkpoints, resume.

A run directory after training holds (see ``edge_rnn.model``) ``config.json``, ``weights.safetensors``,
``vocab.json`` and ``metrics.jsonl``, plus what resuming needs: ``train.json`` (these settings) and
``checkpoint/`` (weights, optimizer state and the step reached, replaced as a whole).

Determinism: the data order of step ``s`` is a pure function of ``(seed, s)`` (one seeded
permutation per epoch), and the model is initialised from ``seed``; so a run resumed from its
checkpoint sees the same batches, in the same order, as an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from edge_rnn import model as modeling
from edge_rnn import schedule
from edge_rnn.data import Dataset, Splits, load_corpus, make_splits
from edge_rnn.evaluate import evaluate
from edge_rnn.io import EdgeRNNError, atomic_dir, atomic_write_text
from edge_rnn.model import ModelConfig, RNNModel

CHECKPOINT = "checkpoint"
OPTIMIZER, STEP = "optimizer.safetensors", "step.json"


@dataclass
class TrainConfig:
    corpus: str = "demo"  # "demo", "text8" or a path to a UTF-8 text file
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    clip: float | None = None  # max global gradient norm; None = no clipping (the article's)
    eval_every: int = 250
    eval_batches: int = 20  # validation batches per periodic evaluation (the final one uses all)
    max_len: int = 200
    seed: int = 0
    autodiff: bool = False  # use MLX autodiff instead of the cells' hand-written backward
    minutes: float | None = None  # stop early after this much training time (a fixed budget)
    schedule: str = "cosine"  # edge_rnn.schedule: warm-up, then cosine decay to the end of the budget
    warmup: int | None = None  # warm-up steps; None: 5 % of steps, at most 100
    adam_bias_correction: bool = True  # MLX's Adam defaults to False: up to ~6x the lr early on

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def batch_at(data: Dataset, step: int, batch_size: int, seed: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The training batch of ``step``: epoch ``e`` uses permutation ``rng(seed + e)``.

    Batches are padded to ``max_len`` so every step has one shape and compiles once.
    """
    per_epoch = max(len(data) // batch_size, 1)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(len(data))
    ids, targets = data.batch(order[k * batch_size : (k + 1) * batch_size])
    pad = max_len - ids.shape[1]
    return np.pad(ids, ((0, 0), (0, pad))), np.pad(targets, ((0, 0), (0, pad)))


def make_step(model: RNNModel, optimizer: optim.Optimizer, clip: float | None) -> Callable:
    """One compiled update: loss, gradients (clipped if asked), Adam."""
    loss_and_grad = nn.value_and_grad(model, model.loss)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(ids, targets):
        (loss, (n, hits)), grads = loss_and_grad(ids, targets)
        if clip is not None:
            grads, _ = optim.clip_grad_norm(grads, clip)
        optimizer.update(model, grads)
        return loss, n, hits

    return step


def make_optimizer(config: TrainConfig) -> optim.Optimizer:
    """Adam as PyTorch and the Adam paper define it (bias-corrected), at the schedule's first rate.

    The schedule's rate is set before every step by ``train``; see ``edge_rnn.schedule``.
    """
    return optim.Adam(learning_rate=schedule.learning_rate(config, 1),
                      bias_correction=config.adam_bias_correction)


def _log(run_dir: Path, record: dict) -> None:
    with open(run_dir / modeling.METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def save_checkpoint(run_dir: Path, model: RNNModel, optimizer: optim.Optimizer, step: int, splits: Splits) -> None:
    """Save the model where ``eval``/``export`` look, and the resume set as one folder.

    ``checkpoint/`` (weights, optimizer state, step) is built aside and renamed into place, so a
    crash at any moment leaves a complete older or newer checkpoint, never a mix of the two.
    """
    modeling.save(model, run_dir, splits.vocab)
    with atomic_dir(run_dir / CHECKPOINT, force=True) as tmp:
        mx.save_safetensors(str(tmp / modeling.WEIGHTS), dict(tree_flatten(model.parameters())))
        mx.save_safetensors(str(tmp / OPTIMIZER), dict(tree_flatten(optimizer.state)))
        (tmp / STEP).write_text(json.dumps({"step": step}))


def load_checkpoint(run_dir: Path, model: RNNModel, optimizer: optim.Optimizer) -> int:
    """Restore weights and optimizer state from ``checkpoint/``; return the step reached."""
    ckpt = run_dir / CHECKPOINT
    try:
        model.load_weights(str(ckpt / modeling.WEIGHTS), strict=True)
        optimizer.state = tree_unflatten(list(mx.load(str(ckpt / OPTIMIZER)).items()))
        return json.loads((ckpt / STEP).read_text())["step"]
    except Exception as err:
        raise EdgeRNNError(f"{ckpt} is damaged: {err}") from None


def prepare(model_config: ModelConfig, config: TrainConfig, run_dir: Path, resume: bool):
    """Build (or restore) the data, model, optimizer and starting step of a run."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / CHECKPOINT / STEP).is_file():
            raise EdgeRNNError(f"nothing to resume in {run_dir} (no {CHECKPOINT})")
        config = TrainConfig.from_dict({**json.loads((run_dir / modeling.TRAIN).read_text()), "steps": config.steps})
        model_config = modeling.load_config(run_dir)
    elif (run_dir / modeling.CONFIG).exists():
        raise EdgeRNNError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")

    text = load_corpus(config.corpus)
    splits = make_splits(text, model_config.task, model_config.vocab_size, config.max_len, config.seed)
    if splits.vocab is not None and len(splits.vocab) - 2 != model_config.vocab_size:
        # a small corpus has fewer distinct words than asked for: the head follows the data
        model_config = ModelConfig.from_dict({**asdict(model_config), "vocab_size": len(splits.vocab) - 2})

    mx.random.seed(config.seed)
    optimizer = make_optimizer(config)
    if resume:
        model, vocab = modeling.load(run_dir)
        if vocab is not None and splits.vocab is not None and vocab.words != splits.vocab.words:
            raise EdgeRNNError(f"{run_dir}: the corpus no longer gives the run's vocabulary; cannot resume")
        optimizer.init(model.trainable_parameters())
        start = load_checkpoint(run_dir, model, optimizer)
    else:
        model = RNNModel(model_config)
        optimizer.init(model.trainable_parameters())
        start = 0
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / modeling.TRAIN, json.dumps(asdict(config), indent=2))
    for cell in model.layers:
        cell.manual_backward = not config.autodiff
    mx.eval(model.parameters(), optimizer.state)
    return model, optimizer, splits, config, start


class Window:
    """Running training statistics since the last validation (what the progress bar shows)."""

    def __init__(self):
        self.loss = self.tokens = self.hits = self.chars = 0.0
        self.t0 = time.perf_counter()

    def add(self, loss: mx.array, n: mx.array, hits: mx.array, ids: np.ndarray) -> dict:
        self.loss += float(loss) * float(n)
        self.tokens += float(n)
        self.hits += float(hits)
        self.chars += int((ids != 0).sum())
        return {"loss": self.loss / self.tokens, "acc": self.hits / self.tokens,
                "chars_per_s": self.chars / max(time.perf_counter() - self.t0, 1e-9)}


def train(model_config: ModelConfig, config: TrainConfig, run_dir: Path, resume: bool = False,
          progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train (or resume) a run; returns the final validation metrics.

    Stops after ``config.steps`` steps or ``config.minutes`` of training, whichever comes first.
    ``progress(step, stats)`` is called after every step (the CLI draws its bar with it).
    """
    run_dir = Path(run_dir)
    if mx.default_device() == mx.cpu:
        # MLX's CPU allocator keeps only 32 MB of freed buffers by default, so every step's
        # 100-500 MB logits and gradients came fresh from the OS: seconds per step, measured
        mx.set_cache_limit(4 << 30)
    model, optimizer, splits, config, start = prepare(model_config, config, run_dir, resume)
    if start >= config.steps:
        raise EdgeRNNError(f"{run_dir} already reached step {start}; pass a larger --steps to continue")
    step_fn = make_step(model, optimizer, config.clip)
    started = time.perf_counter()
    deadline = started + 60 * config.minutes if config.minutes else float("inf")
    window, valid = Window(), {}
    for step in range(start + 1, config.steps + 1):
        ids, targets = batch_at(splits.train, step - 1, config.batch_size, config.seed, config.max_len)
        optimizer.learning_rate = schedule.learning_rate(config, step, time.perf_counter() - started)
        loss, n, hits = step_fn(mx.array(ids), mx.array(targets))
        stats = window.add(loss, n, hits, ids)
        if progress:
            progress(step, stats)
        last = step == config.steps or time.perf_counter() > deadline
        if step % config.eval_every == 0 or last:
            _log(run_dir, {"step": step, "split": "train", **stats})
            valid = evaluate(model, splits.valid, config.batch_size, None if last else config.eval_batches)
            _log(run_dir, {"step": step, "split": "valid", **valid})
            save_checkpoint(run_dir, model, optimizer, step, splits)
            window = Window()
            if progress:
                progress(step, {**stats, "valid": valid})
        if last:
            break
    return {**valid, "steps": step, "vocab_size": model.config.vocab_size}
