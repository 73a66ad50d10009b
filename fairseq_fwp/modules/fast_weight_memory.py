"""The fast weight memory shared by every model: phi, write, read and the causal scan.

``FastWeightAttention`` (the Transformer layers) and ``FwpRetrievalModel`` (the synthetic
task) are both a FastWeightMemory plus their own projections, so the maths lives here once.
All tensors are time-major ``[T, B, H, D]`` (see ``fwp_kernels``).
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from fwp_kernels import FastWeightState, fast_weight_scan
from fwp_kernels.state import EPS, acc_dtype

from .feature_maps import build_feature_map


class FastWeightMemory(nn.Module):
    """Feature map phi, update rule (sum / delta) and the two normalisations of one memory."""

    def __init__(
        self,
        d_key: int,
        *,
        feature_map: str = "linear",
        update_rule: str = "sum",
        sum_norm: bool = False,
        attn_norm: bool = False,
        dpfp_nu: int = 1,
        favor_features: int = 64,
    ):
        super().__init__()
        if update_rule not in ("sum", "delta"):
            raise ValueError(f"--fwp-update-rule must be sum or delta, got {update_rule!r}")
        self.update_rule = update_rule
        self.sum_norm = sum_norm
        self.attn_norm = attn_norm
        self.feature_map = build_feature_map(feature_map, d_key, dpfp_nu=dpfp_nu, favor_features=favor_features)

    @property
    def d_dot(self) -> int:
        """Size of phi's output (the fast weight is d_dot x d_value per head)."""
        return self.feature_map.d_dot

    def phi(self, x: Tensor) -> Tensor:
        """phi (Sec. 5), sum-normalised when --fwp-sum-norm (Eq. 29).

        Computed in float32 (float64 for float64 x), returned in x's dtype: with --fp16/--bf16 the scan gets
        half-precision phi(q), phi(k) and v (and accumulates in float32)."""
        phi = self.feature_map.sum_normalized(x) if self.sum_norm else self.feature_map(x)
        return phi.to(x.dtype)

    def scan(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Optional[Tensor],
        initial_state: Optional[FastWeightState] = None,
        output_final_state: bool = False,
    ) -> Tuple[Tensor, Optional[FastWeightState]]:
        """Causal: each phi(q_i) reads the fast weight after the write of position i (Eq. 17-28)."""
        if initial_state is not None and self.attn_norm and initial_state.z is None:
            raise ValueError("initial_state.z is required with --fwp-attn-norm")
        return fast_weight_scan(
            q, k, v, beta, rule=self.update_rule, attn_norm=self.attn_norm,
            initial_state=initial_state, output_final_state=output_final_state,
        )

    def write(
        self, k: Tensor, v: Tensor, beta: Optional[Tensor], initial_state: Optional[FastWeightState] = None
    ) -> FastWeightState:
        """Program a whole key sequence phi(k), v into the fast weight; returns the final state."""
        if initial_state is None and self.update_rule == "sum":
            kf = k.to(acc_dtype(k.dtype))
            S = torch.einsum("tbhk,tbhv->bhkv", kf, v.to(kf.dtype))  # Eq. 15, in closed form
            return FastWeightState(S, kf.sum(0) if self.attn_norm else None)  # Eq. 16
        _, state = self.scan(k, k, v, beta, initial_state=initial_state, output_final_state=True)
        return state

    def read(self, q: Tensor, state: FastWeightState) -> Tensor:
        """y = S^T phi(q) [/ z . phi(q)] for queries q [..., B, H, d_dot] (Eq. 19 / 25 / 28)."""
        y = torch.einsum("...bhk,bhkv->...bhv", q.to(state.S.dtype), state.S)
        if self.attn_norm:
            y = y / (torch.einsum("...bhk,bhk->...bh", q.to(state.z.dtype), state.z).unsqueeze(-1) + EPS)
        return y
