"""Triton kernels for the delta rule of the fast weight programmer (Eq. 20-27).

* :func:`chunk_delta_rule` - chunk-parallel forward and backward (training, prompts),
  with write strength beta and an optional separate erase strength.
* :func:`delta_rule_step`  - one-token recurrent step for decoding (state in, state out).

Layout: time-major ``[T, B, H, D]``; strengths ``[T, B, H]``; state ``S = W^T``
``[B, H, d_dot, d_value]`` float32. Importing this package imports Triton.
"""

from .chunk import chunk_delta_rule
from .step import delta_rule_step

__all__ = ["chunk_delta_rule", "delta_rule_step"]
