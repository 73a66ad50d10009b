"""One-token recurrent steps of both rules, for incremental decoding.

    sum rule:     S' = S + k v^T
    delta rule:   vbar = S^T k          S' = S + k (beta v - c vbar)^T
    both:         o = S'^T q

(c = beta unless an erase strength is given). Inputs are one token: q, k
``[B, H, d_dot]``, v ``[B, H, d_value]``, beta/erase ``[B, H]`` (or the same with a
leading time axis of length 1, as in the time-major layout); ``state`` is
``[B, H, d_dot, d_value]`` (S = W^T) and is not modified: a new float32 state is
returned. One kernel serves both rules: one program per (batch*head, d_value tile)
walks the d_dot tiles once to write S' and read o; the delta rule (``DELTA``, a
compile-time flag) first walks them once more to read vbar. Inference only: no autograd
(use :func:`fwp_kernels.triton.chunk_linear_attn` /
:func:`fwp_kernels.triton.chunk_delta_rule` for training, including T = 1).
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .common import batch_head, check_out_dtype, check_qkv, check_state, check_strength, device_guard, tile_sizes


@triton.jit
def fast_weight_step_kernel(
    q, k, v, beta, erase, s_in, s_out, o,
    H, K, V,
    s_qb, s_qh, s_qd,
    s_kb, s_kh, s_kd,
    s_vb, s_vh, s_vd,
    s_bb, s_bh,
    s_cb, s_ch,
    BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
):
    """Grid (B*H, NV). DELTA = False: the sum rule (beta, erase unread)."""
    i_bh, i_b, i_h = batch_head(H)
    i_v = tl.program_id(1)
    cv = i_v * BV + tl.arange(0, BV)
    mv = cv < V
    b_v = tl.load(v + i_b * s_vb + i_h * s_vh + cv * s_vd, mask=mv, other=0.0).to(tl.float32)
    if DELTA:
        b_beta = tl.load(beta + i_b * s_bb + i_h * s_bh).to(tl.float32)
        b_c = tl.load(erase + i_b * s_cb + i_h * s_ch).to(tl.float32)
        b_vbar = tl.zeros([BV], dtype=tl.float32)
        for i_k in range(tl.cdiv(K, BK)):
            ck = i_k * BK + tl.arange(0, BK)
            mk = ck < K
            b_k = tl.load(k + i_b * s_kb + i_h * s_kh + ck * s_kd, mask=mk, other=0.0).to(tl.float32)
            offs = i_bh * K * V + ck[:, None] * V + cv[None, :]
            b_s = tl.load(s_in + offs, mask=mk[:, None] & mv[None, :], other=0.0).to(tl.float32)
            b_vbar += tl.sum(b_s * b_k[:, None], 0)
        b_u = b_beta * b_v - b_c * b_vbar
    else:
        b_u = b_v
    b_o = tl.zeros([BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        ck = i_k * BK + tl.arange(0, BK)
        mk = ck < K
        b_k = tl.load(k + i_b * s_kb + i_h * s_kh + ck * s_kd, mask=mk, other=0.0).to(tl.float32)
        b_q = tl.load(q + i_b * s_qb + i_h * s_qh + ck * s_qd, mask=mk, other=0.0).to(tl.float32)
        offs = i_bh * K * V + ck[:, None] * V + cv[None, :]
        m = mk[:, None] & mv[None, :]
        b_s = tl.load(s_in + offs, mask=m, other=0.0).to(tl.float32)
        b_s += b_k[:, None] * b_u[None, :]
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


def _one_strength(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3 and x.shape[0] == 1:
        return x
    if x.dim() == 2:
        return x.unsqueeze(0)
    raise ValueError(f"{name} must be one token [B, H] or [1, B, H], got {tuple(x.shape)}")


def _step(name, q, k, v, state, beta, erase, out_dtype):
    """Checks, then one launch of :func:`fast_weight_step_kernel` (the delta rule when
    beta is given). ``name``: the public function, for the no-autograd error."""
    squeeze = v.dim() == 3
    q4, k4, v4 = _one_token("q", q), _one_token("k", k), _one_token("v", v)
    _, B, H, K, V = check_qkv(q4, k4, v4)
    delta = beta is not None
    b3 = c3 = None
    if delta:
        b3 = _one_strength("beta", beta)
        check_strength("beta", b3, q4)
        c3 = b3
        if erase is not None:
            c3 = _one_strength("erase", erase)
            check_strength("erase", c3, q4)
    check_state("state", state, q4, K, V)
    out_dtype = check_out_dtype(out_dtype, v)
    tensors = [x for x in (q, k, v, beta, state, erase) if x is not None]
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        train = "chunk_delta_rule" if delta else "chunk_linear_attn"
        raise RuntimeError(f"{name} has no autograd; use {train} for training")
    s_in = state.float().contiguous()
    s_out = torch.empty_like(s_in)
    o = torch.empty(B, H, V, device=v.device, dtype=out_dtype)
    BK, BV = tile_sizes(K, V)
    strengths = (b3, c3, *b3.stride()[1:], *c3.stride()[1:]) if delta else (v4, v4, 0, 0, 0, 0)
    with device_guard(q):
        fast_weight_step_kernel[(B * H, triton.cdiv(V, BV))](
            q4, k4, v4, strengths[0], strengths[1], s_in, s_out, o, H, K, V,
            *q4.stride()[1:], *k4.stride()[1:], *v4.stride()[1:], *strengths[2:],
            BK=BK, BV=BV, DELTA=delta,
        )
    return (o if squeeze else o.unsqueeze(0)), s_out


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
    return _step("linear_attn_step", q, k, v, state, None, None, out_dtype)


def delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    erase: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of the delta rule. Returns ``(o, new_state)`` as
    :func:`linear_attn_step` does."""
    if beta is None:
        raise TypeError("beta must be a torch.Tensor, got NoneType")
    return _step("delta_rule_step", q, k, v, state, beta, erase, out_dtype)


__all__ = ["linear_attn_step", "delta_rule_step"]
