"""The fast weight state carried between segments and decoding steps."""

from typing import NamedTuple, Optional

import torch

#: Added to every normaliser denominator (Eq. 19, 26, 28) so that an all-zero
#: feature vector gives 0 instead of NaN. Shared by every implementation.
EPS = 1e-6


class FastWeightState(NamedTuple):
    """Fast weight ``S`` = W^T, ``[B, H, d_dot, d_value]`` (Eq. 17/23), and the
    normaliser ``z`` = sum of phi(k), ``[B, H, d_dot]`` (Eq. 18), or None when the
    attention normalisation is off. Both float32 (float64 for float64 inputs)."""

    S: torch.Tensor
    z: Optional[torch.Tensor] = None

    def detach(self) -> "FastWeightState":
        """The same state cut from the autograd graph (for carrying across segments)."""
        return FastWeightState(self.S.detach(), None if self.z is None else self.z.detach())

    def index_select(self, order: torch.Tensor) -> "FastWeightState":
        """Reorder / select along the batch dimension (beam search)."""
        return FastWeightState(
            self.S.index_select(0, order), None if self.z is None else self.z.index_select(0, order)
        )


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
