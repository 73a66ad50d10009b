"""One entry point for every fast weight scan: checks inputs, applies the attention
normalisation around an un-normalised core scan, and picks the implementation.

Implementations (``impl``):
  * ``"recurrent"`` - the step-by-step reference (:mod:`fwp_kernels.reference`); used for
    decoding steps (T = 1) and as ground truth.
  * ``"chunk"``     - chunk-parallel PyTorch (:mod:`fwp_kernels.chunk_torch`); the CPU path.
  * ``"triton"``    - chunk-parallel Triton kernels (:mod:`fwp_kernels.triton`; CUDA only).
  * ``"auto"``      - ``"triton"`` on CUDA when registered, importable and the sizes fit
    (one-token step kernels when T = 1 and no gradient is needed), else ``"recurrent"``
    for T = 1 and ``"chunk"`` otherwise.

A core implementation provides ``linear_attn(q, k, v, S0, out_dtype) -> (o, S)`` and
``delta_rule(q, k, v, beta, erase, S0, out_dtype) -> (o, S)`` on un-normalised inputs,
returning the un-normalised read o in ``out_dtype``. With the attention normalisation
that is float32 (the accumulation dtype): o = S^T phi(q) grows with the number of tokens
written (about T times a typical phi(k).phi(q) v) and leaves the float16 range (65504)
at long context, while o / (z . phi(q)) stays within the values' range. The division is
done here on the float32 o, the result is cast to the activation dtype once, and the
gradient that reaches the core (dy / (z . phi(q)), which would underflow in float16) is
float32 as well. The core then also gets phi(q) in float32 (with half phi(k), v), so
that dq is float32 too. See docs/design.md, "Precision".
"""

from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from .reference import recurrent_fast_weight
from .state import EPS, FastWeightState, acc_dtype

__all__ = ["FastWeightState", "fast_weight_scan", "available_impls"]


class CoreImpl(NamedTuple):
    linear_attn: Callable
    delta_rule: Callable
    supports: Callable[[torch.Tensor, torch.Tensor], bool]  # (q, v) -> can this core run them?


def _torch_core() -> CoreImpl:
    from .chunk_torch import chunk_delta_rule_torch, chunk_linear_attn_torch

    return CoreImpl(
        linear_attn=lambda q, k, v, S0, od: chunk_linear_attn_torch(q, k, v, S0, out_dtype=od),
        delta_rule=lambda q, k, v, b, c, S0, od: chunk_delta_rule_torch(q, k, v, b, c, S0, out_dtype=od),
        supports=lambda q, v: True,
    )


def _decoding_step(q: torch.Tensor, *tensors) -> bool:
    """One token and no gradient wanted: the one-token step kernels apply (incremental decoding)."""
    return q.shape[0] == 1 and not (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q,) + tensors)
    )


def _triton_core() -> CoreImpl:
    """The Triton kernels (:mod:`fwp_kernels.triton`):
    chunked forward/backward, and the one-token step kernels for decoding (T = 1, no grad).

    Imported on first use only (importing fwp_kernels never imports Triton). Supports
    float32/float16/bfloat16 tensors on CUDA, or on CPU under ``TRITON_INTERPRET=1``."""
    import os

    from .triton import chunk_delta_rule, chunk_linear_attn, delta_rule_step, linear_attn_step
    from .triton.common import MAX_D_DOT, MAX_D_VALUE

    def zero_state(q, v):
        return q.new_zeros(q.shape[1], q.shape[2], q.shape[3], v.shape[3], dtype=torch.float32)

    def linear_attn(q, k, v, S0, out_dtype):
        if _decoding_step(q, k, v, S0):
            return linear_attn_step(q, k, v, zero_state(q, v) if S0 is None else S0, out_dtype=out_dtype)
        return chunk_linear_attn(q, k, v, initial_state=S0, output_final_state=True, out_dtype=out_dtype)

    def delta_rule(q, k, v, b, c, S0, out_dtype):
        if _decoding_step(q, k, v, b, c, S0):
            return delta_rule_step(q, k, v, b, zero_state(q, v) if S0 is None else S0, erase=c, out_dtype=out_dtype)
        return chunk_delta_rule(
            q, k, v, b, erase=c, initial_state=S0, output_final_state=True, out_dtype=out_dtype
        )

    def supports(q: torch.Tensor, v: torch.Tensor) -> bool:
        on_device = q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
        return (
            on_device
            and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and q.shape[-1] <= MAX_D_DOT
            and v.shape[-1] <= MAX_D_VALUE
        )

    return CoreImpl(linear_attn=linear_attn, delta_rule=delta_rule, supports=supports)


_LOADERS: Dict[str, Callable[[], CoreImpl]] = {"chunk": _torch_core, "triton": _triton_core}
_LOADED: Dict[str, CoreImpl] = {}


def available_impls():
    return ["auto", "recurrent"] + sorted(_LOADERS)


def _core(name: str) -> CoreImpl:
    if name not in _LOADED:
        _LOADED[name] = _LOADERS[name]()
    return _LOADED[name]


