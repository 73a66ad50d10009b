"""One-token recurrent step of the sum rule, for incremental decoding.

    S' = S + k v^T          o = S'^T q

Inputs are one token: q, k ``[B, H, d_dot]`` and v ``[B, H, d_value]`` (or the same
with a leading time axis of length 1, ``[1, B, H, D]``, as in the time-major layout);
``state`` is ``[B, H, d_dot, d_value]`` (S = W^T) and is not modified: a new float32
state is returned. One program per (batch*head, d_value tile) walks the d_dot tiles, so
the whole state is read and written once. Inference only: no autograd (use
:func:`fwp_kernels.linear_attn.chunk_linear_attn` for training, including T = 1).
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..triton_utils import check_out_dtype, check_qkv, check_state, device_guard, tile_sizes


@triton.jit
def linear_attn_step_kernel(
    q, k, v, s_in, s_out, o,
    H, K, V,
    s_qb, s_qh, s_qd,
    s_kb, s_kh, s_kd,
    s_vb, s_vh, s_vd,
    BK: tl.constexpr, BV: tl.constexpr,
):
    """Grid (B*H, NV)."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    cv = i_v * BV + tl.arange(0, BV)
    mv = cv < V
    b_v = tl.load(v + i_b * s_vb + i_h * s_vh + cv * s_vd, mask=mv, other=0.0).to(tl.float32)
    b_o = tl.zeros([BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        ck = i_k * BK + tl.arange(0, BK)
        mk = ck < K
        b_k = tl.load(k + i_b * s_kb + i_h * s_kh + ck * s_kd, mask=mk, other=0.0).to(tl.float32)
        b_q = tl.load(q + i_b * s_qb + i_h * s_qh + ck * s_qd, mask=mk, other=0.0).to(tl.float32)
        offs = i_bh * K * V + ck[:, None] * V + cv[None, :]
        m = mk[:, None] & mv[None, :]
        b_s = tl.load(s_in + offs, mask=m, other=0.0).to(tl.float32)
        b_s += b_k[:, None] * b_v[None, :]
        tl.store(s_out + offs, b_s, mask=m)
        b_o += tl.sum(b_s * b_q[:, None], 0)
    tl.store(o + i_bh * V + cv, b_o.to(o.dtype.element_ty), mask=mv)


def _one_token(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"{name} must be one token [B, H, D] or [1, B, H, D], got {tuple(x.shape)}")
        return x
    if x.dim() == 3:
        return x.unsqueeze(0)
    raise ValueError(f"{name} must be one token [B, H, D] or [1, B, H, D], got {tuple(x.shape)}")


def linear_attn_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of the sum rule. Returns ``(o, new_state)``: o shaped like v
    (``[B, H, d_value]`` or ``[1, B, H, d_value]``) in ``out_dtype`` (default v's dtype;
    float32 when the caller divides by the attention normaliser, since the un-normalised
    read of a long-context state exceeds the float16 range), new_state float32."""
    squeeze = v.dim() == 3
    q4, k4, v4 = _one_token("q", q), _one_token("k", k), _one_token("v", v)
    _, B, H, K, V = check_qkv(q4, k4, v4)
    check_state("state", state, q4, K, V)
    out_dtype = check_out_dtype(out_dtype, v)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, state)):
        raise RuntimeError("linear_attn_step has no autograd; use chunk_linear_attn for training")
    s_in = state.float().contiguous()
    s_out = torch.empty_like(s_in)
    o = torch.empty(B, H, V, device=v.device, dtype=out_dtype)
    BK, BV = tile_sizes(K, V)
    with device_guard(q):
        linear_attn_step_kernel[(B * H, triton.cdiv(V, BV))](
            q4, k4, v4, s_in, s_out, o, H, K, V,
            *q4.stride()[1:], *k4.stride()[1:], *v4.stride()[1:],
            BK=BK, BV=BV,
        )
    return (o if squeeze else o.unsqueeze(0)), s_out


__all__ = ["linear_attn_step"]
