"""The pieces every Triton kernel of :mod:`fwp_kernels.triton` shares: layout conventions,
dot precision, tiles and launch options, input checks, tile load/store helpers, the
chunk output kernel of both chunked rules, and the public wrappers' prologue and
autograd glue (:func:`chunk_scan`).

Layout conventions used by every kernel
---------------------------------------
* Inputs are time-major ``[T, B, H, D]`` and are read through their four strides
  ``(s_t, s_b, s_h, s_d)``, so a non-contiguous view of fairseq's ``[T, B, H*D]``
  activations is consumed without a transposing copy. Strengths (beta, erase) are
  ``[T, B, H]``, read the same way.
* Kernel-internal buffers are indexed by ``bh = b * H + h`` and padded to
  ``T_pad = N * C`` tokens (N chunks of C tokens): per-token buffers are
  ``[B*H, T_pad, D]`` float32, chunk-boundary states ``[B*H, N + 1, d_dot, d_value]``
  float32 (entry n is the state *before* chunk n; entry N is the final state).
* The state ``S`` is ``[B, H, d_dot, d_value]`` = W^T of the paper: a read is
  ``o = S^T q``, a write ``S += k v^T``.
* Every ``tl.dot`` takes float32 operands and accumulates in float32. The operand
  precision is a compile-time choice (:func:`dot_precision`): ``"tf32x3"`` (about fp32
  accurate) for float32 inputs, ``"tf32"`` for fp16/bf16 inputs (exact for their
  mantissas, and fp32 range, so chunk states never overflow as they can in fp16).
  ``FWP_TRITON_DOT_PRECISION`` overrides it (``ieee``, ``tf32x3``, ``tf32``).
"""

