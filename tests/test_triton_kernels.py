"""Triton kernels (fwp_kernels.triton) against the float64
step-by-step reference: outputs, final states and every gradient (q, k, v, beta, erase,
initial state), directly and through ``fast_weight_scan(impl="triton")``.

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set here
before Triton is imported), fp32 and fp16 only (bf16 is wrong in the interpreter; it is
tested on a GPU). The module is skipped only when Triton cannot be imported.

Error measure: relative error ||a - b|| / ||b|| against float64 results computed from
the same (dtype-rounded) inputs, so the tolerances measure the kernels, not the input
quantisation.
"""

import os
import subprocess
import sys

import pytest
import torch

from triton_mode import HAS_CUDA, interpret_without_cuda  # noqa: E402

interpret_without_cuda()

triton = pytest.importorskip("triton")

from fwp_kernels import FastWeightState, fast_weight_scan, recurrent_fast_weight  # noqa: E402
from fwp_kernels import dispatch  # noqa: E402
from fwp_kernels.triton import chunk_delta_rule, chunk_linear_attn, delta_rule_step, linear_attn_step  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])
#: relative-error tolerances per input dtype (outputs, states and gradients).
#: fp32: the kernels accumulate in fp32 (tf32x3 dots on a GPU); fp16/bf16: outputs and
#: gradients are rounded to the input dtype (unit roundoff 4.9e-4 / 3.9e-3).
RTOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(T, B, H, K, V, dtype, seed, init=False, erase=False):
    """Sum-normalised positive q, k (Eq. 29), Gaussian v, beta in (0, 1), erase in (0, 2)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(T, B, H, K, generator=g)
    k = torch.rand(T, B, H, K, generator=g)
    q, k = q / q.sum(-1, keepdim=True), k / k.sum(-1, keepdim=True)
    v = torch.randn(T, B, H, V, generator=g)
    beta = torch.rand(T, B, H, generator=g)
    c = 2 * torch.rand(T, B, H, generator=g) if erase else None
    S0 = 0.5 * torch.randn(B, H, K, V, generator=g) if init else None
    cast = lambda x: None if x is None else x.to(device=DEVICE, dtype=dtype)  # noqa: E731
    return cast(q), cast(k), cast(v), cast(beta), cast(c), (None if S0 is None else S0.to(DEVICE))


def delta_rule_f64(q, k, v, beta, erase, S0):
    """Literal float64 recurrence with separate erase strength c:
    S_t = S_{t-1} - c_t k_t (k_t^T S_{t-1}) + beta_t k_t v_t^T ; o_t = S_t^T q_t."""
    T, B, H, K = q.shape
    S = S0 if S0 is not None else q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        kt = k[t].unsqueeze(-1)  # [B,H,K,1]
        read = (kt * S).sum(-2, keepdim=True)  # k^T S  [B,H,1,V]
        S = S - erase[t][..., None, None] * kt * read + beta[t][..., None, None] * kt * v[t].unsqueeze(-2)
        outs.append((q[t].unsqueeze(-1) * S).sum(-2))
    return torch.stack(outs), S


def grads_of(fn, leaves, seed):
    """Run fn(*leaves) -> (o, S); loss = <o, G1> + <S, G2> with fixed random G; return (o, S, grads)."""
    leaves = [None if x is None else x.detach().clone().requires_grad_(True) for x in leaves]
    o, S = fn(*leaves)
    g = torch.Generator().manual_seed(seed + 1)
    go = torch.randn(o.shape, generator=g).to(o.device)
    gS = torch.randn(S.shape, generator=g).to(S.device)
    loss = (o.double() * go.double()).sum() + (S.double() * gS.double()).sum()
    live = [x for x in leaves if x is not None]
    gr = iter(torch.autograd.grad(loss, live, allow_unused=True))
    return o.detach(), S.detach(), [None if x is None else next(gr) for x in leaves]


def f64(xs):
    return [None if x is None else x.detach().double() for x in xs]


# (T, B, H, d_dot, d_value, chunk_size): T = 1, tails, several chunks, K != V,
# d_dot < 16 (masked tiles), d_dot = 512, d_value = 256.
SHAPES = [
    (1, 1, 2, 16, 16, 64),
    (37, 2, 1, 24, 40, 16),
    (70, 1, 1, 512, 32, 64),
    (20, 1, 1, 8, 256, 16),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("init", [False, True], ids=["zero_state", "init_state"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}H{}K{}V{}C{}".format(*s))
def test_chunk_linear_attn_matches_reference(shape, init, dtype):
    T, B, H, K, V, C = shape
    q, k, v, _, _, S0 = make_inputs(T, B, H, K, V, dtype, seed=T * 7 + K, init=init)
    o, S, g = grads_of(
        lambda q, k, v, S0: chunk_linear_attn(q, k, v, initial_state=S0, output_final_state=True, chunk_size=C),
        [q, k, v, S0], seed=1,
    )

    def ref(q, k, v, S0):
        o, f = recurrent_fast_weight(q, k, v, rule="sum", output_final_state=True,
                                     initial_state=None if S0 is None else FastWeightState(S0))
        return o, f.S

    o_r, S_r, g_r = grads_of(ref, f64([q, k, v, S0]), seed=1)
    assert o.dtype == dtype and o.shape == (T, B, H, V) and S.dtype == torch.float32
    tol = RTOL[dtype]
    assert rel(o, o_r) < tol, "output"
    assert rel(S, S_r) < tol, "final state"
    for name, a, b in zip(["dq", "dk", "dv", "dS0"], g, g_r):
        if b is None:
            assert a is None
            continue
        assert a.dtype == (torch.float32 if name == "dS0" else dtype)
        assert rel(a, b) < tol, name


VARIANTS = {"plain": (False, False), "init+erase": (True, True), "init": (True, False), "erase": (False, True)}
# d_dot = 512 runs the plain and init+erase variants only (interpreter time).
DELTA_CASES = [
    pytest.param(shape, *VARIANTS[var], id="T{}B{}H{}K{}V{}C{}-".format(*shape) + var)
    for shape in SHAPES for var in VARIANTS if shape[3] < 512 or var in ("plain", "init+erase")
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape,init,erase", DELTA_CASES)
def test_chunk_delta_rule_matches_reference(shape, init, erase, dtype):
    T, B, H, K, V, C = shape
    q, k, v, beta, c, S0 = make_inputs(T, B, H, K, V, dtype, seed=T * 11 + K, init=init, erase=erase)
    o, S, g = grads_of(
        lambda q, k, v, beta, c, S0: chunk_delta_rule(
            q, k, v, beta, erase=c, initial_state=S0, output_final_state=True, chunk_size=C),
        [q, k, v, beta, c, S0], seed=2,
    )
    if erase:
        ref = delta_rule_f64
    else:  # the paper-form reference (Eq. 20-25) when the erase strength is beta
        def ref(q, k, v, beta, c, S0):
            o, f = recurrent_fast_weight(q, k, v, beta, rule="delta", output_final_state=True,
                                         initial_state=None if S0 is None else FastWeightState(S0))
            return o, f.S
    o_r, S_r, g_r = grads_of(ref, f64([q, k, v, beta, c, S0]), seed=2)
    tol = RTOL[dtype]
    assert o.dtype == dtype and S.dtype == torch.float32
    assert rel(o, o_r) < tol, "output"
    assert rel(S, S_r) < tol, "final state"
    for name, a, b in zip(["dq", "dk", "dv", "dbeta", "derase", "dS0"], g, g_r):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape, name
        assert rel(a, b) < tol, name


@pytest.mark.parametrize("reg_max", [0, 32], ids=["state_in_global_memory", "state_in_registers"])
def test_delta_rule_state_pass_both_paths(reg_max, monkeypatch):
    """The sequential forward pass of the delta rule carries the state column in registers
    (d_dot up to REG_STATE_MAX_D_DOT) or through global memory one d_dot tile at a time.
    Force each path at d_dot 24 with 16-wide tiles (two tiles, the second masked); in
    float16 on a GPU, where tf32x3 (float32) tiles are at least common.MIN_TILE_TF32X3 wide."""
    import fwp_kernels.triton.common as tu
    import fwp_kernels.triton.delta_rule as dr

    monkeypatch.setattr(tu, "REG_STATE_MAX_D_DOT", reg_max)
    monkeypatch.setattr(dr, "tile_sizes", lambda K, V, prec=None: (16, 16))
    assert tu.state_block(24) == (32 if reg_max else 0)
    dtype = torch.float16 if HAS_CUDA else torch.float32
    test_chunk_delta_rule_matches_reference((37, 2, 1, 24, 40, 16), True, True, dtype)


def test_literal_erase_reference_is_the_paper_delta_rule():
    """The test-local erase reference reduces to recurrent_fast_weight when c = beta."""
    q, k, v, beta, _, S0 = f64(make_inputs(9, 2, 2, 6, 5, torch.float32, seed=3, init=True))
    o1, S1 = delta_rule_f64(q, k, v, beta, beta, S0)
    o2, f = recurrent_fast_weight(q, k, v, beta, rule="delta", initial_state=FastWeightState(S0),
                                  output_final_state=True)
    assert rel(o1, o2) < 1e-12 and rel(S1, f.S) < 1e-12


SCAN_CASES = [(rule, an, init) for rule in ("sum", "delta") for an in (False, True) for init in (False, True)]


@pytest.mark.parametrize("rule,attn_norm,init", SCAN_CASES)
def test_fast_weight_scan_triton_vs_recurrent(rule, attn_norm, init):
    """Through the dispatcher (attention normalisation, erase strength c = beta / (z . k),
    normaliser state z): Triton in fp32 vs the paper-form recurrence in float64."""
    T, B, H, K, V = 75, 1, 2, 12, 20  # two chunks of 64 with a tail
    q, k, v, beta, _, S0 = make_inputs(T, B, H, K, V, torch.float32, seed=5, init=init)
    z0 = (torch.rand(B, H, K, generator=torch.Generator().manual_seed(9)) + 0.5).to(DEVICE) if init and attn_norm else None
    leaves = [q, k, v, beta, S0, z0]

    def run(impl):
        def fn(q, k, v, beta, S0, z0):
            st = None if S0 is None else FastWeightState(S0, z0)
            o, f = fast_weight_scan(q, k, v, beta if rule == "delta" else None, rule=rule, attn_norm=attn_norm,
                                    initial_state=st, output_final_state=True, impl=impl)
            S = f.S if f.z is None else torch.cat([f.S, f.z.unsqueeze(-1)], -1)
            return o, S
        return fn

    o, S, g = grads_of(run("triton"), leaves, seed=4)
    o_r, S_r, g_r = grads_of(run("recurrent"), f64(leaves), seed=4)
    tol = RTOL[torch.float32]
    assert rel(o, o_r) < tol, "output"
    assert rel(S, S_r) < tol, "final state"
    for name, a, b in zip(["dq", "dk", "dv", "dbeta", "dS0", "dz0"], g, g_r):
        if b is None or (rule == "sum" and name == "dbeta"):
            continue
        assert a is not None, name
        assert rel(a, b) < tol, name


def test_fast_weight_scan_triton_fp16_delta_attn_norm():
    T, B, H, K, V = 40, 2, 1, 32, 16
    q, k, v, beta, _, S0 = make_inputs(T, B, H, K, V, torch.float16, seed=6, init=True)
    z0 = torch.full((B, H, K), 0.5, device=DEVICE)

    def fn(impl):
        def run(q, k, v, beta, S0):
            st = FastWeightState(S0, z0.to(S0.dtype))
            o, f = fast_weight_scan(q, k, v, beta, rule="delta", attn_norm=True, impl=impl,
                                    initial_state=st, output_final_state=True)
            return o, f.S
        return run

    o, S, g = grads_of(fn("triton"), [q, k, v, beta, S0], seed=7)
    o_r, S_r, g_r = grads_of(fn("recurrent"), f64([q, k, v, beta, S0]), seed=7)
    assert o.dtype == torch.float16
    assert rel(o, o_r) < RTOL[torch.float16] and rel(S, S_r) < RTOL[torch.float16]
    for name, a, b in zip(["dq", "dk", "dv", "dbeta", "dS0"], g, g_r):
        assert rel(a, b) < RTOL[torch.float16], name


def test_strided_time_major_views():
    """q, k, v sliced out of one fused [T, B, 3*H*D] projection and beta out of a wider
    tensor are consumed as views and give the same result as contiguous copies."""
    T, B, H, D = 21, 2, 3, 16
    g = torch.Generator().manual_seed(11)
    proj = torch.rand(T, B, 3 * H * D + 5, generator=g).to(DEVICE)
    q, k, v = (proj[..., i * H * D:(i + 1) * H * D].unflatten(-1, (H, D)) for i in range(3))
    k = k / k.sum(-1, keepdim=True)
    k = torch.empty(T, B, H, 2 * D, device=DEVICE)[..., ::2].copy_(k)  # a view with feature stride 2
    beta = torch.rand(T, B, H, 4, generator=g).to(DEVICE)[..., 1]
    assert not q.is_contiguous() and not k.is_contiguous() and k.stride(-1) == 2 and not beta.is_contiguous()
    for fn, args in ((chunk_delta_rule, (q, k, v, beta)), (chunk_linear_attn, (q, k, v))):
        o1, S1 = fn(*args, output_final_state=True, chunk_size=16)
        o2, S2 = fn(*[a.contiguous() for a in args], output_final_state=True, chunk_size=16)
        assert rel(o1, o2) < 1e-6 and rel(S1, S2) < 1e-6
    o, f = recurrent_fast_weight(*f64([q, k, v, beta]), rule="delta", output_final_state=True)
    o1, S1 = chunk_delta_rule(q, k, v, beta, output_final_state=True, chunk_size=16)
    assert rel(o1, o) < RTOL[torch.float32] and rel(S1, f.S) < RTOL[torch.float32]


def test_gradient_through_final_state_only():
    """Only the final state is used (no output gradient) and only the output is used."""
    q, k, v, beta, _, S0 = make_inputs(30, 1, 2, 16, 16, torch.float32, seed=12, init=True)
    for use in ("state", "output"):
        leaves = [x.clone().requires_grad_() for x in (q, k, v, beta, S0)]
        lf = [x.double().detach().requires_grad_() for x in leaves]
        o, S = chunk_delta_rule(*leaves[:4], initial_state=leaves[4], output_final_state=True, chunk_size=16)
        o_r, f = recurrent_fast_weight(*lf[:4], rule="delta", initial_state=FastWeightState(lf[4]),
                                       output_final_state=True)
        (S.sum() if use == "state" else o.sum()).backward()
        (f.S.sum() if use == "state" else o_r.sum()).backward()
        for a, b in zip(leaves, lf):
            if b.grad is None:  # q does not reach the final state
                assert use == "state" and a.grad.abs().max() == 0
                continue
            assert rel(a.grad, b.grad) < RTOL[torch.float32], use


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("K,V", [(16, 16), (512, 48), (24, 256)])
def test_one_token_steps_match_reference(K, V, dtype):
    B, H = 2, 2
    q, k, v, beta, c, S0 = make_inputs(1, B, H, K, V, dtype, seed=K + V, init=True, erase=True)
    with torch.no_grad():
        o, S = delta_rule_step(q[0], k[0], v[0], beta[0], S0)
        o_r, f = recurrent_fast_weight(*f64([q, k, v, beta]), rule="delta",
                                       initial_state=FastWeightState(S0.double()), output_final_state=True)
        assert o.shape == (B, H, V) and o.dtype == dtype
        assert rel(o, o_r[0]) < RTOL[dtype] and rel(S, f.S) < RTOL[dtype]
        o, S = delta_rule_step(q, k, v, beta, S0, erase=c)  # [1, B, H, D] form, separate erase
        o_r, S_r = delta_rule_f64(*f64([q, k, v, beta, c, S0]))
        assert o.shape == (1, B, H, V)
        assert rel(o, o_r) < RTOL[dtype] and rel(S, S_r) < RTOL[dtype]
        o, S = linear_attn_step(q[0], k[0], v[0], S0)
        o_r, f = recurrent_fast_weight(*f64([q, k, v]), rule="sum",
                                       initial_state=FastWeightState(S0.double()), output_final_state=True)
        assert rel(o, o_r[0]) < RTOL[dtype] and rel(S, f.S) < RTOL[dtype]
    assert torch.equal(S0, S0.clone())  # input state untouched (returned state is new)


def test_steps_continue_a_chunked_prefix():
    """Prompt through the chunked kernel, then token-by-token steps: same as one scan."""
    q, k, v, beta, _, _ = make_inputs(20, 1, 2, 32, 16, torch.float32, seed=13)
    o_all, S_all = chunk_delta_rule(q, k, v, beta, output_final_state=True, chunk_size=16)
    _, S = chunk_delta_rule(q[:17], k[:17], v[:17], beta[:17], output_final_state=True, chunk_size=16)
    outs = []
    with torch.no_grad():
        for t in range(17, 20):
            o, S = delta_rule_step(q[t], k[t], v[t], beta[t], S)
            outs.append(o)
    assert rel(torch.stack(outs), o_all[17:].detach()) < 1e-5 and rel(S, S_all.detach()) < 1e-5


def test_errors_name_the_argument():
    q, k, v, beta, c, S0 = make_inputs(5, 1, 2, 16, 8, torch.float32, seed=0, init=True, erase=True)
    with pytest.raises(ValueError, match=r"\bk\b"):
        chunk_delta_rule(q, k[..., :-1], v, beta)
    with pytest.raises(ValueError, match=r"\bv\b"):
        chunk_linear_attn(q, k, v[:, :, :1])
    with pytest.raises(ValueError, match=r"\bq\b"):
        chunk_linear_attn(q[0], k, v)
    with pytest.raises(TypeError, match=r"\bv\b.*float64"):
        chunk_linear_attn(q, k, v.double())
    with pytest.raises(TypeError, match=r"\bq\b"):
        chunk_delta_rule(q.int(), k, v, beta)
    with pytest.raises(TypeError, match="share a dtype"):
        chunk_delta_rule(q, k, v.half(), beta)
    with pytest.raises(ValueError, match=r"\bbeta\b"):
        chunk_delta_rule(q, k, v, beta[:, :, :1])
    with pytest.raises(TypeError, match=r"\bbeta\b"):
        chunk_delta_rule(q, k, v, beta.double())
    with pytest.raises(ValueError, match=r"\berase\b"):
        chunk_delta_rule(q, k, v, beta, erase=c[:-1])
    with pytest.raises(ValueError, match=r"\binitial_state\b"):
        chunk_delta_rule(q, k, v, beta, initial_state=S0[..., :-1])
    with pytest.raises(ValueError, match=r"\binitial_state\b"):
        chunk_linear_attn(q, k, v, initial_state=S0[0])
    with pytest.raises(ValueError, match="d_dot"):
        big = torch.rand(2, 1, 1, 600, device=DEVICE)
        chunk_linear_attn(big, big, torch.rand(2, 1, 1, 8, device=DEVICE))
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_linear_attn(q, k, v, chunk_size=48)
    with pytest.raises(ValueError, match=r"\bstate\b"):
        delta_rule_step(q[0], k[0], v[0], beta[0], S0[..., :-1])
    with pytest.raises(ValueError, match=r"\bbeta\b"):
        delta_rule_step(q[0], k[0], v[0], beta, S0)
    with pytest.raises(ValueError, match=r"\bq\b"):
        linear_attn_step(q[:2], k[:2], v[:2], S0)
    with pytest.raises(RuntimeError, match="autograd"):
        delta_rule_step(q[0], k[0], v[0].requires_grad_(), beta[0], S0)


@pytest.mark.skipif(HAS_CUDA, reason="CPU-only check")
def test_cpu_tensors_need_interpreter(monkeypatch):
    q, k, v, *_ = make_inputs(3, 1, 1, 16, 16, torch.float32, seed=0)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="CUDA"):
        chunk_linear_attn(q, k, v)
    assert not dispatch._core("triton").supports(q, v)


def test_registered_in_dispatch():
    core = dispatch._core("triton")
    assert "triton" in dispatch.available_impls()
    x = torch.zeros(4, 1, 1, 8, device=DEVICE)
    assert core.supports(x, x) and not core.supports(x.double(), x.double())
    # sizes beyond the kernels' tiles are not claimed, so "auto" keeps them on the chunk path
    assert not core.supports(torch.zeros(4, 1, 1, 513, device=DEVICE), x)
    assert not core.supports(x, torch.zeros(4, 1, 1, 257, device=DEVICE))
    if not HAS_CUDA:  # "auto" keeps CPU tensors on the PyTorch path
        assert dispatch._auto_impl(torch.zeros(4, 1, 1, 8), torch.zeros(4, 1, 1, 8)) == "chunk"


def test_importing_fwp_kernels_does_not_import_triton():
    """Triton lives in fwp_kernels/triton/ only: the package and every module outside that
    folder import without it."""
    code = ("import sys, fwp_kernels; fwp_kernels.fast_weight_scan; "
            "from fwp_kernels import chunk_torch, dispatch, reference, state; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(HAS_CUDA, reason="the GPU tests launch the kernels for real")
def test_kernels_compile_for_h100_within_shared_memory():
    """scripts/kernel_resources.py compiles every kernel (both state paths, the step
    kernels) for sm_90 with the launch configuration the host code uses, in a fresh
    process (the interpreter off there), and --check fails if one needs more than the
    227 KiB of shared memory per block."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "kernel_resources.py")
    res = subprocess.run([sys.executable, script, "--check", "--dtypes", "fp32,bf16"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "_kernel" in line]
    assert len(rows) == 2 * 12, res.stdout
    assert all(row.split("|")[6].strip().isdigit() for row in rows), res.stdout  # shared KiB read


@pytest.mark.parametrize("rule,attn_norm", [("delta", False), ("sum", True)])
def test_half_precision_attention_runs_on_the_triton_path(rule, attn_norm, monkeypatch):
    """--fp16 training: the attention hands the kernels phi(q), phi(k) and v in one half
    dtype; outputs match the float32 module and the float64-backed recurrent path."""
    # scripts/gpu_check.sh runs this file on GPU machines that may lack fairseq
    pytest.importorskip("fairseq", reason="the attention module needs fairseq (the kernels do not)")
    from fairseq_fwp.modules import FastWeightAttention

    torch.manual_seed(0)
    attn = FastWeightAttention(32, 2, feature_map="dpfp", update_rule=rule, sum_norm=True, attn_norm=attn_norm).eval()
    x = torch.randn(40, 2, 32)
    ref = attn.fast_weight_forward(x)[0]
    used = []
    real_core = dispatch._core

    def spy(name):
        used.append(name)
        return real_core(name)

    monkeypatch.setattr(dispatch, "_auto_impl", lambda q, v: "triton")
    monkeypatch.setattr(dispatch, "_core", spy)
    half = attn.to(DEVICE).half()
    out = half.fast_weight_forward(x.to(DEVICE).half())[0]
    assert used == ["triton"] and out.dtype == torch.float16
    assert rel(out.float().cpu(), ref) < 1e-2


@pytest.mark.parametrize("rule,attn_norm", [("sum", False), ("sum", True), ("delta", False), ("delta", True)])
def test_decoding_steps_through_dispatch_use_the_step_kernels(rule, attn_norm, monkeypatch):
    """Incremental decoding: T = 1 without grad goes to the one-token Triton kernels; a run of
    steps carrying the state equals the float64 recurrent reference over the whole sequence."""
    import fwp_kernels.triton as tpkg

    calls = []
    for mod, name in ((tpkg, "delta_rule_step"), (tpkg, "linear_attn_step")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, **kw: calls.append(1) or _r(*a, **kw))
    dispatch._LOADED.pop("triton", None)  # rebuild the core with the spied step functions
    try:
        torch.manual_seed(0)
        T, B, H, K, V = 6, 2, 2, 16, 8
        q = torch.rand(T, B, H, K).softmax(-1)
        k = torch.rand(T, B, H, K).softmax(-1)
        v = torch.randn(T, B, H, V)
        beta = torch.rand(T, B, H)
        ref, ref_state = recurrent_fast_weight(
            q.double(), k.double(), v.double(), beta.double(), rule=rule, attn_norm=attn_norm, output_final_state=True
        )
        state, outs = None, []
        with torch.no_grad():
            for t in range(T):
                o, state = fast_weight_scan(
                    q[t : t + 1].to(DEVICE), k[t : t + 1].to(DEVICE), v[t : t + 1].to(DEVICE),
                    beta[t : t + 1].to(DEVICE), rule=rule, attn_norm=attn_norm,
                    initial_state=state, output_final_state=True, impl="triton",
                )
                outs.append(o.cpu())
        assert len(calls) == T
        assert rel(torch.cat(outs), ref) < 2e-5
        assert rel(state.S.cpu(), ref_state.S) < 2e-5
    finally:
        dispatch._LOADED.pop("triton", None)


# ------------------------------------------------------------------ GPU, model sizes
# On a GPU the kernels also run at the sizes the models use (the interpreter tests above
# keep shapes small for CPU time): T with a tail past several chunks, d_dot 64..512,
# d_value 64..256, an initial state, every gradient, in fp32, fp16 and bf16. The float64
# reference is the chunked PyTorch path (itself tested equal to the step-by-step
# reference in tests/test_scan.py), run on the GPU. Tolerances: fp32 uses tf32x3 dots
# (about fp32 accurate); fp16/bf16 round the outputs and gradients to the input dtype and
# use tf32 dots on fp32 chunk states, so errors grow slowly with T.
GPU_RTOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
GPU_SHAPES = [(2085, 2, 4, 64, 64), (1100, 1, 8, 256, 128), (700, 2, 2, 512, 64), (600, 1, 2, 128, 256)]


@pytest.mark.skipif(not HAS_CUDA, reason="model-size launches need a GPU (CPU runs the interpreter tests above)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rule", ["sum", "delta", "delta+erase"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "T{}B{}H{}K{}V{}".format(*s))
def test_model_sizes_on_gpu(shape, rule, dtype):
    from fwp_kernels.chunk_torch import chunk_delta_rule_torch, chunk_linear_attn_torch

    T, B, H, K, V = shape
    q, k, v, beta, c, S0 = make_inputs(T, B, H, K, V, dtype, seed=T + K, init=True, erase=rule == "delta+erase")
    if rule == "sum":
        ours = lambda q, k, v, beta, c, S0: chunk_linear_attn(  # noqa: E731
            q, k, v, initial_state=S0, output_final_state=True)
        ref = lambda q, k, v, beta, c, S0: chunk_linear_attn_torch(  # noqa: E731
            q, k, v, initial_state=S0)
    else:
        ours = lambda q, k, v, beta, c, S0: chunk_delta_rule(  # noqa: E731
            q, k, v, beta, erase=c, initial_state=S0, output_final_state=True)
        ref = lambda q, k, v, beta, c, S0: chunk_delta_rule_torch(  # noqa: E731
            q, k, v, beta, erase=c, initial_state=S0)
    leaves = [q, k, v, beta if rule != "sum" else None, c, S0]
    o, S, g = grads_of(ours, leaves, seed=21)
    o_r, S_r, g_r = grads_of(ref, f64(leaves), seed=21)
    tol = GPU_RTOL[dtype]
    errs = {"o": rel(o, o_r), "S": rel(S, S_r)}
    for name, a, b in zip(["dq", "dk", "dv", "dbeta", "derase", "dS0"], g, g_r):
        if b is not None:
            errs[name] = rel(a, b)
    bad = {n: e for n, e in errs.items() if not e < tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errs})"


# ------------------------------------------------------------ launch configurations
# The Hopper miscompiles flash-linear-attention met were specific to a launch
# configuration (num_warps=4 at chunk size 64 in a backward kernel, fla #984) or to
# ptxas 12.8 on one backward kernel (fla PR #1262). So on a GPU every chunk size, warps
# 4/8 and pipelining depths 1-3 run (today's defaults and every alternative a tuning run
# could pick), both state paths of the delta rule, in bf16 and fp32, values and every
# gradient against float64. (fla's third class, a constant scale of 1.0 folded by ptxas,
# has no counterpart: our kernels take no scale; phi(q) arrives already scaled.) The
# interpreter ignores warps and stages, so on CPU one configuration runs, to keep the
# option plumbing (common.launch_options, read at every launch) exercised.
LAUNCH_CONFIGS = [(64, w, s) for w in (4, 8) for s in (1, 2, 3)] + [(C, w, None) for C in (16, 32) for w in (4, 8)]
# Sizes: d_dot = d_value = 64 (32-wide tiles, the register path's size) and, in bf16 at
# chunk 64, d_dot = d_value = 16 (16-wide tiles: the WikiText-103 models' head size,
# launched with the NARROW_* options).
# T: 5 chunks of 64 and a 13-token tail (333), and, in bf16 at d_dot 64, exactly 5 chunks
# (320: Triton compiles integer arguments divisible by 16 into another variant).
LAUNCH_CASES = [
    pytest.param(cfg, rule, dtype, width, T, id="C{}-w{}-s{}-{}-{}-d{}-T{}".format(*cfg, rule, str(dtype)[6:], width, T))
    for cfg in (LAUNCH_CONFIGS if HAS_CUDA else LAUNCH_CONFIGS[:1])
    for rule in ("sum", "delta-registers", "delta-global+erase")
    for dtype, width, T in (((torch.bfloat16, 64, 333), (torch.bfloat16, 64, 320), (torch.float32, 64, 333),
                             (torch.bfloat16, 16, 333)) if HAS_CUDA and cfg[0] == 64
                            else ((torch.bfloat16, 64, 333),) if HAS_CUDA else ((torch.float32, 16, 70),))
]


@pytest.mark.parametrize("cfg,rule,dtype,width,T", LAUNCH_CASES)
def test_every_launch_configuration(cfg, rule, dtype, width, T, monkeypatch):
    from fwp_kernels.chunk_torch import chunk_delta_rule_torch, chunk_linear_attn_torch
    import fwp_kernels.triton.common as tu

    C, warps, stages = cfg
    for prefix in ("", "NARROW_"):  # the configuration applies to 32- and 16-wide tiles alike
        monkeypatch.setattr(tu, prefix + "NUM_WARPS", warps)
        monkeypatch.setattr(tu, prefix + "NUM_STAGES", stages)
        monkeypatch.setattr(tu, prefix + "REG_STATE_STAGES", stages or getattr(tu, prefix + "REG_STATE_STAGES"))
    monkeypatch.setattr(tu, "REG_STATE_MAX_D_DOT", 64 if rule == "delta-registers" else 0)
    want = dict(num_warps=warps, **({} if stages is None else {"num_stages": stages}))
    assert tu.launch_options(32, 32) == tu.launch_options(16, 32) == want
    B, H, K, V = (2, 2, width, width) if HAS_CUDA else (1, 1, 16, 16)  # with an initial state
    erase = rule.endswith("erase")
    q, k, v, beta, c, S0 = make_inputs(T, B, H, K, V, dtype, seed=C + warps + (stages or 0), init=True, erase=erase)
    if rule == "sum":
        ours = lambda q, k, v, beta, c, S0: chunk_linear_attn(  # noqa: E731
            q, k, v, initial_state=S0, output_final_state=True, chunk_size=C)
        ref = lambda q, k, v, beta, c, S0: chunk_linear_attn_torch(q, k, v, initial_state=S0)  # noqa: E731
    else:
        ours = lambda q, k, v, beta, c, S0: chunk_delta_rule(  # noqa: E731
            q, k, v, beta, erase=c, initial_state=S0, output_final_state=True, chunk_size=C)
        ref = lambda q, k, v, beta, c, S0: chunk_delta_rule_torch(  # noqa: E731
            q, k, v, beta, erase=c, initial_state=S0)
    leaves = [q, k, v, None if rule == "sum" else beta, c, S0]
    o, S, g = grads_of(ours, leaves, seed=31)
    o_r, S_r, g_r = grads_of(ref, f64(leaves), seed=31)
    tol = (GPU_RTOL if HAS_CUDA else RTOL)[dtype]
    errs = {"o": rel(o, o_r), "S": rel(S, S_r)}
    errs.update({n: rel(a, b) for n, a, b in zip(["dq", "dk", "dv", "dbeta", "derase", "dS0"], g, g_r) if b is not None})
    bad = {n: f"{e:.1e}" for n, e in errs.items() if not e < tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: { {n: f'{e:.1e}' for n, e in errs.items()} })"


def test_dot_precision_and_tiles_on_a_gpu(monkeypatch):
    """What the H200 run showed, as policy (checked here without a GPU): tf32x3 dots for
    float32 inputs and for a float32 q next to half k, v (the attention-normalised scans,
    whose dq cancels: tf32 gave 10-33% dq errors at T = 65,536); tiles of tf32x3 kernels
    at least 32 wide (16-wide ones hit an illegal memory access in the dq/dk kernels)."""
    import fwp_kernels.triton.common as tu
    import fwp_kernels.triton.linear_attn as lc

    monkeypatch.delenv("FWP_TRITON_DOT_PRECISION", raising=False)
    assert tu.dot_precision(torch.float32) == "tf32x3"
    assert tu.dot_precision(torch.bfloat16) == "tf32"
    assert tu.dot_precision(torch.float16, float32_query=True) == "tf32x3"
    monkeypatch.setattr(tu, "is_interpreter", lambda: False)
    assert tu.tile_sizes(12, 20, "tf32x3") == (32, 32)
    assert tu.tile_sizes(12, 20, "tf32") == (16, 32)
    assert tu.tile_sizes(512, 256, "tf32x3") == (32, 32)
    monkeypatch.undo()
    # the chunked kernels take the forward's precision into the backward's recomputation
    seen = []
    real = lc.chunk_states_fwd
    monkeypatch.setattr(lc, "chunk_states_fwd", lambda *a: seen.append(a[-1]) or real(*a))
    q, k, v, _, _, _ = make_inputs(20, 1, 1, 8, 8, torch.float16, seed=3)
    q32 = q.float().requires_grad_(True)
    o, _ = chunk_linear_attn(q32, k, v, out_dtype=torch.float32)
    o.sum().backward()
    o, _ = chunk_linear_attn(q.requires_grad_(True), k, v)
    o.float().sum().backward()
    assert seen == ["tf32x3", "tf32x3", "tf32", "tf32"]


def test_launch_options_by_tile_width(monkeypatch):
    """32-wide tiles launch with the tuned NUM_WARPS / NUM_STAGES, a 16-wide tile with the
    NARROW_* options; the delta rule's register-state pass with its own depth."""
    import fwp_kernels.triton.common as tu

    assert tu.launch_options(32, 32) == {"num_warps": tu.NUM_WARPS, "num_stages": tu.NUM_STAGES}
    narrow = tu.launch_options(16, 32)
    assert narrow["num_warps"] == tu.NARROW_NUM_WARPS and narrow.get("num_stages") == tu.NARROW_NUM_STAGES
    assert tu.state_pass_options(64, 32, 32)["num_stages"] == tu.REG_STATE_STAGES
    assert tu.state_pass_options(16, 16, 16)["num_stages"] == tu.NARROW_REG_STATE_STAGES
    assert tu.state_pass_options(128, 32, 32) == tu.launch_options(32, 32)  # global-memory path
