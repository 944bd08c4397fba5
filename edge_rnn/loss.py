"""Softmax cross-entropy over a large output layer, with a hand-written backward.

For a 10k-word head the softmax is most of a training step's element-wise work: 12,800 x 10,002
logits per batch. Autodiff of ``nn.losses.cross_entropy`` goes over them several times (logsumexp,
then ``exp`` again for its gradient, then a one-hot scatter and a multiply). Here:

- forward: ``ce = logsumexp(z) - z[target]`` and the top-1 word (which the training loop reports),
  also returning ``logsumexp(z)`` for the backward;
- backward: ``dz = dce * (softmax(z) - onehot(target))`` in one pass from ``z`` and ``lse``.

With the optional extension (``edge_rnn.ext``) both passes are single vectorised, multi-threaded
kernels. Without it they are MLX ops; the forward then keeps ``softmax(z)`` so that the backward
needs no second ``exp`` (MLX's ``exp`` is scalar on x86). Values equal ``nn.losses.cross_entropy``
to float32 rounding, and so do gradients (tests/test_backward.py).
"""

from __future__ import annotations

import mlx.core as mx

from edge_rnn import ext


@mx.custom_function
def _xent_fast(z, targets):
    lse, top = ext._ext.logsumexp_rows(z)
    return lse - mx.take_along_axis(z, targets[:, None], axis=-1)[:, 0], top, lse


@_xent_fast.vjp
def _xent_fast_vjp(primals, cotangents, outputs):
    z, targets = primals
    dce = cotangents[0]
    return ext._ext.softmax_xent_grad(z, outputs[2], targets, dce), mx.zeros_like(targets)


@mx.custom_function
def _xent_mlx(z, targets):
    m = mx.stop_gradient(z.max(axis=-1, keepdims=True))
    e = mx.exp(z - m)
    s = e.sum(axis=-1, keepdims=True)
    lse = m + mx.log(s)
    ce = (lse - mx.take_along_axis(z, targets[:, None], axis=-1))[:, 0]
    return ce, z.argmax(axis=-1), e / s  # the softmax, kept for the backward


@_xent_mlx.vjp
def _xent_mlx_vjp(primals, cotangents, outputs):
    z, targets = primals
    dce, p = cotangents[0], outputs[2]
    onehot = mx.arange(z.shape[-1])[None, :] == targets[:, None]
    return (p - onehot) * dce[:, None], mx.zeros_like(targets)


def cross_entropy(logits: mx.array, targets: mx.array) -> tuple[mx.array, mx.array]:
    """Per-token cross-entropy and top-1 prediction: ``logits (..., V)``, integer ``targets (...)``
    -> ``(ce, argmax)``, both ``(...)``.

    ``ce`` has the values of ``nn.losses.cross_entropy(logits, targets, reduction="none")`` and
    ``argmax`` those of ``logits.argmax(axis=-1)`` (the kernel finds it while it reads the row).
    """
    shape = targets.shape
    z = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1).astype(mx.int32)
    fn = _xent_fast if ext.usable(z) else _xent_mlx
    ce, top, _ = fn(z, t)
    return ce.reshape(shape), top.reshape(shape)