def _auto_impl(q: torch.Tensor, v: torch.Tensor) -> str:
    """Same maths everywhere; only speed differs. On CUDA the Triton kernels (chunked, or the
    step kernels for one decoding token); sizes beyond their tiles and CPU tensors use the
    PyTorch paths ("recurrent" for one token, else "chunk")."""
    if q.is_cuda and "triton" in _LOADERS:
        try:
            if _core("triton").supports(q, v):
                return "triton"
        except ImportError:
            pass
    return "recurrent" if q.shape[0] == 1 else "chunk"


def _check(q, k, v, beta, rule, initial_state):
    if rule not in ("sum", "delta"):
        raise ValueError(f"rule must be 'sum' or 'delta', got {rule!r}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be [T, B, H, D] (time-major), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape [T, B, H, d_dot], got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [T, B, H, d_value] matching q's [T, B, H] = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if rule == "delta":
        if beta is None:
            raise ValueError("beta ([T, B, H] write strengths) is required for rule='delta'")
        if beta.shape != q.shape[:3]:
            raise ValueError(f"beta must be [T, B, H] = {tuple(q.shape[:3])}, got {tuple(beta.shape)}")
    if initial_state is not None:
        T, B, H, K = q.shape
        want = (B, H, K, v.shape[-1])
        if tuple(initial_state.S.shape) != want:
            raise ValueError(f"initial_state.S must be [B, H, d_dot, d_value] = {want}, got {tuple(initial_state.S.shape)}")
        if initial_state.z is not None and tuple(initial_state.z.shape) != want[:3]:
            raise ValueError(f"initial_state.z must be [B, H, d_dot] = {want[:3]}, got {tuple(initial_state.z.shape)}")


def fast_weight_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: Optional[torch.Tensor] = None,
    *,
    rule: str = "sum",
    attn_norm: bool = False,
    initial_state: Optional[FastWeightState] = None,
    output_final_state: bool = False,
    impl: str = "auto",
) -> Tuple[torch.Tensor, Optional[FastWeightState]]:
    """Causal fast weight scan over phi(q), phi(k) ``[T,B,H,d_dot]`` and v ``[T,B,H,d_value]``.

    rule="sum": linear attention (Eq. 17-19); rule="delta": delta rule with write
    strength ``beta`` ``[T,B,H]`` (Eq. 20-25). ``attn_norm`` divides every read by
    ``z . phi(q)`` (Eq. 19/28) and, for the delta rule, the retrieved value by
    ``z . phi(k)`` (Eq. 26), which is the same recurrence with erase strength
    ``c_i = beta_i / (z_{i-1} . phi(k_i))``. Returns ``(out [T,B,H,d_value], state or None)``.
    q, k, v of different dtypes are computed in their common (widest) dtype; the output
    has that dtype, states are float32 (float64 for float64 inputs). With ``attn_norm``
    the division is done on float32 values on every implementation, so half-precision
    inputs give finite outputs at any context length (the un-normalised read
    S^T phi(q) is never rounded to the input dtype).
    """
    _check(q, k, v, beta, rule, initial_state)
    if not (q.dtype == k.dtype == v.dtype):
        # mixed inputs (e.g. float32 phi with half v) run in their common, widest dtype
        dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    if impl == "auto":
        impl = _auto_impl(q, v)
    if impl == "recurrent":
        return recurrent_fast_weight(
            q, k, v, beta, rule=rule, attn_norm=attn_norm,
            initial_state=initial_state, output_final_state=output_final_state,
        )
    if impl not in _LOADERS:
        raise ValueError(f"impl must be one of {available_impls()}, got {impl!r}")
    core = _core(impl)

    S0 = None if initial_state is None else initial_state.S
    z_incl = None
    erase = None
    if attn_norm:
        dt = acc_dtype(q.dtype)
        # one float32 q for the read and the denominator: the two parts of dq (through
        # S^T q and through z . q) nearly cancel at long context, so they are added in
        # float32 and rounded to q's dtype once
        q = q.to(dt)
        kf = k.to(dt)
        z_incl = torch.cumsum(kf, 0)  # z_i (Eq. 18), [T,B,H,K]
        if initial_state is not None and initial_state.z is not None:
            z_incl = z_incl + initial_state.z.to(dt)
        if rule == "delta":
            z_prev = z_incl - kf
            erase = beta.to(dt) / ((z_prev * kf).sum(-1) + EPS)  # c_i of Eq. 26-27
    # the un-normalised read of an attention-normalised scan stays float32 (see module doc)
    out_dtype = z_incl.dtype if attn_norm else v.dtype
    if rule == "sum":
        out, S = core.linear_attn(q, k, v, S0, out_dtype)
    else:
        out, S = core.delta_rule(q, k, v, beta, erase, S0, out_dtype)
    if attn_norm:
        denom = (z_incl * q).sum(-1, keepdim=True) + EPS  # Eq. 19/28
        out = (out / denom).to(v.dtype)
    final = None
    if output_final_state:
        if attn_norm:
            if q.shape[0]:
                z_final = z_incl[-1]
            elif initial_state is not None and initial_state.z is not None:
                z_final = initial_state.z
            else:  # no tokens and no normaliser yet: z = 0 (as the step-by-step path starts)
                z_final = q.new_zeros(q.shape[1:], dtype=z_incl.dtype)
        else:
            z_final = None
        final = FastWeightState(S, z_final)
    return out, final
