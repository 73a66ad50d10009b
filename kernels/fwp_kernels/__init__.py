"""fwp_kernels: fast-weight scans (sum rule and delta rule), references and fast paths.

Modules: ``dispatch`` (:func:`fast_weight_scan`: checks, attention normalisation, choice
of implementation), ``reference`` (the step-by-step paper form), ``chunk_torch`` (the
chunk-parallel PyTorch path), ``state``, and the folder ``triton/``, which holds every
Triton kernel: nothing outside it imports Triton, and importing ``fwp_kernels`` does not.

Tensor layout (all operations): time-major ``[T, B, H, D]``, which is a free view of
fairseq's ``[T, B, C]`` activations. β and erase strengths are ``[T, B, H]``.
The fast weight state ``S`` is ``[B, H, d_dot, d_value]`` in float32, i.e. the
transpose of the paper's ``W`` (``d_value x d_dot``): a read is ``y = S^T phi(q)``.
The attention normaliser ``z`` is ``[B, H, d_dot]`` in float32.
"""

from typing import TYPE_CHECKING

__all__ = ["FastWeightState", "fast_weight_scan", "recurrent_fast_weight", "available_impls"]

if TYPE_CHECKING:  # pragma: no cover
    from .dispatch import FastWeightState, available_impls, fast_weight_scan
    from .reference import recurrent_fast_weight


def __getattr__(name):
    if name in ("FastWeightState", "fast_weight_scan", "available_impls"):
        from . import dispatch

        return getattr(dispatch, name)
    if name == "recurrent_fast_weight":
        from .reference import recurrent_fast_weight

        return recurrent_fast_weight
    raise AttributeError(f"module 'fwp_kernels' has no attribute {name!r}")
