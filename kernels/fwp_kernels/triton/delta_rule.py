"""Chunked delta rule (Eq. 20-25; with a separate erase strength, Eq. 26-27).

Maths (per batch b and head h; S = W^T is ``[d_dot, d_value]``)::

    S_t = S_{t-1} - c_t k_t (k_t^T S_{t-1}) + beta_t k_t v_t^T        o_t = S_t^T q_t

with write strength beta and erase strength c (c = beta for the plain delta rule; the
attention-normalised variant passes c_t = beta_t / (z_{t-1} . k_t)). In chunks of C
tokens with h_n the state before chunk n (the WY/UT form of
:mod:`fwp_kernels.chunk_torch`)::

    A   = tril(diag(c) K K^T, -1)           X = (I + A)^{-1}   (blocked forward substitution)
    W   = X diag(c) K                        U0 = X diag(beta) V
    U   = U0 - W h_n                         ("new values", one per token)
    O_n = Q h_n + tril(Q K^T) U              h_{n+1} = h_n + K^T U

Forward kernels: ``prepare`` (per chunk, parallel: A, X, W, U0), ``state`` (one
sequential pass over chunks per d_value tile: h_n and U), ``output`` (per chunk,
parallel; :func:`fwp_kernels.triton.common.chunk_output_kernel`, shared with linear
attention). The chunk-boundary states h_n live in a ``[B*H, N+1, d_dot, d_value]``
float32 buffer only while a forward or backward runs; backward saves just the inputs
and recomputes X, W, U0, h_n and U.

Backward, with dh_{N} = gradient of the final state, per chunk in reverse::

    dU   = triu(K Q^T) dO + K dh_{n+1}       dUX = X^T dU
    dh_n = dh_{n+1} + Q^T dO - K^T diag(c) dUX              (dh_0: initial state)
    dV   = diag(beta) dUX                    dbeta = rowsum(V * dUX)
    P    = dUX h_n^T                         dA = -tril(dUX U^T, -1)
    dQ   = dO h_n^T + tril(dO U^T) K
    dK   = triu(U dO^T) Q + U dh_{n+1}^T - diag(c) P + (diag(c) dA + dA^T diag(c)) K
    dc   = -rowsum(K * P) + rowsum(dA * K K^T)

(dc adds to dbeta when c = beta). The reverse pass over chunks is sequential (per
d_value tile) and also produces dV, dbeta; dQ, dK, dc are then parallel over chunks
and d_dot tiles.

Layout: q, k ``[T, B, H, d_dot]``, v ``[T, B, H, d_value]``, beta/erase ``[T, B, H]``,
time-major, read through their strides; states ``[B, H, d_dot, d_value]`` float32.

The sequential forward pass carries h_n in registers when d_dot <= REG_STATE_MAX_D_DOT
(fwp_kernels.triton.common; 64) and otherwise, like the reverse pass for dh_n, through the
global chunk-state buffer, so any d_dot (up to 512) is handled by a loop over d_dot
tiles; ``tl.debug_barrier()`` orders each chunk's writes before the next chunk's reads
within the program.
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .common import (
    ChunkPasses,
    batch_head,
    buffer_strides4,
    chunk_dims,
    chunk_output_fwd,
    chunk_scan,
    chunk_value_grad,
    chunked_to_time_major,
    dot_precision,
    launch_options,
    load_tile,
    load_vec,
    state_block,
    state_pass_options,
    store_tile,
    strides3,
    strides4,
    tile_sizes,
)

# --------------------------------------------------------------------------- kernels


#: Rows of the diagonal blocks that :func:`unit_lower_inverse` inverts by forward substitution.
INV_BLOCK = tl.constexpr(16)


@triton.jit
def unit_lower_inverse(b_a, C: tl.constexpr, PREC: tl.constexpr):
    """(I + A)^{-1} of a [C, C] strictly lower triangular A, in C/16 + 15 matrix products
    instead of C - 1 row steps.

    1. The 16 x 16 diagonal blocks D_b = I + A_bb, all at once: row r of D^{-1} is
       e_r - sum_{j<r, same block} A_rj (D^{-1})_j, so step s (1..15) finishes row s of
       every block with one product restricted to those rows.
    2. The strictly block-lower part L by block forward substitution: block row b of the
       inverse is D_b^{-1} (E_b - sum_{c<b} L_bc X_c), one product for the sum and one for
       D_b^{-1} per block row (rows of blocks c < b are final by then).
    Exact up to rounding (no series expansion; the products use the kernel's operand
    precision, tf32 for half inputs, so X carries tf32 rounding there); C must be a
    multiple of 16."""
    rows = tl.arange(0, C)
    blk = rows // INV_BLOCK
    same = blk[:, None] == blk[None, :]
    b_d = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)
    for s in range(1, INV_BLOCK):
        sel = (rows % INV_BLOCK) == s
        upd = tl.dot(tl.where(sel[:, None] & same, b_a, 0.0), b_d, input_precision=PREC)
        b_d = tl.where(sel[:, None], b_d - upd, b_d)
    b_x = b_d
    for b in range(1, C // INV_BLOCK):
        sel = blk == b
        b_r = tl.dot(tl.where(sel[:, None] & (blk[None, :] < b), b_a, 0.0), b_x, input_precision=PREC)
        b_x = tl.where(sel[:, None], b_x - tl.dot(b_d, b_r, input_precision=PREC), b_x)
    return b_x


@triton.jit
def delta_rule_prepare_kernel(
    k, v, beta, erase, x, w, u,
    T, H, K, V,
    s_kt, s_kb, s_kh, s_kd,
    s_vt, s_vb, s_vh, s_vd,
    s_bt, s_bb, s_bh,
    s_ct, s_cb, s_ch,
    NT,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (B*H, NT): X = (I + tril(diag(c) K K^T, -1))^{-1}, W = X diag(c) K, U0 = X diag(beta) V.

    x: [B*H, T_pad, C]; w: [B*H, T_pad, K]; u: [B*H, T_pad, V] (float32)."""
    i_bh, i_b, i_h = batch_head(H)
    n = tl.program_id(1)
    T_pad = NT * C
    k_base = k + i_b * s_kb + i_h * s_kh
    v_base = v + i_b * s_vb + i_h * s_vh
    b_beta = load_vec(beta + i_b * s_bb + i_h * s_bh, s_bt, n * C, T, C)
    b_c = load_vec(erase + i_b * s_cb + i_h * s_ch, s_ct, n * C, T, C)

    b_kk = tl.zeros([C, C], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_tile(k_base, s_kt, s_kd, n * C, i_k * BK, T, K, C, BK)
        b_kT = load_tile(k_base, s_kd, s_kt, i_k * BK, n * C, K, T, BK, C)
        b_kk += tl.dot(b_k, b_kT, input_precision=PREC)
    rows = tl.arange(0, C)
    b_a = tl.where(rows[:, None] > rows[None, :], b_c[:, None] * b_kk, 0.0)
    b_x = unit_lower_inverse(b_a, C, PREC)
    x_base = x + i_bh * T_pad * C
    store_tile(x_base, b_x, C, 1, n * C, 0, T_pad, C, C, C)

    w_base = w + i_bh * T_pad * K
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_tile(k_base, s_kt, s_kd, n * C, i_k * BK, T, K, C, BK)
        b_w = tl.dot(b_x, b_k * b_c[:, None], input_precision=PREC)
        store_tile(w_base, b_w, K, 1, n * C, i_k * BK, T_pad, K, C, BK)
    u_base = u + i_bh * T_pad * V
    for i_v in range(tl.cdiv(V, BV)):
        b_v = load_tile(v_base, s_vt, s_vd, n * C, i_v * BV, T, V, C, BV)
        b_u = tl.dot(b_x, b_v * b_beta[:, None], input_precision=PREC)
        store_tile(u_base, b_u, V, 1, n * C, i_v * BV, T_pad, V, C, BV)


@triton.jit
def delta_rule_state_fwd_kernel(
    k, w, u, h0, h, vnew,
    T, H, K, V,
    s_kt, s_kb, s_kh, s_kd,
    NT,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_H0: tl.constexpr, PREC: tl.constexpr, BKH: tl.constexpr,
):
    """Grid (B*H, NV): for n = 0..NT-1: U = U0 - W h_n, h_{n+1} = h_n + K^T U.

    h: [B*H, NT+1, K, V]; vnew (U): [B*H, T_pad, V] (float32). BKH > 0: the whole d_dot
    column of the state (BKH >= K) is carried in registers; BKH = 0: it is carried in h
    itself, d_dot tile by d_dot tile (any K)."""
    i_bh, i_b, i_h = batch_head(H)
    i_v = tl.program_id(1)
    T_pad = NT * C
    k_base = k + i_b * s_kb + i_h * s_kh
    w_base = w + i_bh * T_pad * K
    u_base = u + i_bh * T_pad * V
    vnew_base = vnew + i_bh * T_pad * V
    h_base = h + i_bh * (NT + 1) * K * V
    if BKH > 0:
        if HAS_H0:
            b_hr = load_tile(h0 + i_bh * K * V, V, 1, 0, i_v * BV, K, V, BKH, BV)
        else:
            b_hr = tl.zeros([BKH, BV], dtype=tl.float32)
        for n in range(NT):
            store_tile(h_base + n * K * V, b_hr, V, 1, 0, i_v * BV, K, V, BKH, BV)
            b_w = load_tile(w_base, K, 1, n * C, 0, T_pad, K, C, BKH)
            b_u = load_tile(u_base, V, 1, n * C, i_v * BV, T_pad, V, C, BV)
            b_u -= tl.dot(b_w, b_hr, input_precision=PREC)
            store_tile(vnew_base, b_u, V, 1, n * C, i_v * BV, T_pad, V, C, BV)
            b_kT = load_tile(k_base, s_kd, s_kt, 0, n * C, K, T, BKH, C)
            b_hr += tl.dot(b_kT, b_u, input_precision=PREC)
        store_tile(h_base + NT * K * V, b_hr, V, 1, 0, i_v * BV, K, V, BKH, BV)
    else:
        for i_k in range(tl.cdiv(K, BK)):
            if HAS_H0:
                b_h = load_tile(h0 + i_bh * K * V, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
            else:
                b_h = tl.zeros([BK, BV], dtype=tl.float32)
            store_tile(h_base, b_h, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
        tl.debug_barrier()
        for n in range(NT):
            hn_base = h_base + n * K * V
            b_u = load_tile(u_base, V, 1, n * C, i_v * BV, T_pad, V, C, BV)
            for i_k in range(tl.cdiv(K, BK)):
                b_w = load_tile(w_base, K, 1, n * C, i_k * BK, T_pad, K, C, BK)
                b_h = load_tile(hn_base, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
                b_u -= tl.dot(b_w, b_h, input_precision=PREC)
            store_tile(vnew_base, b_u, V, 1, n * C, i_v * BV, T_pad, V, C, BV)
            for i_k in range(tl.cdiv(K, BK)):
                b_h = load_tile(hn_base, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
                b_kT = load_tile(k_base, s_kd, s_kt, i_k * BK, n * C, K, T, BK, C)
                b_h += tl.dot(b_kT, b_u, input_precision=PREC)
                store_tile(hn_base + K * V, b_h, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
            tl.debug_barrier()


@triton.jit
def _delta_rule_dux(
    b_du, x_base, dux_base, beta_base, s_bt, erase_base, s_ct, v_base, s_vt, s_vd,
    dbeta_base, dv_base, s_gt, n, i_v, T, V, T_pad,
    C: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """One chunk of the reverse pass: dUX = X^T dU (stored),
    dV = diag(beta) dUX, this d_value tile's part of dbeta = rowsum(V * dUX).
    Returns (dUX, c) for the state-gradient update."""
    b_xT = load_tile(x_base, 1, C, 0, n * C, C, T_pad, C, C)  # X_n^T
    b_dux = tl.dot(b_xT, b_du, input_precision=PREC)
    store_tile(dux_base, b_dux, V, 1, n * C, i_v * BV, T_pad, V, C, BV)
    b_beta = load_vec(beta_base, s_bt, n * C, T, C)
    b_c = load_vec(erase_base, s_ct, n * C, T, C)
    b_v = load_tile(v_base, s_vt, s_vd, n * C, i_v * BV, T, V, C, BV)
    tl.store(dbeta_base + n * C + tl.arange(0, C), tl.sum(b_v * b_dux, 1))
    store_tile(dv_base, b_dux * b_beta[:, None], s_gt, 1, n * C, i_v * BV, T, V, C, BV)
    return b_dux, b_c


@triton.jit
def delta_rule_state_bwd_kernel(
    q, k, v, beta, erase, do, x, dht, dh, dux, dv, dbeta,
    T, H, K, V,
    s_qt, s_qb, s_qh, s_qd,
    s_kt, s_kb, s_kh, s_kd,
    s_vt, s_vb, s_vh, s_vd,
    s_bt, s_bb, s_bh,
    s_ct, s_cb, s_ch,
    s_dt, s_db, s_dh, s_dd,
    s_gt, NT,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DHT: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (B*H, NV): reverse pass over chunks.

    dU = triu(K Q^T) dO + K dh_{n+1}; dUX = X^T dU; dh_n = dh_{n+1} + Q^T dO - K^T diag(c) dUX;
    dV = diag(beta) dUX; dbeta partial (this d_value tile) = rowsum(V * dUX).
    dh: [B*H, NT+1, K, V]; dux: [B*H, T_pad, V]; dv: contiguous [T, B, H, V] (time stride
    s_gt); dbeta: [NV, B*H, T_pad] partial sums."""
    i_bh, i_b, i_h = batch_head(H)
    i_v = tl.program_id(1)
    T_pad = NT * C
    q_base = q + i_b * s_qb + i_h * s_qh
    k_base = k + i_b * s_kb + i_h * s_kh
    v_base = v + i_b * s_vb + i_h * s_vh
    do_base = do + i_b * s_db + i_h * s_dh
    dh_base = dh + i_bh * (NT + 1) * K * V
    dux_base = dux + i_bh * T_pad * V
    x_base = x + i_bh * T_pad * C
    beta_base = beta + i_b * s_bb + i_h * s_bh
    erase_base = erase + i_b * s_cb + i_h * s_ch
    dbeta_base = dbeta + (i_v * tl.num_programs(0) + i_bh) * T_pad
    for i_k in range(tl.cdiv(K, BK)):
        if HAS_DHT:
            b_dh = load_tile(dht + i_bh * K * V, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
        else:
            b_dh = tl.zeros([BK, BV], dtype=tl.float32)
        store_tile(dh_base + NT * K * V, b_dh, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
    tl.debug_barrier()
    for i in range(NT):
        n = NT - 1 - i
        dh_next = dh_base + (n + 1) * K * V
        b_du, b_do = chunk_value_grad(
            q_base, s_qt, s_qd, k_base, s_kt, s_kd, do_base, s_dt, s_dd, dh_next,
            n, i_v, T, K, V, C, BK, BV, PREC)
        b_dux, b_c = _delta_rule_dux(
            b_du, x_base, dux_base, beta_base, s_bt, erase_base, s_ct, v_base, s_vt, s_vd,
            dbeta_base, dv + i_bh * V, s_gt, n, i_v, T, V, T_pad, C, BV, PREC)
        for i_k in range(tl.cdiv(K, BK)):
            b_dh = load_tile(dh_next, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
            b_qT = load_tile(q_base, s_qd, s_qt, i_k * BK, n * C, K, T, BK, C)
            b_kT = load_tile(k_base, s_kd, s_kt, i_k * BK, n * C, K, T, BK, C)
            b_dh += tl.dot(b_qT, b_do, input_precision=PREC)
            b_dh -= tl.dot(b_kT * b_c[None, :], b_dux, input_precision=PREC)
            store_tile(dh_base + n * K * V, b_dh, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
        tl.debug_barrier()


@triton.jit
def delta_rule_dqk_kernel(
    q, k, erase, do, vnew, dux, h, dh, dq, dk, dc,
    T, H, K, V,
    s_qt, s_qb, s_qh, s_qd,
    s_kt, s_kb, s_kh, s_kd,
    s_ct, s_cb, s_ch,
    s_dt, s_db, s_dh, s_dd,
    s_gt, NT,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (B*H, NT, NK): dQ, dK (one d_dot tile) and this tile's share of dc.

    dq, dk: contiguous [T, B, H, K] (time stride s_gt); dc: [NK, B*H, T_pad] partial sums."""
    i_bh, i_b, i_h = batch_head(H)
    n = tl.program_id(1)
    i_k = tl.program_id(2)
    T_pad = NT * C
    do_base = do + i_b * s_db + i_h * s_dh
    u_base = vnew + i_bh * T_pad * V
    dux_base = dux + i_bh * T_pad * V
    h_base = h + (i_bh * (NT + 1) + n) * K * V
    dh_base = dh + (i_bh * (NT + 1) + n + 1) * K * V
    b_dq = tl.zeros([C, BK], dtype=tl.float32)
    b_dk = tl.zeros([C, BK], dtype=tl.float32)
    b_p = tl.zeros([C, BK], dtype=tl.float32)  # dUX h_n^T
    b_a = tl.zeros([C, C], dtype=tl.float32)  # dO U^T
    b_d = tl.zeros([C, C], dtype=tl.float32)  # dUX U^T
    for i_v in range(tl.cdiv(V, BV)):
        b_do = load_tile(do_base, s_dt, s_dd, n * C, i_v * BV, T, V, C, BV)
        b_u = load_tile(u_base, V, 1, n * C, i_v * BV, T_pad, V, C, BV)
        b_uT = load_tile(u_base, 1, V, i_v * BV, n * C, V, T_pad, BV, C)
        b_dux = load_tile(dux_base, V, 1, n * C, i_v * BV, T_pad, V, C, BV)
        b_hT = load_tile(h_base, 1, V, i_v * BV, i_k * BK, V, K, BV, BK)  # h_n^T
        b_dhT = load_tile(dh_base, 1, V, i_v * BV, i_k * BK, V, K, BV, BK)  # dh_{n+1}^T
        b_dq += tl.dot(b_do, b_hT, input_precision=PREC)
        b_dk += tl.dot(b_u, b_dhT, input_precision=PREC)
        b_p += tl.dot(b_dux, b_hT, input_precision=PREC)
        b_a += tl.dot(b_do, b_uT, input_precision=PREC)
        b_d += tl.dot(b_dux, b_uT, input_precision=PREC)
    rows = tl.arange(0, C)
    # U dO^T and U dUX^T are the transposes of the two accumulated products
    b_aT = tl.where(rows[:, None] <= rows[None, :], tl.trans(b_a), 0.0)
    b_dT = tl.where(rows[:, None] < rows[None, :], -tl.trans(b_d), 0.0)  # dA^T
    b_a = tl.where(rows[:, None] >= rows[None, :], b_a, 0.0)
    b_d = tl.where(rows[:, None] > rows[None, :], -b_d, 0.0)  # dA
    b_c = load_vec(erase + i_b * s_cb + i_h * s_ch, s_ct, n * C, T, C)
    q_base = q + i_b * s_qb + i_h * s_qh
    k_base = k + i_b * s_kb + i_h * s_kh
    b_q = load_tile(q_base, s_qt, s_qd, n * C, i_k * BK, T, K, C, BK)
    b_k = load_tile(k_base, s_kt, s_kd, n * C, i_k * BK, T, K, C, BK)
    b_kT = load_tile(k_base, s_kd, s_kt, i_k * BK, n * C, K, T, BK, C)
    b_dq += tl.dot(b_a, b_k, input_precision=PREC)
    b_dk += tl.dot(b_aT, b_q, input_precision=PREC)
    b_dk -= b_c[:, None] * b_p
    b_dk += tl.dot(b_d * b_c[:, None] + b_dT * b_c[None, :], b_k, input_precision=PREC)
    b_kk = tl.dot(b_k, b_kT, input_precision=PREC)  # this tile's part of K K^T
    b_dc = tl.sum(b_d * b_kk, 1) - tl.sum(b_k * b_p, 1)
    tl.store(dc + (i_k * tl.num_programs(0) + i_bh) * T_pad + n * C + rows, b_dc)
    store_tile(dq + i_bh * K, b_dq, s_gt, 1, n * C, i_k * BK, T, K, C, BK)
    store_tile(dk + i_bh * K, b_dk, s_gt, 1, n * C, i_k * BK, T, K, C, BK)


# ------------------------------------------------------------------ host wrappers


def delta_rule_prepare(k, v, beta, erase, chunk_size, prec):
    """(X [B*H, T_pad, C], W [B*H, T_pad, K], U0 [B*H, T_pad, V]) float32 per chunk."""
    T, B, H, K, V, NT = chunk_dims(k, v, chunk_size)
    C = chunk_size
    BK, BV = tile_sizes(K, V, prec)
    f32 = dict(device=k.device, dtype=torch.float32)
    x = torch.empty(B * H, NT * C, C, **f32)
    w = torch.empty(B * H, NT * C, K, **f32)
    u = torch.empty(B * H, NT * C, V, **f32)
    delta_rule_prepare_kernel[(B * H, NT)](
        k, v, beta, erase, x, w, u, T, H, K, V,
        *strides4(k), *strides4(v), *strides3(beta), *strides3(erase), NT,
        C=C, BK=BK, BV=BV, PREC=prec, **launch_options(BK, BV),
    )
    return x, w, u


def delta_rule_states_fwd(k, w, u, h0, chunk_size, prec):
    """(h [B*H, N+1, K, V], U [B*H, T_pad, V]) float32: chunk-boundary states and new values."""
    T, B, H, K, V, NT = chunk_dims(k, u, chunk_size)
    C = chunk_size
    BK, BV = tile_sizes(K, V, prec)
    h = torch.empty(B * H, NT + 1, K, V, device=k.device, dtype=torch.float32)
    vnew = torch.empty(B * H, NT * C, V, device=k.device, dtype=torch.float32)
    delta_rule_state_fwd_kernel[(B * H, triton.cdiv(V, BV))](
        k, w, u, h0 if h0 is not None else h, h, vnew, T, H, K, V,
        *strides4(k), NT,
        C=C, BK=BK, BV=BV, HAS_H0=h0 is not None, PREC=prec, BKH=state_block(K),
        **state_pass_options(K, BK, BV),
    )
    return h, vnew


def chunk_delta_rule_fwd(q, k, v, beta, erase, h0, chunk_size, out_dtype, prec=None):
    """Returns (o [T,B,H,V] in out_dtype, final state [B,H,K,V] float32). erase=None: c = beta;
    prec: the dot precision (default :func:`dot_precision` of k's dtype)."""
    prec = prec or dot_precision(k.dtype)
    T, B, H, K, V, NT = chunk_dims(q, v, chunk_size)
    x, w, u = delta_rule_prepare(k, v, beta, beta if erase is None else erase, chunk_size, prec)
    h, vnew = delta_rule_states_fwd(k, w, u, h0, chunk_size, prec)
    del x, w, u
    o = chunk_output_fwd(q, k, vnew, buffer_strides4(H, NT * chunk_size, V), h, out_dtype, chunk_size, prec)
    return o, h[:, -1].reshape(B, H, K, V)


def chunk_delta_rule_bwd(q, k, v, beta, erase, h0, do, dht, chunk_size, dq_dtype, prec=None):
    """Gradients (dq in dq_dtype, dk, dv, dbeta, derase or None, dh0) with everything
    recomputed from the inputs and h0 (prec: the forward's dot precision)."""
    T, B, H, K, V, NT = chunk_dims(q, v, chunk_size)
    C = chunk_size
    prec = prec or dot_precision(k.dtype)
    BK, BV = tile_sizes(K, V, prec)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    c = beta if erase is None else erase
    x, w, u = delta_rule_prepare(k, v, beta, c, C, prec)
    h, vnew = delta_rule_states_fwd(k, w, u, h0, C, prec)
    del w, u

    f32 = dict(device=q.device, dtype=torch.float32)
    dh = torch.empty(B * H, NT + 1, K, V, **f32)
    dux = torch.empty(B * H, NT * C, V, **f32)
    dbeta_part = torch.empty(NV, B * H, NT * C, **f32)
    dv = torch.empty(T, B, H, V, device=q.device, dtype=v.dtype)
    delta_rule_state_bwd_kernel[(B * H, NV)](
        q, k, v, beta, c, do, x, dht if dht is not None else dh, dh, dux, dv, dbeta_part,
        T, H, K, V,
        *strides4(q), *strides4(k), *strides4(v), *strides3(beta), *strides3(c), *strides4(do),
        B * H * V, NT,
        C=C, BK=BK, BV=BV, HAS_DHT=dht is not None, PREC=prec, **launch_options(BK, BV),
    )
    del x
    dq = torch.empty(T, B, H, K, device=q.device, dtype=dq_dtype)
    dk = torch.empty(T, B, H, K, device=q.device, dtype=k.dtype)
    dc_part = torch.empty(NK, B * H, NT * C, **f32)
    delta_rule_dqk_kernel[(B * H, NT, NK)](
        q, k, c, do, vnew, dux, h, dh, dq, dk, dc_part,
        T, H, K, V,
        *strides4(q), *strides4(k), *strides3(c), *strides4(do),
        B * H * K, NT,
        C=C, BK=BK, BV=BV, PREC=prec, **launch_options(BK, BV),
    )
    dbeta = chunked_to_time_major(dbeta_part.sum(0), B, H, T)
    dc = chunked_to_time_major(dc_part.sum(0), B, H, T)
    if erase is None:
        dbeta, derase = dbeta + dc, None
    else:
        derase = dc.to(erase.dtype)
    dh0 = dh[:, 0].reshape(B, H, K, V)
    return dq, dk, dv, dbeta.to(beta.dtype), derase, dh0


PASSES = ChunkPasses(chunk_delta_rule_fwd, chunk_delta_rule_bwd)


def chunk_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    erase: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Causal delta rule with Triton chunked kernels (differentiable in every input).

    beta: write strengths ``[T, B, H]``; erase: optional erase strengths ``[T, B, H]``
    (default: beta), in a supported dtype. q, k, v, initial_state, out_dtype and the
    returned ``(o, final_state)`` are as in
    :func:`fwp_kernels.triton.linear_attn.chunk_linear_attn`. Keys are used as given (the
    model sum-normalises them, Eq. 29).
    """
    strengths = (("beta", beta, True), ("erase", erase, False))
    return chunk_scan(PASSES, q, k, v, strengths, initial_state, output_final_state, chunk_size, out_dtype)


__all__ = ["chunk_delta_rule", "chunk_delta_rule_fwd", "chunk_delta_rule_bwd"]
