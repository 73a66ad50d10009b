"""Half precision at long context with the attention normalisation (--fwp-attn-norm).

The un-normalised read S^T phi(q) grows with the number of tokens written (about T times
a typical phi(k).phi(q) v); with the Linear Transformer's phi = elu + 1 it passes the
float16 maximum (65504) well before T = 65,536, while the normalised read
S^T phi(q) / (z . phi(q)) stays in the values' range. Every implementation must divide
float32 values: the chunked PyTorch path at T = 65,536 (fp16 and bf16, values and
gradients), the step-by-step path and FastWeightMemory.read after a 65,536-token prefix,
and the Triton kernels (chunked and one-token steps; in the CPU interpreter a short
segment continuing the 65,536-token prefix's state, fp16 only since bf16 is wrong in the
interpreter; on a GPU also T = 65,536 from scratch, fp16 and bf16).

Error measure: ||a - b|| / ||b|| against float64 results from the same (dtype-rounded)
inputs; the tolerance is twice the dtype's unit roundoff (the output is rounded once).
"""

import pytest
import torch
import torch.nn.functional as F

from triton_mode import HAS_CUDA, interpret_without_cuda  # noqa: E402

interpret_without_cuda()

from fwp_kernels import FastWeightState, fast_weight_scan  # noqa: E402

