"""Chunk-parallel PyTorch scans (the CPU path, differentiable by autograd).

Within a chunk of C tokens the delta updates are solved in closed form (the WY/UT
form): with A = tril(diag(c) K K^T, -1), the per-token "new values" are
U = (I + A)^{-1} (diag(beta) V - diag(c) K S_0), the outputs O = Q S_0 + tril(Q K^T) U
and the next state S_C = S_0 + K^T U. Across chunks one short loop carries S.
The sum rule is the special case c = 0, beta = 1 (U = V).

Everything is computed in the accumulation dtype (float32 for half inputs); ``out_dtype``
chooses the dtype the output is returned in (default v's). ``fast_weight_scan`` asks for
float32 when it divides by the attention normaliser afterwards: the un-normalised read
grows with the number of tokens written and leaves the float16 range at long context.
"""

from typing import Optional, Tuple

import torch

from .state import acc_dtype


def _to_chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """[T, B, H, *D] -> [B, H, N, C, *D] in the accumulation dtype, zero-padding T to N*C.

    Zero-padded keys and strengths are no-op updates, so the final state is exact."""
    T = x.shape[0]
    pad = (-T) % C
    x = x.to(acc_dtype(x.dtype))
    if pad:
        x = torch.cat([x, x.new_zeros((pad,) + x.shape[1:])], 0)
    x = x.reshape((x.shape[0] // C, C) + x.shape[1:])  # N, C, B, H, *D
    return x.permute(2, 3, 0, 1, *range(4, x.dim()))


def _from_chunks(o: torch.Tensor, T: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, H, N, C, V] -> [T, B, H, V]."""
    B, H, N, C, V = o.shape
    return o.permute(2, 3, 0, 1, 4).reshape(N * C, B, H, V)[:T].to(dtype)


def _per_chunk(*xs: torch.Tensor):
    """Each [B, H, N, ...] tensor as N per-chunk views. ``unbind`` (not ``x[:, :, n]``):
    its backward stacks the N gradients once, where indexing in the loop would add a
    full-size zero gradient per chunk, O(N^2) work (minutes of backward at T = 65,536)."""
    return [x.unbind(2) for x in xs]


def _empty(v: torch.Tensor, S: torch.Tensor, out_dtype: Optional[torch.dtype]):
    """The scan of a zero-length input: no outputs, the initial state unchanged."""
    return v.new_empty((0,) + tuple(v.shape[1:]), dtype=out_dtype or v.dtype), S


def _start(q, k, v, initial_state, chunk_size):
    """(T, C, Q, K, V chunked [B,H,N,C,D], S_0 [B,H,d_dot,d_value]) shared by both scans."""
    T, B, H, K = q.shape
    C = max(1, min(chunk_size, T))  # short sequences: one chunk, no padding
    Q, Kc, Vc = (_to_chunks(x, C) for x in (q, k, v))
    S = Q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(Q.dtype)
    return T, C, Q, Kc, Vc, S


def chunk_linear_attn_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Causal sum-rule scan. Returns (o [T,B,H,V] in ``out_dtype`` (default v's dtype),
    final S [B,H,K,V] float32)."""
    T, C, Q, Kc, Vc, S = _start(q, k, v, initial_state, chunk_size)
    if T == 0:
        return _empty(v, S, out_dtype)
    qk = torch.tril(Q @ Kc.transpose(-1, -2))  # [B,H,N,C,C], inclusive diagonal
    outs = []
    for Q_n, K_n, V_n, qk_n in zip(*_per_chunk(Q, Kc, Vc, qk)):
        outs.append(Q_n @ S + qk_n @ V_n)
        S = S + K_n.transpose(-1, -2) @ V_n
    return _from_chunks(torch.stack(outs, 2), T, out_dtype or v.dtype), S


def chunk_delta_rule_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    erase: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Causal delta-rule scan with write strength beta and erase strength c (= beta if None).
    Returns (o [T,B,H,V] in ``out_dtype`` (default v's dtype), final S [B,H,K,V] float32)."""
    T, C, Q, Kc, Vc, S = _start(q, k, v, initial_state, chunk_size)
    if T == 0:
        return _empty(v, S, out_dtype)
    V = v.shape[-1]
    b = _to_chunks(beta, C).unsqueeze(-1)  # [B,H,N,C,1]
    c = b if erase is None else _to_chunks(erase, C).unsqueeze(-1)
    kk = Kc @ Kc.transpose(-1, -2)
    eye = torch.eye(C, dtype=Q.dtype, device=Q.device)
    M = eye + torch.tril(c * kk, -1)  # I + A, unit lower triangular
    rhs = torch.cat([b * Vc, c * Kc], -1)
    X = torch.linalg.solve_triangular(M, rhs, upper=False, unitriangular=True)
    U0, Wk = X[..., :V], X[..., V:]  # U = U0 - Wk S_0
    qk = torch.tril(Q @ Kc.transpose(-1, -2))
    outs = []
    for Q_n, K_n, U0_n, Wk_n, qk_n in zip(*_per_chunk(Q, Kc, U0, Wk, qk)):
        U = U0_n - Wk_n @ S
        outs.append(Q_n @ S + qk_n @ U)
        S = S + K_n.transpose(-1, -2) @ U
    return _from_chunks(torch.stack(outs, 2), T, out_dtype or v.dtype), S
