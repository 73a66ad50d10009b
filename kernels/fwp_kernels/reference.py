"""Step-by-step reference of the fast weight programmer, written as the paper's equations.

This is the readable ground truth: one loop over time, the fast weight ``W`` in the
paper's orientation (``d_value x d_dot``). Run it in float64 to check every other path.
It is also the recurrent path used for one-token decoding steps.
"""

from typing import Optional, Tuple

import torch

from .state import EPS, FastWeightState, acc_dtype


def recurrent_fast_weight(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: Optional[torch.Tensor] = None,
    *,
    rule: str = "sum",
    attn_norm: bool = False,
    initial_state: Optional[FastWeightState] = None,
    output_final_state: bool = False,
    eps: float = EPS,
) -> Tuple[torch.Tensor, Optional[FastWeightState]]:
    """Run the fast weight recurrence one token at a time.

    q, k: phi(q), phi(k) as ``[T, B, H, d_dot]``; v: ``[T, B, H, d_value]``;
    beta: ``[T, B, H]`` write strengths (delta rule only).

    sum rule   (Eq. 17-19): W_i = W_{i-1} + v_i (x) k_i ; y_i = W_i q_i [/ (z_i . q_i)]
    delta rule (Eq. 20-25): vbar_i = W_{i-1} k_i ; W_i = W_{i-1} + beta_i (v_i - vbar_i) (x) k_i ;
                            y_i = W_i q_i   (the query reads the state after the write)
    delta + attention normalisation (Eq. 26-28): vbar_i = W_{i-1} k_i / (z_{i-1} . k_i),
                            y_i = W_i q_i / (z_i . q_i), with z_i = z_{i-1} + k_i (Eq. 18).
    """
    T, B, H, K = q.shape
    V = v.shape[-1]
    dt = acc_dtype(q.dtype)
    if initial_state is None:
        W = q.new_zeros(B, H, V, K, dtype=dt)
        z = q.new_zeros(B, H, K, dtype=dt)
    else:
        W = initial_state.S.to(dt).transpose(-1, -2)
        z = initial_state.z.to(dt) if initial_state.z is not None else q.new_zeros(B, H, K, dtype=dt)
    ys = []
    for i in range(T):
        q_i, k_i, v_i = q[i].to(dt), k[i].to(dt), v[i].to(dt)
        z_prev = z
        z = z + k_i  # Eq. 18
        if rule == "sum":
            W = W + v_i.unsqueeze(-1) * k_i.unsqueeze(-2)  # Eq. 17
        elif rule == "delta":
            vbar = torch.einsum("bhvk,bhk->bhv", W, k_i)  # Eq. 22
            if attn_norm:
                vbar = vbar / ((z_prev * k_i).sum(-1, keepdim=True) + eps)  # Eq. 26
            b_i = beta[i].to(dt).unsqueeze(-1)
            W = W + (b_i * (v_i - vbar)).unsqueeze(-1) * k_i.unsqueeze(-2)  # Eq. 23/27
        else:
            raise ValueError(f"rule must be 'sum' or 'delta', got {rule!r}")
        y = torch.einsum("bhvk,bhk->bhv", W, q_i)  # Eq. 19/25
        if attn_norm:
            y = y / ((z * q_i).sum(-1, keepdim=True) + eps)  # Eq. 19/28
        ys.append(y)
    out = torch.stack(ys, 0).to(v.dtype) if T else v.new_zeros(0, B, H, V)
    final = None
    if output_final_state:
        final = FastWeightState(W.transpose(-1, -2).contiguous(), z if attn_norm else None)
    return out, final
