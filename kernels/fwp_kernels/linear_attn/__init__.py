"""Triton kernels for causal linear attention (the sum rule of the fast weight programmer).

* :func:`chunk_linear_attn` - chunk-parallel forward and backward (training, prompts).
* :func:`linear_attn_step`  - one-token recurrent step for decoding (state in, state out).

Layout: time-major ``[T, B, H, D]``; state ``S = W^T`` ``[B, H, d_dot, d_value]`` float32.
Importing this package imports Triton.
"""

from .chunk import chunk_linear_attn
from .step import linear_attn_step

__all__ = ["chunk_linear_attn", "linear_attn_step"]
