"""Gate activations used by the cells and their hand-written backward passes.

``sigmoid`` and ``tanh`` are MLX's own, unless the optional compiled extension (``edge_rnn.ext``)
is built: then float32 arrays on the CPU go to its vectorised kernels (MLX's CPU backend evaluates
transcendental functions one element at a time on x86; these are ~15x faster), which agree with
the exact functions to a few float32 ulp and are differentiable like MLX's.
"""

import mlx.core as mx

from edge_rnn import ext


def sigmoid(x: mx.array) -> mx.array:
    return ext._ext.sigmoid(x) if ext.usable(x) else mx.sigmoid(x)


def tanh(x: mx.array) -> mx.array:
    return ext._ext.tanh(x) if ext.usable(x) else mx.tanh(x)
