"""Data-parallel training with MLX's own distributed engine (``mx.distributed``, ``mlx.launch``).

Every rank holds the whole model and reads its own slice of every global batch: the global batch
stays the user's ``--batch-size`` whatever the number of ranks, so a run on 2 ranks sees the
batches, and learns what, a run on 1 would. Gradients are the gradient of the mean loss over the
loss tokens of the *global* batch, so each rank's gradient is weighted by its share of those
tokens before ``mlx.nn.average_gradients`` (which concatenates small arrays into few all-reduces);
the optimizer then takes the same step everywhere and parameters stay identical. Validation
shards the batches and all-sums the metric sums, giving one process's numbers. Only rank 0
writes checkpoints, metrics, logs and progress.

A lost peer surfaces as MLX's ``RuntimeError("[ring] connection to a peer was lost")`` in the
next all-reduce (within about a second on loopback); ``PeerLost`` turns it into one clear line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from edge_rnn.io import EdgeRNNError

LAUNCH_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")  # set by mlx.launch / mpirun


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run (a single process: rank 0 of 1)."""

    group: mx.distributed.Group | None
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """Whether a launcher (``mlx.launch``, ``mpirun``) started this process."""
    return any(name in os.environ for name in LAUNCH_ENV)


def init(required: bool = False) -> Ranks:
    """Join the launcher's group; a lone process (not launched) is rank 0 of 1.

    ``required`` (``--distributed``): fail with one line instead of falling back to one process.
    """
    if not (required or launched()):
        return Ranks(None)
    try:
        group = mx.distributed.init(strict=required)
    except RuntimeError as err:
        raise EdgeRNNError(f"--distributed: no distributed backend to join ({err}); start the run "
                           "with mlx.launch (see the README's data-parallel section)") from None
    if group.size() == 1:
        return Ranks(None)
    return Ranks(group, group.rank(), group.size())


def shard(batch_size: int, ranks: Ranks) -> slice:
    """Rows of the global batch that this rank trains on."""
    if batch_size % ranks.size:
        raise EdgeRNNError(f"--batch-size {batch_size} does not split over {ranks.size} ranks; "
                           f"choose a multiple of {ranks.size}")
    per_rank = batch_size // ranks.size
    return slice(ranks.rank * per_rank, (ranks.rank + 1) * per_rank)


def reduce_step(loss: mx.array, n: mx.array, hits: mx.array, grads, ranks: Ranks):
    """The global batch's mean loss, token count, hits and gradient from every rank's own.

    A rank's mean gradient over its ``n`` tokens, scaled by ``size * n / N`` and averaged over
    ranks, is the mean gradient over all ``N`` tokens: exactly one process's gradient.
    """
    if ranks.group is None:
        return loss, n, hits, grads
    group = ranks.group
    n = n.astype(mx.float32)
    total = mx.maximum(mx.distributed.all_sum(n, group=group), 1)
    weight = ranks.size * n / total
    grads = nn.average_gradients(tree_map(lambda g: g * weight, grads), group=group)
    loss = mx.distributed.all_sum(loss * n, group=group) / total
    return loss, total, mx.distributed.all_sum(hits, group=group), grads


def all_sum(values: mx.array, ranks: Ranks) -> mx.array:
    """Sum over ranks (identity for one process)."""
    return values if ranks.group is None else mx.distributed.all_sum(values, group=ranks.group)


def peer_lost(err: Exception) -> bool:
    """Whether ``err`` is MLX reporting that another rank went away."""
    return isinstance(err, RuntimeError) and ("peer" in str(err) or "[ring]" in str(err) or "[mpi]" in str(err))


class PeerLost(EdgeRNNError):
    def __init__(self, ranks: Ranks, err: Exception):
        super().__init__(f"rank {ranks.rank} of {ranks.size}: another rank stopped ({err}); "
                         "the run stops here, resume it with --resume and the same number of ranks")
