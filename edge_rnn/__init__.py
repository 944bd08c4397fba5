"""edge-rnn: small recurrent language models, trained with MLX, shipped as step functions."""

from edge_rnn import blas as _blas

_blas.load()  # must run before anything imports mlx.core

__version__ = "0.1.0"
