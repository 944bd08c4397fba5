"""The training loop: Adam, a compiled step, periodic validation, atomic checkpoints, resume.

A run directory after training holds (see ``edge_rnn.model``) ``config.json``, ``weights.safetensors``,
``vocab.json`` and ``metrics.jsonl``, plus what resuming needs: ``train.json`` (these settings),
``checkpoint/`` (weights, the optimizer's whole state including its step counter, the weight
average when ``ema`` is set, and ``step.json``: the step reached, the data-order position and the
RNG key; replaced as a whole) and
``train.log`` (the progress lines, also when no terminal is watching).

Crash safety: a checkpoint is taken at every validation and every ``checkpoint_minutes`` of
training, and on Ctrl-C (then ``KeyboardInterrupt`` goes on up: the CLI exits 130). A run killed
at any moment (``kill -9``, the OOM killer) and started again with ``resume`` continues from its
last checkpoint, or from step 0 if it had none, and ends bit-identical to an uninterrupted run.

Determinism: the data order of step ``s`` is a pure function of ``(seed, s)`` (one seeded
permutation per epoch, and with ``rechunk`` one cut of the text per epoch), and the model is
initialised from ``seed``; so a run resumed from its checkpoint sees the same batches, in the same
order, as an uninterrupted run. With dropout, each
step splits the run's RNG key in two (the masks' key and the next key), and the checkpoint carries
the key, so a resumed run draws the same masks too.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from edge_rnn import distributed, schedule
from edge_rnn import model as modeling
from edge_rnn.data import Dataset, Splits, load_corpus, make_splits
from edge_rnn.distill import Teacher
from edge_rnn.evaluate import evaluate
from edge_rnn.faults import crash_point
from edge_rnn.io import EdgeRNNError, atomic_dir, atomic_write_text, check_safetensors, recover_dir
from edge_rnn.model import ModelConfig, RNNModel
from edge_rnn.prefix import OBJECTIVES, PrefixRanges

CHECKPOINT = "checkpoint"
OPTIMIZER, STEP, AVERAGE = "optimizer.safetensors", "step.json", "average.safetensors"
CARRY = "carry.safetensors"  # stateful training: the state each batch row carries into the next step
# settings a train.json written before they existed trained without: a resumed old run stays the run it was
BEFORE_THEY_EXISTED = {"weight_decay": 0.0, "ema": 0.0, "rechunk": False, "distill": 0.0, "stateful": False,
                       "label_smoothing": 0.0}
LOG = "train.log"


@dataclass
class TrainConfig:
    corpus: str = "demo"  # "demo", "text8" or a path to a UTF-8 text file
    steps: int = 1000
    batch_size: int = 32  # most observations per second on a 2-core CPU (edge-gru: 26.9 at 32, 24.1 at 64, 22.0 at 128)
    lr: float = 1e-2  # peak of the warm-up + cosine schedule (issue 14: 1e-3 learned 2-3x slower per step)
    clip: float | None = None  # max global gradient norm; None = no clipping (the article's)
    eval_every: int = 250
    eval_batches: int = 20  # validation batches per periodic evaluation (the final one uses all)
    max_len: int = 200
    seed: int = 0
    autodiff: bool = False  # use MLX autodiff instead of the cells' hand-written backward
    minutes: float | None = None  # stop early after this much training time (a fixed budget)
    checkpoint_minutes: float = 5.0  # also checkpoint after this much time since the last one
    log_seconds: float = 30.0  # a progress line in train.log (and on a non-terminal) this often
    exact_vocab: bool = False  # the vocabulary size was asked for explicitly: too few words is an error
    distributed: bool = False  # require mlx.launch's group (it is joined anyway when launched)
    ranks: int = 1  # data-parallel processes; each trains on batch_size // ranks rows of a batch
    schedule: str = "cosine"  # edge_rnn.schedule: warm-up, then cosine decay to the end of the budget
    warmup: int | None = None  # warm-up steps; None: 5 % of steps, at most 100
    adam_bias_correction: bool = True  # MLX's Adam defaults to False: up to ~6x the lr early on
    dropout: float = 0.0  # rate on the non-recurrent connections (model.Dropout); 0: none
    weight_decay: float = 0.2  # decoupled, on matrices only (MatrixAdamW); 0: plain Adam (issue 14: 0.05/0.1/0.2/0.3 measured)
    ema: float = 0.998  # weight average that validation and the saved model use (WeightAverage); 0: the last weights
    rechunk: bool = False  # cut the training text at other word boundaries each epoch (Dataset.rechunked)
    stateful: bool = False  # rows are lanes of the training text, each step its next window, the state carried (stream_at)
    distill: float = 0.0  # weight of the KN trigram teacher in the target at word boundaries (edge_rnn.distill); 0: none
    label_smoothing: float = 0.0  # share of every target spread evenly over the words (RNNModel.smoothing_term); 0: none
    objective: str = "word"  # "word": the article's cross-entropy; "prefix": over the typed prefix's words (edge_rnn.prefix)
    train_fraction: float = 1.0  # train on this share of the training text (data-scaling studies; Dataset.sample_runs)

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise EdgeRNNError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_len < 2:
            raise EdgeRNNError(f"max-len must be >= 2, got {self.max_len}")
        for name in ("lr", "checkpoint_minutes", "log_seconds"):
            if not getattr(self, name) > 0:
                raise EdgeRNNError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.weight_decay < 1:
            raise EdgeRNNError(f"weight-decay must be in [0, 1), got {self.weight_decay}")
        if not 0 <= self.ema < 1:
            raise EdgeRNNError(f"ema must be in [0, 1), got {self.ema}")
        if not 0 <= self.dropout < 1:
            raise EdgeRNNError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.distill <= 1:
            raise EdgeRNNError(f"distill must be in [0, 1], got {self.distill}")
        if not 0 < self.train_fraction <= 1:
            raise EdgeRNNError(f"train-fraction must be in (0, 1], got {self.train_fraction}")
        if not 0 <= self.label_smoothing < 1:
            raise EdgeRNNError(f"label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.distill + self.label_smoothing > 1:
            raise EdgeRNNError("distill + label-smoothing must be <= 1 (the shares of a word boundary's target)")
        if self.label_smoothing and self.objective != "word":
            raise EdgeRNNError("label-smoothing needs the word objective (its uniform share is over all words)")
        if self.stateful and (self.rechunk or self.distill):
            raise EdgeRNNError(f"stateful and {'rechunk' if self.rechunk else 'distill'} exclude each other "
                               "(stateful windows ignore observations)")
        if self.distill and self.objective != "word":
            raise EdgeRNNError("distill needs the word objective (the teacher's words are head rows)")
        if self.objective not in OBJECTIVES:
            raise EdgeRNNError(f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if self.schedule not in schedule.SCHEDULES:
            raise EdgeRNNError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(schedule.SCHEDULES)}")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def data_position(data: Dataset, step: int, batch_size: int) -> tuple[int, int]:
    """(epoch, batch within the epoch) of the 0-based ``step``."""
    return divmod(step, max(len(data) // batch_size, 1))


def rows_at(data: Dataset, step: int, batch_size: int, seed: int, max_len: int,
            rechunk: bool = False) -> tuple[Dataset, np.ndarray]:
    """The observations of ``step``'s batch: ``(view, idx)``, ``view`` being ``data`` or its cut.

    Epoch ``e`` uses permutation ``rng(seed + e)``. With ``rechunk`` epoch ``e`` draws from
    ``data.rechunked(seed + e)``, the text cut at other word boundaries; an epoch keeps
    ``len(data) // batch_size`` batches, so the few extra observations of a cut wait for another
    epoch.
    """
    epoch, k = data_position(data, step, batch_size)
    view = data.rechunked(seed + epoch, max_len) if rechunk else data
    order = np.random.default_rng(seed + epoch).permutation(len(view))
    return view, order[k * batch_size : (k + 1) * batch_size]


def batch_at(data: Dataset, step: int, batch_size: int, seed: int, max_len: int,
             rechunk: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The training batch of ``step`` (``rows_at``), padded to ``max_len`` so every step has one
    shape and compiles once."""
    view, idx = rows_at(data, step, batch_size, seed, max_len, rechunk)
    ids, targets = view.batch(idx)
    pad = max_len - ids.shape[1]
    return np.pad(ids, ((0, 0), (0, pad))), np.pad(targets, ((0, 0), (0, pad)))