import contextlib
import os
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Largest d_dot / d_value the kernels accept (register tiles are blocked, the limit is
#: only what has been tested).
MAX_D_DOT = 512
MAX_D_VALUE = 256


def is_interpreter() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def dot_precision(dtype: torch.dtype, float32_query: bool = False) -> str:
    """Operand precision of ``tl.dot`` for inputs of ``dtype`` (see module docstring).

    ``float32_query``: q arrives in float32 next to half k, v (the attention-normalised
    scans of :func:`fwp_kernels.fast_weight_scan`). Their dq is the difference of two
    nearly equal float32 parts (through S^T q and through z . q) and the products then
    involve float32 operands (the carried state, dO = dy / (z . q), the delta rule's new
    values) that tf32 would round to 10 mantissa bits: on an H200 that gave dq errors of
    10-33% at T = 65,536. So these scans take ``"tf32x3"`` (about float32 accurate) in
    every kernel, forward and backward, at about three times the dot cost."""
    override = os.environ.get("FWP_TRITON_DOT_PRECISION")
    if override:
        return override
    return "tf32x3" if dtype == torch.float32 or float32_query else "tf32"


def block_size(d: int, cap: int) -> int:
    """Tile width for a feature dimension of size d: a power of two in [16, cap]."""
    return max(16, min(cap, triton.next_power_of_2(d)))


#: Warps per program and software-pipelining depth of the chunk kernels (None: Triton's
#: default for the target) when both tiles are 32 wide. Chosen on an H200
#: (scripts/tune_kernels.py, bf16, T = 8192, d_dot 64, 16K tokens; docs/benchmarks.md):
#: 4 warps and 3 stages ran the delta rule's forward+backward in 2.68 ms against 4.00 ms
#: with 8 warps (the sum rule within noise, 1.04 vs 1.05 ms), and passed every value and
#: gradient check there (tests/test_triton_kernels.py::test_every_launch_configuration).
NUM_WARPS = 4
NUM_STAGES: Optional[int] = 3

#: The same for a 16-wide tile (d_dot or d_value <= 16 in half precision): the
#: configuration the whole suite passed with on the H200. 4 warps on 16-wide tiles have
#: not run on a GPU yet (fla met a num_warps=4 miscompile at chunk 64, fla #984), so they
#: stay at 8 until test_every_launch_configuration's narrow cases pass on one.
NARROW_NUM_WARPS = 8
NARROW_NUM_STAGES: Optional[int] = None


def launch_options(BK: int = 32, BV: int = 32) -> dict:
    """``num_warps`` / ``num_stages`` of a chunk-kernel launch with tiles BK x BV, read at
    launch time from :data:`NUM_WARPS` / :data:`NUM_STAGES` (both tiles 32 wide) or
    :data:`NARROW_NUM_WARPS` / :data:`NARROW_NUM_STAGES` (a 16-wide tile), so tests and
    ``scripts/tune_kernels.py`` can run every configuration; the interpreter ignores both."""
    narrow = min(BK, BV) < 32
    warps, stages = (NARROW_NUM_WARPS, NARROW_NUM_STAGES) if narrow else (NUM_WARPS, NUM_STAGES)
    opts = {"num_warps": warps}
    if stages is not None:
        opts["num_stages"] = stages
    return opts


#: Narrowest d_dot / d_value tile on a GPU for "tf32x3" dots (float32 inputs, and the
#: attention-normalised half-precision scans). On an H200 (Triton 3.6, ptxas 12.8) the
#: backward dq/dk kernels (``linear_attn_dqk_kernel``, ``delta_rule_dqk_kernel``, both
#: with a transposed C x C product) hit an illegal memory access with 16-wide tiles at
#: chunk size 64 under tf32x3, never under "tf32" or "ieee": such tiles are padded to 32
#: (masked; the same maths).
MIN_TILE_TF32X3 = 32


def tile_sizes(d_dot: int, d_value: int, prec: Optional[str] = None) -> Tuple[int, int]:
    """(BK, BV) tiles of d_dot and d_value for dots of precision ``prec``: 32 on a GPU
    (shared-memory / register budget, see NUM_WARPS), down to 16 for small sizes except
    under "tf32x3" (:data:`MIN_TILE_TF32X3`); the interpreter gets wider tiles (fewer,
    larger numpy ops)."""
    if is_interpreter():
        return block_size(d_dot, 128), block_size(d_value, 128)
    lo = MIN_TILE_TF32X3 if prec == "tf32x3" else 16
    return max(lo, block_size(d_dot, 32)), max(lo, block_size(d_value, 32))


#: Largest d_dot whose whole state column (d_dot x one d_value tile) the sequential
#: forward pass of the delta rule carries in registers; above it the pass carries the
#: state through the chunk-state buffer in global memory, one d_dot tile at a time (a
#: store, a block barrier and a reload per chunk). Chosen from static resource use on
#: sm_90 (scripts/kernel_resources.py; no GPU timing yet): at 64 the bf16 pass compiles
#: without spills, at 128 it spills. The reverse pass always uses the global-memory form:
#: a register version spilled ~460 bytes per thread in bf16 against 8.
REG_STATE_MAX_D_DOT = 64

#: Software-pipelining depth of the register-state forward pass (prefetches the next
#: chunk's W, U0 and K while this chunk's products run): 3 with 32-wide tiles (tuned with
#: NUM_WARPS = 4 on the H200), 2 with a 16-wide tile (as tested there).
REG_STATE_STAGES = 3
NARROW_REG_STATE_STAGES = 2


def state_block(d_dot: int) -> int:
    """BKH of the delta-rule state forward pass: the padded d_dot when the state column
    stays in registers (d_dot <= :data:`REG_STATE_MAX_D_DOT`), else 0 (global-memory path)."""
    return block_size(d_dot, REG_STATE_MAX_D_DOT) if d_dot <= REG_STATE_MAX_D_DOT else 0


def state_pass_options(d_dot: int, BK: int = 32, BV: int = 32) -> dict:
    """Launch options of the delta-rule state forward pass: :func:`launch_options`, with
    ``num_stages`` = :data:`REG_STATE_STAGES` (:data:`NARROW_REG_STATE_STAGES` for a
    16-wide tile) on the register path."""
    opts = launch_options(BK, BV)
    if state_block(d_dot):
        opts["num_stages"] = NARROW_REG_STATE_STAGES if min(BK, BV) < 32 else REG_STATE_STAGES
    return opts


def strides4(x: torch.Tensor) -> Tuple[int, int, int, int]:
    """(s_t, s_b, s_h, s_d) of a time-major [T, B, H, D] tensor."""
    return tuple(x.stride())  # type: ignore[return-value]


def strides3(x: Optional[torch.Tensor]) -> Tuple[int, int, int]:
    """(s_t, s_b, s_h) of a [T, B, H] strength tensor (zeros for None)."""
    return (0, 0, 0) if x is None else tuple(x.stride())  # type: ignore[return-value]


def buffer_strides4(H: int, T_pad: int, D: int) -> Tuple[int, int, int, int]:
    """(s_t, s_b, s_h, s_d) of a contiguous [B*H, T_pad, D] buffer seen as [T, B, H, D]."""
    return (D, H * T_pad * D, T_pad * D, 1)


def chunked_to_time_major(x: torch.Tensor, B: int, H: int, T: int) -> torch.Tensor:
    """[B*H, T_pad] -> [T, B, H] (a view)."""
    return x.view(B, H, -1).permute(2, 0, 1)[:T]


def chunk_dims(x: torch.Tensor, y: torch.Tensor, chunk_size: int) -> Tuple[int, int, int, int, int, int]:
    """(T, B, H, K, V, NT) of a chunked launch over x ``[T, B, H, K]`` (q or k) and y
    (anything whose last size is d_value): NT chunks of ``chunk_size`` tokens."""
    T, B, H, K = x.shape
    return T, B, H, K, y.shape[-1], triton.cdiv(T, chunk_size)


def device_guard(x: torch.Tensor):
    """Launch on x's GPU (multi-GPU safety); nothing to do for CPU/interpreter tensors."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


# --------------------------------------------------------------------------- checks


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Tuple[int, int, int, int, int]:
    """Validate q, k ``[T,B,H,d_dot]`` and v ``[T,B,H,d_value]``; return (T, B, H, K, V).

    k and v share a dtype; q has it too, or is float32 (see :func:`kernel_query`). The
    dot precision follows k's dtype."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be time-major [T, B, H, D], got shape {tuple(x.shape)}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if not (q.is_cuda or is_interpreter()):
        raise ValueError(
            f"q is on {q.device}: the Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 on CPU)"
        )
    if v.dtype != k.dtype or q.dtype not in (k.dtype, torch.float32):
        raise TypeError(
            f"q, k and v must share a dtype (q may also be float32), got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [T, B, H, d_dot] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [T, B, H, d_value] with q's [T, B, H] = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    T, B, H, K = q.shape
    V = v.shape[-1]
    if not 1 <= K <= MAX_D_DOT:
        raise ValueError(f"q/k feature size d_dot must be in [1, {MAX_D_DOT}], got {K}")
    if not 1 <= V <= MAX_D_VALUE:
        raise ValueError(f"v feature size d_value must be in [1, {MAX_D_VALUE}], got {V}")
    return T, B, H, K, V


def check_strength(name: str, x: torch.Tensor, q: torch.Tensor) -> None:
    """Validate a per-token strength (beta, erase): ``[T, B, H]`` floating, on q's device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.shape != q.shape[:3]:
        raise ValueError(f"{name} must be [T, B, H] = {tuple(q.shape[:3])}, got {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if x.device != q.device:
        raise ValueError(f"{name} is on {x.device} but q is on {q.device}")


def check_state(name: str, S: torch.Tensor, q: torch.Tensor, K: int, V: int) -> None:
    """Validate a fast weight state ``[B, H, d_dot, d_value]`` (any float dtype; used as fp32)."""
    if not isinstance(S, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, H, d_dot, d_value], got {type(S).__name__}")
    B, H = q.shape[1], q.shape[2]
    if tuple(S.shape) != (B, H, K, V):
        raise ValueError(f"{name} must be [B, H, d_dot, d_value] = {(B, H, K, V)}, got {tuple(S.shape)}")
    if not S.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {S.dtype}")
    if S.device != q.device:
        raise ValueError(f"{name} is on {S.device} but q is on {q.device}")


def check_out_dtype(out_dtype: Optional[torch.dtype], v: torch.Tensor) -> torch.dtype:
    """The dtype an output is stored in: v's by default, or one of the supported dtypes
    (float32 for a read that is divided by the attention normaliser afterwards)."""
    if out_dtype is None:
        return v.dtype
    if out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16 (or None: v's dtype), got {out_dtype}")
    return out_dtype


def kernel_query(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The q the chunked kernels read: q itself, or for a float32 q next to half k, v
    q rounded to k's dtype, while its gradient dq is still stored in float32.

    The attention-normalised scans (:func:`fwp_kernels.fast_weight_scan`) pass phi(q)
    upcast from the activation dtype, so this rounding is exact there; what they need is
    the float32 dq (its two parts, through S^T q and through z . q, nearly cancel at long
    context and must be added before rounding). Reading q in half keeps the kernels'
    register budget: with float32 q tiles the delta rule's reverse pass spills ~340
    bytes per thread on sm_90 (8 with half q; scripts/kernel_resources.py). The one-token
    step kernels have no such pressure and read a float32 q as it is."""
    return q if q.dtype == k.dtype else q.to(k.dtype)


def check_chunk_size(chunk_size: int) -> None:
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"chunk_size must be one of 16, 32, 64, got {chunk_size}")


# ------------------------------------------------------------------ device helpers


@triton.jit
def load_tile(ptr, s_r, s_c, r0, c0, n_r, n_c, BR: tl.constexpr, BC: tl.constexpr):
    """Load a [BR, BC] float32 tile at rows r0.., cols c0.. of a strided 2-D view,
    zero outside ``rows < n_r``, ``cols < n_c``."""
    r = r0 + tl.arange(0, BR)
    c = c0 + tl.arange(0, BC)
    m = (r[:, None] < n_r) & (c[None, :] < n_c)
    return tl.load(ptr + r[:, None] * s_r + c[None, :] * s_c, mask=m, other=0.0).to(tl.float32)


@triton.jit
def store_tile(ptr, x, s_r, s_c, r0, c0, n_r, n_c, BR: tl.constexpr, BC: tl.constexpr):
    """Store a [BR, BC] tile (cast to the pointer's dtype) inside ``rows < n_r``, ``cols < n_c``."""
    r = r0 + tl.arange(0, BR)
    c = c0 + tl.arange(0, BC)
    m = (r[:, None] < n_r) & (c[None, :] < n_c)
    tl.store(ptr + r[:, None] * s_r + c[None, :] * s_c, x.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def load_vec(ptr, s, r0, n, BR: tl.constexpr):
    """Load a [BR] float32 vector at r0.. with stride s, zero outside ``r < n``."""
    r = r0 + tl.arange(0, BR)
    return tl.load(ptr + r * s, mask=r < n, other=0.0).to(tl.float32)


@triton.jit
def batch_head(H):
    """(i_bh, i_b, i_h) of a program whose first grid axis runs over batch*head; i_bh is
    int64, so offsets such as ``i_bh * (NT + 1) * K * V`` cannot overflow."""
    i_bh = tl.program_id(0).to(tl.int64)
    return i_bh, i_bh // H, i_bh % H


@triton.jit
def chunk_value_grad(
    q_base, s_qt, s_qd, k_base, s_kt, s_kd, do_base, s_dt, s_dd, dh_next,
    n, i_v, T, K, V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """dU = triu(K Q^T) dO + K dh_{n+1} for chunk n and one d_value tile: the gradient of
    what the chunk writes (V for the sum rule, the new values U for the delta rule).
    dh_next points at dh_{n+1} ([K, V] float32). Returns (dU, dO)."""
    b_du = tl.zeros([C, BV], dtype=tl.float32)
    b_sT = tl.zeros([C, C], dtype=tl.float32)  # K Q^T
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_tile(k_base, s_kt, s_kd, n * C, i_k * BK, T, K, C, BK)
        b_qT = load_tile(q_base, s_qd, s_qt, i_k * BK, n * C, K, T, BK, C)
        b_dh = load_tile(dh_next, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
        b_du += tl.dot(b_k, b_dh, input_precision=PREC)
        b_sT += tl.dot(b_k, b_qT, input_precision=PREC)
    rows = tl.arange(0, C)
    b_sT = tl.where(rows[:, None] <= rows[None, :], b_sT, 0.0)
    b_do = load_tile(do_base, s_dt, s_dd, n * C, i_v * BV, T, V, C, BV)
    b_du += tl.dot(b_sT, b_do, input_precision=PREC)
    return b_du, b_do


# ------------------------------------------------------------- chunk output (both rules)


@triton.jit
def chunk_output_kernel(
    q, k, u, h, o,
    T, H, K, V,
    s_qt, s_qb, s_qh, s_qd,
    s_kt, s_kb, s_kh, s_kd,
    s_ut, s_ub, s_uh, s_ud,
    s_ot, s_ob, s_oh, s_od,
    NT,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (B*H, NT, NV): O_n = Q h_n + tril(Q K^T) U for one chunk and one d_value tile
    (U = V for the sum rule, the chunk's new values for the delta rule)."""
    i_bh, i_b, i_h = batch_head(H)
    n = tl.program_id(1)
    i_v = tl.program_id(2)
    q_base = q + i_b * s_qb + i_h * s_qh
    k_base = k + i_b * s_kb + i_h * s_kh
    h_base = h + (i_bh * (NT + 1) + n) * K * V
    b_o = tl.zeros([C, BV], dtype=tl.float32)
    b_s = tl.zeros([C, C], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_q = load_tile(q_base, s_qt, s_qd, n * C, i_k * BK, T, K, C, BK)  # [C, BK]
        b_kT = load_tile(k_base, s_kd, s_kt, i_k * BK, n * C, K, T, BK, C)  # [BK, C]
        b_h = load_tile(h_base, V, 1, i_k * BK, i_v * BV, K, V, BK, BV)
        b_o += tl.dot(b_q, b_h, input_precision=PREC)
        b_s += tl.dot(b_q, b_kT, input_precision=PREC)
    rows = tl.arange(0, C)
    b_s = tl.where(rows[:, None] >= rows[None, :], b_s, 0.0)
    b_u = load_tile(u + i_b * s_ub + i_h * s_uh, s_ut, s_ud, n * C, i_v * BV, T, V, C, BV)
    b_o += tl.dot(b_s, b_u, input_precision=PREC)
    store_tile(o + i_b * s_ob + i_h * s_oh, b_o, s_ot, s_od, n * C, i_v * BV, T, V, C, BV)


def chunk_output_fwd(q, k, u, u_strides, h, out_dtype, chunk_size, prec):
    """O = Q h_n + tril(Q K^T) U per chunk, as a contiguous [T, B, H, V] tensor."""
    T, B, H, K, V, NT = chunk_dims(q, h, chunk_size)
    C = chunk_size
    BK, BV = tile_sizes(K, V, prec)
    o = torch.empty(T, B, H, V, device=q.device, dtype=out_dtype)
    chunk_output_kernel[(B * H, NT, triton.cdiv(V, BV))](
        q, k, u, h, o, T, H, K, V,
        *strides4(q), *strides4(k), *u_strides, *strides4(o), NT,
        C=C, BK=BK, BV=BV, PREC=prec, **launch_options(BK, BV),
    )
    return o


# --------------------------------------------------- public wrappers of the chunked scans


class ChunkPasses(NamedTuple):
    """The host passes of one chunked rule, with the strengths (none for the sum rule;
    beta, erase for the delta rule) between v and h0:

    * ``fwd(q, k, v, *strengths, h0, chunk_size, out_dtype, prec) -> (o, final state)``
    * ``bwd(q, k, v, *strengths, h0, do, dht, chunk_size, dq_dtype, prec)
      -> (dq, dk, dv, *dstrengths, dh0)``"""

    fwd: Callable
    bwd: Callable


class ChunkScanFunction(torch.autograd.Function):
    """Autograd of a chunked scan: the forward keeps only the inputs, the backward
    recomputes the chunk states from them. q may be float32 next to half k, v
    (:func:`kernel_query`); its dq is then float32 and every dot "tf32x3"."""

    @staticmethod
    def forward(ctx, passes, chunk_size, out_dtype, q, k, v, h0, *strengths):
        ctx.set_materialize_grads(False)
        ctx.q_dtype, q = q.dtype, kernel_query(q, k)
        ctx.prec = dot_precision(k.dtype, float32_query=ctx.q_dtype == torch.float32)
        with device_guard(q):
            o, ht = passes.fwd(q, k, v, *strengths, h0, chunk_size, out_dtype, ctx.prec)
        ctx.save_for_backward(q, k, v, h0, *strengths)
        ctx.passes, ctx.chunk_size = passes, chunk_size
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, h0, *strengths = ctx.saved_tensors
        if do is None:
            do = torch.zeros(v.shape, device=v.device, dtype=v.dtype)
        if dht is not None:
            dht = dht.float().contiguous()  # read as a contiguous [B*H, K, V] block
        with device_guard(q):
            dq, dk, dv, *dstrengths, dh0 = ctx.passes.bwd(
                q, k, v, *strengths, h0, do, dht, ctx.chunk_size, ctx.q_dtype, ctx.prec
            )
        return (None, None, None, dq, dk, dv, (dh0 if h0 is not None else None), *dstrengths)


def chunk_scan(
    passes: ChunkPasses,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    strengths: Sequence[Tuple[str, Optional[torch.Tensor], bool]],
    initial_state: Optional[torch.Tensor],
    output_final_state: bool,
    chunk_size: int,
    out_dtype: Optional[torch.dtype],
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """What every public chunked function does around its kernels: check the inputs
    (``strengths``: (name, tensor or None, required) in the order ``passes`` takes them),
    read the initial state as float32, answer T = 0 without a launch, and run
    :class:`ChunkScanFunction`. Returns ``(o, final state or None)``."""
    T, B, H, K, V = check_qkv(q, k, v)
    check_chunk_size(chunk_size)
    out_dtype = check_out_dtype(out_dtype, v)
    for name, x, required in strengths:
        if required or x is not None:
            check_strength(name, x, q)
    h0 = None
    if initial_state is not None:
        check_state("initial_state", initial_state, q, K, V)
        h0 = initial_state.float().contiguous()
    if T == 0:
        o = v.new_zeros(0, B, H, V, dtype=out_dtype)
        ht = h0 if h0 is not None else q.new_zeros(B, H, K, V, dtype=torch.float32)
        return o, (ht if output_final_state else None)
    o, ht = ChunkScanFunction.apply(passes, chunk_size, out_dtype, q, k, v, h0, *(x for _, x, _ in strengths))
    return o, (ht if output_final_state else None)
