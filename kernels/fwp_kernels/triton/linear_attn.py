"""Chunked causal linear attention (the sum rule, Eq. 17 and 19 without normalisation).

Maths (per batch b and head h; S = W^T is ``[d_dot, d_value]``)::

    S_t = S_{t-1} + k_t v_t^T          o_t = S_t^T q_t         (S_0 = initial state)

In chunks of C tokens with h_n the state before chunk n (Q, K, V the chunk's rows)::

    O_n     = Q h_n + tril(Q K^T) V         (tril includes the diagonal)
    h_{n+1} = h_n + K^T V

Forward: one pass over chunks computes every chunk-boundary state h_n (tiles of
d_dot x d_value are independent, so the pass is parallel over both), then the outputs
of all chunks in parallel. Backward recomputes h_n, runs one reverse pass for the
state gradients ``dh_n = dh_{n+1} + Q_n^T dO_n`` (dh_N = gradient of the final state,
dh_0 = gradient of the initial state), then, in parallel over chunks::

    dQ = dO h_n^T + tril(dO V^T) K        (the first term is the carried-in-state part)
    dK = triu(V dO^T) Q + V dh_{n+1}^T
    dV = triu(K Q^T) dO + K dh_{n+1}

Layout: q, k ``[T, B, H, d_dot]``, v ``[T, B, H, d_value]`` time-major, read through
their strides (non-contiguous views are fine); states ``[B, H, d_dot, d_value]`` float32.
Nothing per token is stored: backward keeps only the inputs (and the initial state).

The output pass (:func:`fwp_kernels.triton.common.chunk_output_kernel`) is the delta
rule's too, whose output has exactly this form with V replaced by the chunk's "new
values" U.
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .common import (
    ChunkPasses,
    batch_head,
    chunk_dims,
    chunk_output_fwd,
    chunk_scan,
    chunk_value_grad,
    dot_precision,
    launch_options,
    load_tile,
    store_tile,
    strides4,
    tile_sizes,
)

# --------------------------------------------------------------------------- kernels


@triton.jit
def linear_attn_state_fwd_kernel(
    k, v, h0, h,
    T, H, K, V,
    s_kt, s_kb, s_kh, s_kd,
    s_vt, s_vb, s_vh, s_vd,
    NT,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_H0: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (B*H, NK, NV): chunk-boundary states h[bh, n] for n = 0..NT (one [BK, BV] tile)."""
    i_bh, i_b, i_h = batch_head(H)
    i_k = tl.program_id(1)
    i_v = tl.program_id(2)
    k_base = k + i_b * s_kb + i_h * s_kh
    v_base = v + i_b * s_vb + i_h * s_vh
    h_base = h + i_bh * (NT + 1) * K * V
    if HAS_H0:
        b_h = load_tile(h0 + i_bh * K * V, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
    else:
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
    for n in range(NT):
        store_tile(h_base + n * K * V, b_h, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
        b_kT = load_tile(k_base, s_kd, s_kt, i_k * BK, n * C, K, T, BK, C)  # [BK, C]
        b_v = load_tile(v_base, s_vt, s_vd, n * C, i_v * BV, T, V, C, BV)  # [C, BV]
        b_h += tl.dot(b_kT, b_v, input_precision=PREC)
    store_tile(h_base + NT * K * V, b_h, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)


@triton.jit
def linear_attn_state_bwd_kernel(
    q, do, dht, dh,
    T, H, K, V,
    s_qt, s_qb, s_qh, s_qd,
    s_dt, s_db, s_dh, s_dd,
    NT,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DHT: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (B*H, NK, NV): reverse pass dh_n = dh_{n+1} + Q_n^T dO_n, dh_NT = dht."""
    i_bh, i_b, i_h = batch_head(H)
    i_k = tl.program_id(1)
    i_v = tl.program_id(2)
    q_base = q + i_b * s_qb + i_h * s_qh
    do_base = do + i_b * s_db + i_h * s_dh
    dh_base = dh + i_bh * (NT + 1) * K * V
    if HAS_DHT:
        b_dh = load_tile(dht + i_bh * K * V, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
    else:
        b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    store_tile(dh_base + NT * K * V, b_dh, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
    for i in range(NT):
        n = NT - 1 - i
        b_qT = load_tile(q_base, s_qd, s_qt, i_k * BK, n * C, K, T, BK, C)  # [BK, C]
        b_do = load_tile(do_base, s_dt, s_dd, n * C, i_v * BV, T, V, C, BV)  # [C, BV]
        b_dh += tl.dot(b_qT, b_do, input_precision=PREC)
        store_tile(dh_base + n * K * V, b_dh, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)


@triton.jit
def linear_attn_dqk_kernel(
    q, k, v, do, h, dh, dq, dk,
    T, H, K, V,
    s_qt, s_qb, s_qh, s_qd,
    s_kt, s_kb, s_kh, s_kd,
    s_vt, s_vb, s_vh, s_vd,
    s_dt, s_db, s_dh, s_dd,
    s_gt, NT,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (B*H, NT, NK): dQ = dO h_n^T + tril(dO V^T) K ; dK = triu(V dO^T) Q + V dh_{n+1}^T.

    dq and dk are contiguous [T, B, H, K] (time stride s_gt = B*H*K)."""
    i_bh, i_b, i_h = batch_head(H)
    n = tl.program_id(1)
    i_k = tl.program_id(2)
    v_base = v + i_b * s_vb + i_h * s_vh
    do_base = do + i_b * s_db + i_h * s_dh
    h_base = h + (i_bh * (NT + 1) + n) * K * V
    dh_base = dh + (i_bh * (NT + 1) + n + 1) * K * V
    b_dq = tl.zeros([C, BK], dtype=tl.float32)
    b_dk = tl.zeros([C, BK], dtype=tl.float32)
    b_a = tl.zeros([C, C], dtype=tl.float32)  # dO V^T
    for i_v in range(tl.cdiv(V, BV)):
        b_do = load_tile(do_base, s_dt, s_dd, n * C, i_v * BV, T, V, C, BV)  # [C, BV]
        b_v = load_tile(v_base, s_vt, s_vd, n * C, i_v * BV, T, V, C, BV)
        b_vT = load_tile(v_base, s_vd, s_vt, i_v * BV, n * C, V, T, BV, C)
        b_hT = load_tile(h_base, 1, V, i_v * BV, i_k * BK, V, K, BV, BK)  # h_n^T [BV, BK]
        b_dhT = load_tile(dh_base, 1, V, i_v * BV, i_k * BK, V, K, BV, BK)  # dh_{n+1}^T
        b_dq += tl.dot(b_do, b_hT, input_precision=PREC)
        b_dk += tl.dot(b_v, b_dhT, input_precision=PREC)
        b_a += tl.dot(b_do, b_vT, input_precision=PREC)
    rows = tl.arange(0, C)
    b_aT = tl.where(rows[:, None] <= rows[None, :], tl.trans(b_a), 0.0)  # V dO^T = (dO V^T)^T
    b_a = tl.where(rows[:, None] >= rows[None, :], b_a, 0.0)
    b_q = load_tile(q + i_b * s_qb + i_h * s_qh, s_qt, s_qd, n * C, i_k * BK, T, K, C, BK)
    b_k = load_tile(k + i_b * s_kb + i_h * s_kh, s_kt, s_kd, n * C, i_k * BK, T, K, C, BK)
    b_dq += tl.dot(b_a, b_k, input_precision=PREC)
    b_dk += tl.dot(b_aT, b_q, input_precision=PREC)
    store_tile(dq + i_bh * K, b_dq, s_gt, 1, n * C, i_k * BK, T, K, C, BK)
    store_tile(dk + i_bh * K, b_dk, s_gt, 1, n * C, i_k * BK, T, K, C, BK)


@triton.jit
def linear_attn_dv_kernel(
    q, k, do, dh, dv,
    T, H, K, V,
    s_qt, s_qb, s_qh, s_qd,
    s_kt, s_kb, s_kh, s_kd,
    s_dt, s_db, s_dh, s_dd,
    s_gt, NT,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (B*H, NT, NV): dV = triu(K Q^T) dO + K dh_{n+1}; dv contiguous [T, B, H, V] (s_gt = B*H*V)."""
    i_bh, i_b, i_h = batch_head(H)
    n = tl.program_id(1)
    i_v = tl.program_id(2)
    q_base = q + i_b * s_qb + i_h * s_qh
    k_base = k + i_b * s_kb + i_h * s_kh
    dh_base = dh + (i_bh * (NT + 1) + n + 1) * K * V
    b_dv, _ = chunk_value_grad(
        q_base, s_qt, s_qd, k_base, s_kt, s_kd, do + i_b * s_db + i_h * s_dh, s_dt, s_dd, dh_base,
        n, i_v, T, K, V, C, BK, BV, PREC)
    store_tile(dv + i_bh * V, b_dv, s_gt, 1, n * C, i_v * BV, T, V, C, BV)


# ------------------------------------------------------------------ host wrappers


def chunk_states_fwd(k, v, h0, chunk_size, prec):
    """All chunk-boundary states ``[B*H, N+1, K, V]`` float32 of the sum rule."""
    T, B, H, K, V, NT = chunk_dims(k, v, chunk_size)
    C = chunk_size
    BK, BV = tile_sizes(K, V, prec)
    h = torch.empty(B * H, NT + 1, K, V, device=k.device, dtype=torch.float32)
    grid = (B * H, triton.cdiv(K, BK), triton.cdiv(V, BV))
    linear_attn_state_fwd_kernel[grid](
        k, v, h0 if h0 is not None else h, h, T, H, K, V,
        *strides4(k), *strides4(v), NT,
        C=C, BK=BK, BV=BV, HAS_H0=h0 is not None, PREC=prec, **launch_options(BK, BV),
    )
    return h


def chunk_linear_attn_fwd(q, k, v, h0, chunk_size, out_dtype, prec=None):
    """Returns (o [T,B,H,V] in out_dtype, final state [B,H,K,V] float32); prec: the dot
    precision (default :func:`dot_precision` of k's dtype)."""
    prec = prec or dot_precision(k.dtype)
    T, B, H, K = q.shape
    V = v.shape[-1]
    h = chunk_states_fwd(k, v, h0, chunk_size, prec)
    o = chunk_output_fwd(q, k, v, strides4(v), h, out_dtype, chunk_size, prec)
    return o, h[:, -1].reshape(B, H, K, V)


def chunk_state_grads_bwd(q, do, dht, K, V, chunk_size, prec):
    """Reverse pass of the sum rule: dh ``[B*H, N+1, K, V]``, dh[:, n] = dL/dh_n."""
    T, B, H, _ = q.shape
    C = chunk_size
    NT = triton.cdiv(T, C)
    BK, BV = tile_sizes(K, V, prec)
    dh = torch.empty(B * H, NT + 1, K, V, device=q.device, dtype=torch.float32)
    linear_attn_state_bwd_kernel[(B * H, triton.cdiv(K, BK), triton.cdiv(V, BV))](
        q, do, dht if dht is not None else dh, dh, T, H, K, V,
        *strides4(q), *strides4(do), NT,
        C=C, BK=BK, BV=BV, HAS_DHT=dht is not None, PREC=prec, **launch_options(BK, BV),
    )
    return dh


def chunk_linear_attn_bwd(q, k, v, h0, do, dht, chunk_size, dq_dtype, prec=None):
    """Gradients (dq in dq_dtype, dk, dv, dh0) of the sum rule; chunk states recomputed from h0
    (prec: the forward's dot precision)."""
    T, B, H, K, V, NT = chunk_dims(q, v, chunk_size)
    C = chunk_size
    prec = prec or dot_precision(k.dtype)
    BK, BV = tile_sizes(K, V, prec)
    h = chunk_states_fwd(k, v, h0, chunk_size, prec)
    dh = chunk_state_grads_bwd(q, do, dht, K, V, chunk_size, prec)
    dq = torch.empty(T, B, H, K, device=q.device, dtype=dq_dtype)
    dk = torch.empty(T, B, H, K, device=q.device, dtype=k.dtype)
    dv = torch.empty(T, B, H, V, device=q.device, dtype=v.dtype)
    linear_attn_dqk_kernel[(B * H, NT, triton.cdiv(K, BK))](
        q, k, v, do, h, dh, dq, dk, T, H, K, V,
        *strides4(q), *strides4(k), *strides4(v), *strides4(do), B * H * K, NT,
        C=C, BK=BK, BV=BV, PREC=prec, **launch_options(BK, BV),
    )
    linear_attn_dv_kernel[(B * H, NT, triton.cdiv(V, BV))](
        q, k, do, dh, dv, T, H, K, V,
        *strides4(q), *strides4(k), *strides4(do), B * H * V, NT,
        C=C, BK=BK, BV=BV, PREC=prec, **launch_options(BK, BV),
    )
    dh0 = dh[:, 0].reshape(B, H, K, V)
    return dq, dk, dv, dh0


PASSES = ChunkPasses(chunk_linear_attn_fwd, chunk_linear_attn_bwd)


def chunk_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Causal linear attention (sum rule) with Triton chunked kernels.

    q, k: ``[T, B, H, d_dot]``; v: ``[T, B, H, d_value]`` (time-major, any strides,
    float32/float16/bfloat16, one dtype; q may also be float32 with half k, v: see
    :func:`fwp_kernels.triton.common.kernel_query`). initial_state: ``[B, H, d_dot, d_value]``
    (S = W^T, used as float32; differentiable). Returns ``(o, final_state)``: o
    ``[T, B, H, d_value]`` in ``out_dtype`` (default v's dtype; the kernel accumulates o
    in float32 and rounds it once, when storing), final_state ``[B, H, d_dot, d_value]``
    float32 or None. No normalisation and no scaling are applied (see
    :func:`fwp_kernels.fast_weight_scan` for the attention normalisation, which asks for
    a float32 o: the un-normalised read grows with T and overflows float16). The
    gradient of o may come in any supported dtype (float32 from that division).
    """
    return chunk_scan(PASSES, q, k, v, (), initial_state, output_final_state, chunk_size, out_dtype)


__all__ = ["chunk_linear_attn", "chunk_linear_attn_fwd", "chunk_linear_attn_bwd"]