def teacher_at(teacher: Teacher, data: Dataset, step: int, batch_size: int, seed: int, max_len: int,
               rechunk: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trigram teacher of ``step``'s batch (``Teacher.batch``), row for row with ``batch_at``."""
    view, idx = rows_at(data, step, batch_size, seed, max_len, rechunk)
    return teacher.batch(view, idx, max_len)


def stream_at(data: Dataset, step: int, batch_size: int, seed: int,
              max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stateful training's batch of ``step``: ``(ids, targets, fresh)``, ``(B, max_len)`` and
    ``(B,)``.

    The training text (its observations end to end, as they follow in the corpus but for the
    ones held out) is cut into ``batch_size`` lanes, and row ``b`` of consecutive steps reads
    consecutive ``max_len``-character windows of lane ``b``, so the state a row ends a step with
    is the state its next window starts from (truncated BPTT). Epoch ``e`` shifts every window by
    ``rng(seed + e)``'s offset below ``max_len``, so words meet other window edges; ``fresh``
    marks the rows whose state starts at zero: every row in an epoch's first step.
    """
    lane = len(data.chars) // batch_size
    per_epoch = lane // max_len - 1
    if per_epoch < 1:
        raise EdgeRNNError(f"stateful training needs at least {2 * max_len * batch_size:,} training characters "
                           f"({2 * max_len} per row of a batch of {batch_size}); this corpus has {len(data.chars):,}")
    epoch, k = divmod(step, per_epoch)
    offset = int(np.random.default_rng(seed + epoch).integers(max_len))
    pos = (np.arange(batch_size) * lane + offset + k * max_len)[:, None] + np.arange(max_len)
    fresh = np.full(batch_size, k == 0)
    return data.chars[pos].astype(np.int32), data.targets[pos].astype(np.int32), fresh


def make_step(model: RNNModel, optimizer: optim.Optimizer, clip: float | None,
              ranks: distributed.Ranks = distributed.Ranks(None), dropout: float = 0.0,
              batch_size: int | None = None, order: np.ndarray | None = None, distill: float = 0.0,
              stateful: bool = False, smoothing: float = 0.0) -> Callable:
    """One compiled update: loss, gradients (averaged over ranks, clipped if asked), Adam.

    ``step(ids, targets)``; with ``dropout`` > 0, ``step(ids, targets, key)``: the key of this
    step's masks drawn over the global batch of ``batch_size`` rows (this rank's rows of it).
    With the prefix objective's ``order`` (``PrefixRanges.order``), ``step(ids, targets, key,
    ranges)`` with targets as positions in that order (``PrefixRanges.batch``). With ``distill``
    > 0, ``step(ids, targets, key, ranges, teacher)``: ``teacher_at``'s arrays, weighted ``distill``.
    ``stateful``: ``step(..., carry)`` starts from the state ``carry`` and returns the final one
    after ``(loss, n, hits)``. ``smoothing``: label smoothing (``RNNModel.smoothing_term``).
    """
    loss_and_grad = nn.value_and_grad(model, model.stream_loss if stateful else model.loss)
    state = [model.state, optimizer.state]
    rows = distributed.shard(batch_size, ranks) if dropout else None
    head_order = None if order is None else mx.array(order)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(ids, targets, key=None, ranges=None, teacher=None, carry=None):
        masks = modeling.Dropout(dropout, key, batch_size, rows) if dropout else None
        prefix = None if head_order is None else (head_order, ranges)
        teacher = None if teacher is None else (distill, *teacher)
        if stateful:
            (loss, (n, hits, carry)), grads = loss_and_grad(ids, targets, carry, masks, prefix, teacher, smoothing)
        else:
            (loss, (n, hits)), grads = loss_and_grad(ids, targets, masks, prefix, teacher, smoothing)
        loss, n, hits, grads = distributed.reduce_step(loss, n, hits, grads, ranks)
        if clip is not None:
            grads, _ = optim.clip_grad_norm(grads, clip)
        optimizer.update(model, grads)
        return (loss, n, hits, carry) if stateful else (loss, n, hits)

    return step


class MatrixAdamW(optim.AdamW):
    """MLX's AdamW (decoupled weight decay, Loshchilov & Hutter 2019) on matrices only.

    ``w <- w (1 - lr wd)`` before Adam's step for parameters of rank >= 2 (nanoGPT's rule): the
    embedding, the cells' input and recurrent weights, the bottleneck and the head. Biases take
    plain Adam's step, so a forget gate's bias keeps the value its init chose; ``optim.AdamW``
    alone would decay every parameter.
    """

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        if parameter.ndim >= 2:
            return super().apply_single(gradient, parameter, state)
        return optim.Adam.apply_single(self, gradient, parameter, state)


def make_optimizer(config: TrainConfig) -> optim.Optimizer:
    """Adam as PyTorch and the Adam paper define it (bias-corrected), at the schedule's first rate;
    with ``weight_decay``, ``MatrixAdamW``.

    The schedule's rate is set before every step by ``train``; see ``edge_rnn.schedule``.
    """
    lr = schedule.learning_rate(config, 1)
    if config.weight_decay:
        return MatrixAdamW(learning_rate=lr, weight_decay=config.weight_decay,
                           bias_correction=config.adam_bias_correction)
    return optim.Adam(learning_rate=lr, bias_correction=config.adam_bias_correction)


class WeightAverage:
    """An exponential moving average of the weights (Polyak averaging), for ``config.ema`` > 0.

    Training steps the raw weights; validation, the saved model and so every export use the
    average, which smooths the last steps' noise where a small corpus is being overfit. The decay
    of update ``t`` is ``min(ema, (1 + t) / (10 + t))`` (TensorFlow's ``ExponentialMovingAverage``
    with ``num_updates``), so the random initial weights fade within the first steps. That bound
    stays below 0.998 until ``t`` ~ 4,500: in runs of a few thousand steps the average spans about
    the last ``t / 9`` steps, a tenth of the run so far whatever its length.
    """

    def __init__(self, model: RNNModel, decay: float):
        self.decay = decay
        self.params = tree_map(mx.array, model.parameters())  # a copy: the model's arrays get replaced

    @staticmethod
    @mx.compile
    def _blend(average: dict, params: dict, decay: mx.array) -> dict:
        return tree_map(lambda a, p: a + (1 - decay) * (p - a), average, params)

    def update(self, model: RNNModel, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        self.params = self._blend(self.params, model.parameters(), mx.array(decay, dtype=mx.float32))
        mx.eval(self.params)


@contextmanager
def averaged(model: RNNModel, average: WeightAverage | None):
    """The model holds the average inside the block and its raw weights again after it (no
    change when the run keeps no average)."""
    if average is None:
        yield model
        return
    raw = model.parameters()
    model.update(average.params)
    try:
        yield model
    finally:
        model.update(raw)


def _log(run_dir: Path, record: dict) -> None:
    with open(run_dir / modeling.METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def save_checkpoint(run_dir: Path, model: RNNModel, optimizer: optim.Optimizer, step: int, splits: Splits,
                    config: TrainConfig, key: mx.array, average: WeightAverage | None = None,
                    carry: list | None = None) -> None:
    """Save the model where ``eval``/``export`` look (the weight average if the run keeps one),
    then the resume set as one folder.

    ``checkpoint/`` (raw weights, their average, optimizer state, step, data position, RNG key,
    and a stateful run's carried state) is
    built aside and renamed into place, so a crash at any moment leaves a complete older or newer checkpoint, never
    a mix of the two; it is the truth a resume starts from (the model files may be one save newer:
    a resume replaces their weights with the checkpoint's).
    """
    mx.eval(model.parameters(), optimizer.state, average.params if average else [])
    with averaged(model, average):
        modeling.save(model, run_dir, splits.vocab)
    epoch, batch = data_position(splits.train, step, config.batch_size)
    position = {"step": step, "epoch": epoch, "batch_in_epoch": batch, "order_seed": config.seed + epoch,
                "key": np.array(key).tolist()}
    trees = {modeling.WEIGHTS: model.parameters(), OPTIMIZER: optimizer.state}
    if average is not None:
        trees[AVERAGE] = average.params
    if carry is not None:
        trees[CARRY] = carry
    with atomic_dir(run_dir / CHECKPOINT, force=True) as tmp:
        for name, tree in trees.items():
            mx.save_safetensors(str(tmp / name), dict(tree_flatten(tree)))
            check_safetensors(tmp / name)
        (tmp / STEP).write_text(json.dumps(position))
        crash_point("checkpoint")


def load_checkpoint(run_dir: Path, model: RNNModel, optimizer: optim.Optimizer, splits: Splits,
                    config: TrainConfig, average: WeightAverage | None = None) -> tuple[int, mx.array]:
    """Restore weights, their average and the optimizer state from ``checkpoint/``; return the
    step reached and the key."""
    ckpt = run_dir / CHECKPOINT
    try:
        model.load_weights(str(ckpt / modeling.WEIGHTS), strict=True)
        optimizer.state = tree_unflatten(list(mx.load(str(ckpt / OPTIMIZER)).items()))
        if average is not None:
            average.params = tree_unflatten(list(mx.load(str(ckpt / AVERAGE)).items()))
        position = json.loads((ckpt / STEP).read_text())
        step, key = int(position["step"]), mx.array(position["key"], dtype=mx.uint32)
    except Exception as err:
        raise EdgeRNNError(f"{ckpt} is damaged ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                           "delete it to restart the run from step 0") from None
    if [position["epoch"], position["batch_in_epoch"]] != list(data_position(splits.train, step, config.batch_size)):
        raise EdgeRNNError(f"{run_dir}: the corpus no longer gives the run's data order; cannot resume")
    return step, key


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / modeling.METRICS
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(ln) for ln in lines if ln.strip() and _step_of(ln) < 1 << 62]


def _forget_after(run_dir: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint a resume starts from (they will be logged again)."""
    path = run_dir / modeling.METRICS
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if _step_of(ln) <= step]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a line cut by a crash mid-write: drop it


def prepare(model_config: ModelConfig, config: TrainConfig, run_dir: Path, resume: bool,
            ranks: distributed.Ranks = distributed.Ranks(None)):
    """Build (or restore) the data, model, optimizer, weight average (None without ``ema``),
    starting step and RNG key of a run."""
    if config.objective == "prefix" and model_config.task != "autocomplete":  # before anything is written
        raise EdgeRNNError("the prefix objective needs an autocomplete model (its outputs are words)")
    if config.rechunk and model_config.task != "autocomplete":
        raise EdgeRNNError("rechunk needs an autocomplete model (next-symbol targets depend on the cut)")
    if config.distill and model_config.task != "autocomplete":
        raise EdgeRNNError("distill needs an autocomplete model (its teacher is a word trigram)")
    run_dir = Path(run_dir)
    if ranks.main:
        recover_dir(run_dir / CHECKPOINT)
    has_checkpoint = (run_dir / CHECKPOINT / STEP).is_file()
    if resume and (run_dir / modeling.TRAIN).is_file():
        try:
            saved = json.loads((run_dir / modeling.TRAIN).read_text())
        except ValueError:
            raise EdgeRNNError(f"{run_dir / modeling.TRAIN} is damaged; cannot resume") from None
        config = TrainConfig.from_dict({**BEFORE_THEY_EXISTED, **saved, "steps": config.steps})
        if config.ranks != ranks.size:
            raise EdgeRNNError(f"{run_dir} was trained on {config.ranks} rank(s) and this is {ranks.size}: "
                               f"resume it with the same number (mlx.launch -n {config.ranks})")
    if resume and has_checkpoint:
        model_config = modeling.load_config(run_dir)
    elif resume:
        pass  # killed before its first checkpoint: nothing to continue, so start again from step 0
    elif (run_dir / modeling.CONFIG).exists() or has_checkpoint:
        raise EdgeRNNError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")

    text = load_corpus(config.corpus)
    splits = make_splits(text, model_config.task, model_config.vocab_size, config.max_len, config.seed)
    splits = splits.train_share(config.train_fraction, config.seed)
    if config.exact_vocab and splits.vocab is not None and len(splits.vocab) - 2 < model_config.vocab_size:
        raise EdgeRNNError(f"--vocab-size {model_config.vocab_size} is more than the {len(splits.vocab) - 2} "
                           "distinct words of the training split; ask for fewer or use a larger corpus")
    if splits.vocab is not None and len(splits.vocab) - 2 != model_config.vocab_size:
        # a small corpus has fewer distinct words than asked for: the head follows the data
        model_config = ModelConfig.from_dict({**asdict(model_config), "vocab_size": len(splits.vocab) - 2})

    mx.random.seed(config.seed)
    optimizer = make_optimizer(config)
    key = mx.random.key(config.seed)  # the run's own RNG stream, carried by the checkpoint
    if resume and has_checkpoint:
        model, vocab = modeling.load(run_dir)
        if vocab is not None and splits.vocab is not None and vocab.words != splits.vocab.words:
            raise EdgeRNNError(f"{run_dir}: the corpus no longer gives the run's vocabulary; cannot resume")
        optimizer.init(model.trainable_parameters())
        average = WeightAverage(model, config.ema) if config.ema else None
        start, key = load_checkpoint(run_dir, model, optimizer, splits, config, average)
        _forget_after(run_dir, start)
    else:
        model = RNNModel(model_config)
        optimizer.init(model.trainable_parameters())
        average = WeightAverage(model, config.ema) if config.ema else None
        start = 0
        if ranks.main:  # the others write nothing
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise EdgeRNNError(f"cannot create run directory {run_dir}: {err.strerror}") from None
            (run_dir / modeling.METRICS).unlink(missing_ok=True)  # left by a run killed before its checkpoint
            atomic_write_text(run_dir / modeling.TRAIN, json.dumps(asdict(config), indent=2))
    for cell in model.layers:
        cell.manual_backward = not config.autodiff
    mx.eval(model.parameters(), optimizer.state, average.params if average else [])
    return model, optimizer, splits, config, average, start, key


class ProgressLog:
    """Plain progress lines (step, loss, accuracy, chars/s, ETA) to ``train.log`` every
    ``every`` seconds and at each validation, and to ``echo`` too (the CLI passes ``print`` when
    stdout is not a terminal: nohup, CI, a cluster job)."""

    def __init__(self, run_dir: Path, start: int, total: int, every: float, echo: Callable[[str], None] | None,
                 minutes: float | None = None):
        self.path, self.start, self.total, self.every, self.echo = run_dir / LOG, start, total, every, echo
        self.budget_s = 60.0 * minutes if minutes else None  # a --minutes run ends at its budget
        self.t0 = self.last = time.perf_counter()

    def write(self, line: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}"
        with open(self.path, "a") as f:
            f.write(stamped + "\n")
        if self.echo:
            self.echo(stamped)

    def step(self, step: int, stats: dict, force: bool = False) -> None:
        now = time.perf_counter()
        if not (force or step == self.start + 1 or now - self.last >= self.every):
            return
        self.last = now
        per_step = (now - self.t0) / max(step - self.start, 1)
        eta = per_step * (self.total - step)
        if self.budget_s is not None:
            eta = min(eta, max(self.budget_s - (now - self.t0), 0.0))
        self.write(f"step {step}/{self.total}  loss {stats['loss']:.4f}  acc {stats['acc']:.1%}  "
                   f"{stats['chars_per_s']:,.0f} chars/s  elapsed {_hms(now - self.t0)}  eta {_hms(eta)}")

    def valid(self, step: int, valid: dict) -> None:
        extra = f"bpc {valid['bpc']:.3f}" if "bpc" in valid else f"top-3 {valid['top3']:.1%}"
        self.write(f"step {step}/{self.total}  valid ce {valid['ce']:.4f}  top-1 {valid['top1']:.1%}  {extra}")


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Interrupt:
    """Turn the first Ctrl-C (SIGINT) into a flag the loop checks after each step, so the step in
    flight finishes and a checkpoint is taken; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self) -> "Interrupt":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


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
          progress: Callable[[int, dict], None] | None = None, echo: Callable[[str], None] | None = None) -> dict:
    """Train (or resume) a run; returns the final validation metrics.

    Stops after ``config.steps`` steps or ``config.minutes`` of training, whichever comes first.
    ``progress(step, stats)`` is called after every step (the CLI draws its bar with it);
    ``echo(line)`` gets each line written to ``train.log``. Started by ``mlx.launch``, every rank
    runs this with the same arguments; rank 0 alone writes and reports (``edge_rnn.distributed``).
    """
    run_dir = Path(run_dir)
    if mx.default_device() == mx.cpu:
        # MLX's CPU allocator keeps only 32 MB of freed buffers by default, so every step's
        # 100-500 MB logits and gradients came fresh from the OS: seconds per step, measured
        mx.set_cache_limit(4 << 30)
    ranks = distributed.init(config.distributed)
    if config.stateful and ranks.size > 1:
        raise EdgeRNNError("stateful training runs on one process (its carried state is not sharded)")
    rows = distributed.shard(config.batch_size, ranks)
    config = TrainConfig.from_dict({**asdict(config), "ranks": ranks.size})
    model, optimizer, splits, config, average, start, key = prepare(model_config, config, run_dir, resume, ranks)
    if start == config.steps:  # killed after its last checkpoint, while exiting: nothing to redo
        valid = [r for r in _records(run_dir) if r.get("split") == "valid" and r["step"] == start]
        return {**(valid[-1] if valid else {}), "steps": start, "vocab_size": model.config.vocab_size}
    if start > config.steps:
        raise EdgeRNNError(f"{run_dir} already reached step {start}; pass a larger --steps to continue")
    if not ranks.main:
        progress = echo = None
    prefix = PrefixRanges.from_vocab(splits.vocab) if config.objective == "prefix" else None
    teacher = Teacher.build(splits.train, splits.vocab) if config.distill else None
    step_fn = make_step(model, optimizer, config.clip, ranks, config.dropout, config.batch_size,
                        None if prefix is None else prefix.order, config.distill, config.stateful,
                        config.label_smoothing)
    try:
        return _loop(model, optimizer, average, splits, config, run_dir, start, key, step_fn, ranks, rows, progress,
                     echo, prefix, teacher)
    except RuntimeError as err:
        if distributed.peer_lost(err):
            raise distributed.PeerLost(ranks, err) from None
        raise


def _loop(model, optimizer, average, splits, config, run_dir, start, key, step_fn, ranks, rows, progress, echo,
          prefix: PrefixRanges | None, teacher: Teacher | None) -> dict:
    """Steps, validation and checkpoints (rank 0 writes) until the steps or the minutes run out."""
    started = time.perf_counter()
    log = (ProgressLog(run_dir, start, config.steps, config.log_seconds, echo, config.minutes)
           if ranks.main else None)
    if log:
        log.write(f"{'resuming from step ' + str(start) if start else 'starting'}: {config.steps} steps, "
                  f"{len(splits.train):,} training sequences"
                  + (f", {ranks.size} ranks x {config.batch_size // ranks.size} rows" if ranks.size > 1 else "")
                  + (f", trigram teacher x {config.distill:g} ({len(teacher.words):,} histories, its top "
                     f"{teacher.words.shape[1]} words {teacher.mass:.0%} of its probability, built in "
                     f"{teacher.seconds:.1f} s)" if teacher else ""))
    crash_point("start")
    carry = _carry(model, run_dir, start, config) if config.stateful else None
    window, valid, saved_at = Window(), {}, time.perf_counter()
    with Interrupt() as interrupt:
        for step in range(start + 1, config.steps + 1):
            if config.stateful:
                ids, targets, fresh = stream_at(splits.train, step - 1, config.batch_size, config.seed, config.max_len)
                if fresh.all():  # an epoch's first step: every lane starts again
                    carry = model.initial_state(config.batch_size)
            else:
                ids, targets = batch_at(splits.train, step - 1, config.batch_size, config.seed, config.max_len,
                                        config.rechunk)
            elapsed = _elapsed(started, config, ranks)
            optimizer.learning_rate = schedule.learning_rate(config, step, elapsed)
            step_key = ranges = None
            if config.dropout:  # one half draws this step's masks; the checkpoint keeps the other
                key, step_key = mx.random.split(key)
            if prefix is not None:
                targets, ranges = prefix.batch(ids, targets)
                ranges = mx.array(ranges[rows])
            step_teacher = None
            if teacher is not None:
                step_teacher = tuple(mx.array(a[rows]) for a in teacher_at(
                    teacher, splits.train, step - 1, config.batch_size, config.seed, config.max_len, config.rechunk))
            out = step_fn(mx.array(ids[rows]), mx.array(targets[rows]), step_key, ranges, step_teacher, carry)
            loss, n, hits, carry = out if config.stateful else (*out, None)
            crash_point("step")
            # the loss is read first: a rank lost in the step's all-reduce raises there, while
            # evaluating the weights first (the average's update) hangs in MLX 0.32's ring backend
            stats = window.add(loss, n, hits, ids)
            if average is not None:
                average.update(model, step)
            if progress:
                progress(step, stats)
            if log:
                log.step(step, stats)
            last = step == config.steps or (config.minutes is not None and elapsed > 60 * config.minutes)
            if step % config.eval_every == 0 or last:
                with averaged(model, average):
                    valid = evaluate(model, splits.valid, config.batch_size, None if last else config.eval_batches,
                                     ranks, prefix)
                crash_point("eval")
                if ranks.main:
                    _log(run_dir, {"step": step, "split": "train", **stats})
                    _log(run_dir, {"step": step, "split": "valid", **valid})
                    log.valid(step, valid)
                    save_checkpoint(run_dir, model, optimizer, step, splits, config, key, average, carry)
                saved_at, window = time.perf_counter(), Window()
                if progress:
                    progress(step, {**stats, "valid": valid})
            elif ranks.main and (interrupt.requested or time.perf_counter() - saved_at > 60 * config.checkpoint_minutes):
                save_checkpoint(run_dir, model, optimizer, step, splits, config, key, average, carry)
                saved_at = time.perf_counter()
            if interrupt.requested:
                if log:
                    log.write(f"interrupted: checkpoint saved at step {step}; continue with --resume")
                raise KeyboardInterrupt
            if last:
                break
    return {**valid, "steps": step, "vocab_size": model.config.vocab_size}


def _carry(model: RNNModel, run_dir: Path, start: int, config: TrainConfig) -> list:
    """The state a stateful run's rows carry into step ``start + 1``: zero at the start, else the
    checkpoint's."""
    if not start:
        return model.initial_state(config.batch_size)
    try:
        saved = mx.load(str(run_dir / CHECKPOINT / CARRY))
        return [tuple(layer) for layer in tree_unflatten(list(saved.items()))]
    except Exception as err:
        raise EdgeRNNError(f"{run_dir / CHECKPOINT} has no usable carried state ({type(err).__name__}); "
                           "delete it to restart the run from step 0") from None


def _elapsed(started: float, config: TrainConfig, ranks: distributed.Ranks) -> float:
    """Seconds of training so far: what a time budget and its schedule run on. With several
    ranks, rank 0's clock for all (one tiny all-reduce per step, only when a budget is set), so
    every rank uses the same learning rate and stops at the same step."""
    elapsed = time.perf_counter() - started
    if config.minutes is None or ranks.size == 1:
        return elapsed
    return float(distributed.all_sum(mx.array(elapsed if ranks.main else 0.0), ranks).item())