FP16_MAX = torch.finfo(torch.float16).max
T_LONG = 65536
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
#: outputs: twice the unit roundoff (measured at T = 65,536: 0.5 u)
RTOL = {dt: 2 * u for dt, u in UNIT_ROUNDOFF.items()}
#: gradients pass through more roundings (inputs of the backward products, stored
#: gradients): three times (measured: at most 1.6 u, for dk)
GRAD_RTOL = {dt: 3 * u for dt, u in UNIT_ROUNDOFF.items()}
HALF = [torch.float16, torch.bfloat16]


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def linear_transformer_inputs(T, B=1, H=1, K=8, V=4, seed=0):
    """phi(x) = elu(x) + 1 of Gaussian projections (the Linear Transformer's feature map,
    no sum normalisation), values uniform in (0, 1) (a non-zero mean, as value channels
    have), beta in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    q = F.elu(torch.randn(T, B, H, K, generator=g)) + 1
    k = F.elu(torch.randn(T, B, H, K, generator=g)) + 1
    v = torch.rand(T, B, H, V, generator=g)
    beta = torch.rand(T, B, H, generator=g)
    return q, k, v, beta


def unnormalised_peak(q, k, y, z0=None):
    """max |S^T phi(q)| = max |y (z . phi(q))| of a float64 attention-normalised scan
    (z0: the normaliser of a prefix)."""
    z = torch.cumsum(k.double(), 0) + (0 if z0 is None else z0.double())
    return (y * (z * q.double()).sum(-1, keepdim=True)).abs().max().item()


def scan(q, k, v, beta, rule, **kw):
    return fast_weight_scan(q, k, v, beta if rule == "delta" else None, rule=rule, attn_norm=True, **kw)


#: gradients are checked under a loss scale, as --fp16 training has (fairseq starts at
#: 2^7 and raises it): without one, the gradients of keys deep into a long context
#: (~1e-6) are fp16 subnormals, imprecise even when rounded correctly
LOSS_SCALE = 2.0 ** 10


def loss_grads(y, g, leaves):
    """Gradients of LOSS_SCALE * <y, g>."""
    return torch.autograd.grad(LOSS_SCALE * (y.double() * g.double()).sum(), leaves)


def check(y, y64, dtype, grads=(), grads64=()):
    """Finite and within tolerance of float64: the output, then each gradient."""
    assert y.dtype == dtype
    assert torch.isfinite(y).all(), f"max|y| = {y.detach().abs().max().item()}"
    assert rel(y.detach().cpu(), y64.detach()) < RTOL[dtype], rel(y.detach().cpu(), y64.detach())
    for name, a, b in zip("qkvb", grads, grads64):
        assert torch.isfinite(a).all(), f"d{name} not finite"
        assert rel(a.cpu(), b) < GRAD_RTOL[dtype], (f"d{name}", rel(a.cpu(), b))


@pytest.fixture(scope="module")
def long_prefix():
    """Per rule, the float64 final state of a 65,536-token prefix."""
    q, k, v, beta = (x.double() for x in linear_transformer_inputs(T_LONG))
    return {rule: scan(q, k, v, beta, rule, impl="chunk", output_final_state=True)[1] for rule in ("sum", "delta")}


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_chunked_path_at_65536_tokens(rule, dtype):
    """The CPU path (impl="chunk") in fp16/bf16 at T = 65,536: finite outputs and gradients
    within half-precision tolerance of float64, although the un-normalised read is above
    the fp16 maximum."""
    n = 4 if rule == "delta" else 3
    x = [t.to(dtype) for t in linear_transformer_inputs(T_LONG)]
    g = torch.randn(T_LONG, 1, 1, 4, generator=torch.Generator().manual_seed(1))
    leaves64 = [t.double().requires_grad_(True) for t in x]
    y64, _ = scan(*leaves64, rule, impl="chunk")
    assert unnormalised_peak(x[0], x[1], y64.detach()) > FP16_MAX  # the case this test is about
    leaves = [t.clone().requires_grad_(True) for t in x]
    y, _ = scan(*leaves, rule, impl="chunk")
    check(y, y64, dtype, loss_grads(y, g, leaves[:n]), loss_grads(y64, g, leaves64[:n]))


def continuation(long_prefix, rule, dtype, T, seed):
    """T more tokens in ``dtype`` after the 65,536-token prefix, the prefix's state in
    float32 (as carried across segments / in incremental_state), and the float64 input
    leaves, state and output of the continuation."""
    S, z = long_prefix[rule]
    x = [t.to(dtype) for t in linear_transformer_inputs(T, seed=seed)]
    leaves64 = [t.double().requires_grad_(True) for t in x]
    state = FastWeightState(S.float(), z.float())
    state64 = FastWeightState(state.S.double(), state.z.double())
    y64, _ = scan(*leaves64, rule, impl="chunk", initial_state=state64)
    assert unnormalised_peak(x[0], x[1], y64.detach(), state.z) > FP16_MAX
    return x, state, leaves64, y64


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_decoding_step_after_long_prefix(long_prefix, rule, dtype):
    """Incremental decoding on CPU (one token: the step-by-step path) after a 65,536-token
    prefix."""
    x, state, _, y64 = continuation(long_prefix, rule, dtype, 1, seed=7)
    with torch.no_grad():
        y, _ = scan(*x, rule, impl="recurrent", initial_state=state)
    check(y, y64, dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_non_causal_read_of_a_long_memory(long_prefix, dtype):
    """FastWeightMemory.read (encoder and encoder-decoder attention): half-precision
    queries read a memory written from 65,536 keys."""
    pytest.importorskip("fairseq", reason="fairseq_fwp.modules imports fairseq")
    from fairseq_fwp.modules.fast_weight_memory import FastWeightMemory

    S, z = long_prefix["sum"]
    queries = linear_transformer_inputs(16, seed=3)[0].to(dtype)  # [16, B, H, d_dot]
    read64 = torch.einsum("tbhk,bhkv->tbhv", queries.double(), S)
    assert read64.abs().max() > FP16_MAX
    y64 = read64 / (torch.einsum("tbhk,bhk->tbh", queries.double(), z)[..., None] + 1e-6)
    memory = FastWeightMemory(8, attn_norm=True)
    y = memory.read(queries, FastWeightState(S.float(), z.float())).to(dtype)  # as the attention casts it
    check(y, y64, dtype)


# ------------------------------------------------------------------ Triton kernels

DEVICE = "cuda" if HAS_CUDA else "cpu"
TRITON_DTYPES = [torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])
#: tokens after the 65,536-token prefix: the interpreter runs the kernels program by
#: program in Python, so on CPU a short segment (two chunks and a tail) continues the
#: prefix's state; on a GPU a whole second 65,536-token segment.
T_SEGMENT = T_LONG if HAS_CUDA else 150


def _triton():
    return pytest.importorskip("triton")


def _dev(xs):
    return [x.to(DEVICE) for x in xs]


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_triton_chunked_kernels_after_long_prefix(long_prefix, rule, dtype):
    """fast_weight_scan(impl="triton") continuing a 65,536-token context (the chunked
    kernels read the carried state in every chunk): finite outputs and gradients."""
    _triton()
    n = 4 if rule == "delta" else 3
    x, state, leaves64, y64 = continuation(long_prefix, rule, dtype, T_SEGMENT, seed=5)
    g = torch.randn(y64.shape, generator=torch.Generator().manual_seed(2))
    leaves = [t.requires_grad_(True) for t in _dev(x)]
    y, _ = scan(*leaves, rule, impl="triton", initial_state=FastWeightState(*_dev(state)))
    check(y, y64, dtype, loss_grads(y, g.to(DEVICE), leaves[:n]), loss_grads(y64, g, leaves64[:n]))


@pytest.mark.skipif(not HAS_CUDA, reason="T = 65,536 through the kernels needs a GPU (too slow in the interpreter)")
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_triton_chunked_kernels_at_65536_tokens(rule, dtype):
    n = 4 if rule == "delta" else 3
    x = [t.to(dtype) for t in linear_transformer_inputs(T_LONG)]
    g = torch.randn(T_LONG, 1, 1, 4, generator=torch.Generator().manual_seed(1))
    leaves64 = [t.double().requires_grad_(True) for t in x]
    y64, _ = scan(*leaves64, rule, impl="chunk")
    leaves = [t.requires_grad_(True) for t in _dev(x)]
    y, _ = scan(*leaves, rule, impl="triton")
    check(y, y64, dtype, loss_grads(y, g.to(DEVICE), leaves[:n]), loss_grads(y64, g, leaves64[:n]))


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_triton_step_kernels_after_long_prefix(long_prefix, rule, dtype):
    """One decoding token through the Triton step kernels (T = 1, no grad) after a
    65,536-token prefix."""
    _triton()
    x, state, _, y64 = continuation(long_prefix, rule, dtype, 1, seed=7)
    with torch.no_grad():
        y, _ = scan(*_dev(x), rule, impl="triton", initial_state=FastWeightState(*_dev(state)))
    check(y, y64, dtype)


def test_kernels_store_the_requested_output_dtype():
    """out_dtype: the chunked and step kernels store the read in float32 on request (for
    the division by z . phi(q)), in v's dtype by default; anything else is refused.
    A float32 q with half k, v is accepted (its dq is float32)."""
    _triton()
    from fwp_kernels.triton import chunk_delta_rule, chunk_linear_attn, delta_rule_step, linear_attn_step

    g = torch.Generator().manual_seed(4)
    q, k = (torch.rand(20, 1, 2, 16, generator=g).softmax(-1).to(DEVICE, torch.float16) for _ in range(2))
    v = torch.randn(20, 1, 2, 16, generator=g).to(DEVICE, torch.float16)
    beta = torch.rand(20, 1, 2, generator=g).to(DEVICE, torch.float16)
    S0 = torch.randn(1, 2, 16, 16, generator=g).to(DEVICE)
    runs = {
        "chunk_linear_attn": lambda q, od: chunk_linear_attn(q, k, v, initial_state=S0, out_dtype=od)[0],
        "chunk_delta_rule": lambda q, od: chunk_delta_rule(q, k, v, beta, initial_state=S0, out_dtype=od)[0],
        "linear_attn_step": lambda q, od: linear_attn_step(q[0], k[0], v[0], S0, out_dtype=od)[0],
        "delta_rule_step": lambda q, od: delta_rule_step(q[0], k[0], v[0], beta[0], S0, out_dtype=od)[0],
    }
    for name, run in runs.items():
        o32, o16 = run(q, torch.float32), run(q, None)
        assert o32.dtype == torch.float32 and o16.dtype == torch.float16, name
        assert rel(o16, o32) < 2.0 ** -11, name  # the same float32 accumulator, rounded once
        # float32 q: the same values up to the dot precision (a float32 q is the attention-normalised
        # case and runs tf32x3 dots on a GPU, half q tf32: 4.9e-4 apart on the H200; equal in the interpreter)
        assert rel(run(q.float(), torch.float32), o32) < 2.0 ** -9, name
        with pytest.raises(TypeError, match="out_dtype"):
            run(q, torch.int32)
    q32 = q.float().requires_grad_(True)
    dq = torch.autograd.grad(chunk_linear_attn(q32, k, v, out_dtype=torch.float32)[0].sum(), q32)[0]
    assert dq.dtype == torch.float32
