"""The Triton kernels: every module that imports Triton is in this folder, and importing
anything here imports Triton (:mod:`fwp_kernels` itself never does).

* :func:`chunk_linear_attn` / :func:`chunk_delta_rule` - chunk-parallel forward and
  backward of the sum rule and of the delta rule (training, prompts); the delta rule
  with write strength beta and an optional separate erase strength (Eq. 20-27).
* :func:`linear_attn_step` / :func:`delta_rule_step` - one-token recurrent steps for
  decoding (state in, state out), one kernel for both rules.

Modules: ``linear_attn`` and ``delta_rule`` (the chunked kernels of each rule), ``step``
(the one-token kernel), ``common`` (what they share: layout conventions, tiles and launch
options, checks, tile helpers, the chunk output kernel, the wrappers' prologue and
autograd glue).

Layout: time-major ``[T, B, H, D]``; strengths ``[T, B, H]``; state ``S = W^T``
``[B, H, d_dot, d_value]`` float32.
"""

from .delta_rule import chunk_delta_rule
from .linear_attn import chunk_linear_attn
from .step import delta_rule_step, linear_attn_step

__all__ = ["chunk_linear_attn", "chunk_delta_rule", "linear_attn_step", "delta_rule_step"]
