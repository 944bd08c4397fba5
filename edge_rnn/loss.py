"""Softmax cross-entropy over a large output layer, with a hand-written backward.

For a 10k-word head the softmax is most of a training step's element-wise work: 12,800 x 10,002
logits per batch. Autodiff of ``nn.losses.cross_entropy`` goes over them several times (logsumexp,
then ``exp`` again for its gradient, then a one-hot scatter and a multiply). Here:

- forward: ``ce = logsumexp(z) - z[target]`` and the top-1 word (which the training loop reports),
  also returning ``logsumexp(z)`` for the backward;
- backward: ``dz = dce * (softmax(z) - onehot(target))`` in one pass from ``z`` and ``lse``.

Optionally each row's softmax runs over its own columns ``[lo, hi)`` only (``ranges``): the prefix
objective (``edge_rnn.prefix``), where a position ranks just the words its typed letters allow.
Columns outside a row's range get no probability, no gradient, and are never its top-1.

With the optional extension (``edge_rnn.ext``) both passes are single vectorised, multi-threaded
kernels. Without it they are MLX ops; the forward then keeps ``softmax(z)`` so that the backward
needs no second ``exp`` (MLX's ``exp`` is scalar on x86). Values equal ``nn.losses.cross_entropy``
to float32 rounding, and so do gradients (tests/test_backward.py).
"""

from __future__ import annotations

import mlx.core as mx

from edge_rnn import ext


@mx.custom_function
def _xent_fast(z, targets, ranges):
    lse, top = ext._ext.logsumexp_rows(z, ranges)
    return lse - mx.take_along_axis(z, targets[:, None], axis=-1)[:, 0], top, lse


@_xent_fast.vjp
def _xent_fast_vjp(primals, cotangents, outputs):
    z, targets, ranges = primals
    dce = cotangents[0]
    return ext._ext.softmax_xent_grad(z, outputs[2], targets, dce, ranges), mx.zeros_like(targets), mx.zeros_like(ranges)


def mask_outside(z: mx.array, ranges: mx.array) -> mx.array:
    """``z (..., V)`` with every column outside its row's ``ranges (..., 2)`` ``[lo, hi)`` at -1e30
    (the kernels skip them instead). Not -inf: ``nn.losses.cross_entropy`` multiplies logits by 0,
    and a <pad>/<unk> target outside its range carries a 0 weight that must not make nan."""
    cols = mx.arange(z.shape[-1])
    return mx.where((cols >= ranges[..., :1]) & (cols < ranges[..., 1:]), z, -1e30)


@mx.custom_function
def _xent_mlx(z, targets, ranges):
    z = mask_outside(z, ranges)
    m = mx.stop_gradient(z.max(axis=-1, keepdims=True))
    e = mx.exp(z - m)
    s = e.sum(axis=-1, keepdims=True)
    lse = m + mx.log(s)
    ce = (lse - mx.take_along_axis(z, targets[:, None], axis=-1))[:, 0]
    return ce, z.argmax(axis=-1), e / s  # the softmax, kept for the backward


@_xent_mlx.vjp
def _xent_mlx_vjp(primals, cotangents, outputs):
    z, targets, ranges = primals
    dce, p = cotangents[0], outputs[2]
    onehot = mx.arange(z.shape[-1])[None, :] == targets[:, None]
    return (p - onehot) * dce[:, None], mx.zeros_like(targets), mx.zeros_like(ranges)


def cross_entropy(logits: mx.array, targets: mx.array, ranges: mx.array | None = None) -> tuple[mx.array, mx.array]:
    """Per-token cross-entropy and top-1 prediction: ``logits (..., V)``, integer ``targets (...)``
    -> ``(ce, argmax)``, both ``(...)``; ``ranges (..., 2)``: each token's columns ``[lo, hi)``
    (default: all of them).

    ``ce`` has the values of ``nn.losses.cross_entropy(z, targets, reduction="none")`` and
    ``argmax`` those of ``z.argmax(axis=-1)`` (the kernel finds it while it reads the row), where
    ``z`` is ``logits`` with the columns outside each range set to -inf.
    """
    shape = targets.shape
    z = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1).astype(mx.int32)
    if ranges is None:
        r = mx.broadcast_to(mx.array([0, z.shape[-1]], mx.int32), (z.shape[0], 2))
    else:
        r = ranges.reshape(-1, 2).astype(mx.int32)
    fn = _xent_fast if ext.usable(z) else _xent_mlx
    ce, top, _ = fn(z, t, r)
    return ce.reshape(shape), top.reshape(shape)
