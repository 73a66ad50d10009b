"""The chunked PyTorch scan equals the step-by-step paper-form reference in float64,
for values, final states and every gradient; plus input checks."""

import itertools

import pytest
import torch

from fwp_kernels import FastWeightState, fast_weight_scan, recurrent_fast_weight

RTOL = 1e-8  # float64 relative error ||a - b|| / ||b||


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(T, B=2, H=2, K=6, V=5, dtype=torch.float64, init=False, attn_norm=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(T, B, H, K, generator=g, dtype=dtype)
    k = torch.rand(T, B, H, K, generator=g, dtype=dtype)
    k = k / k.sum(-1, keepdim=True)  # sum-normalised keys (Eq. 29) keep the delta rule contractive
    v = torch.randn(T, B, H, V, generator=g, dtype=dtype)
    beta = torch.rand(T, B, H, generator=g, dtype=dtype)
    state = None
    if init:
        state = FastWeightState(
            torch.randn(B, H, K, V, generator=g, dtype=dtype),
            torch.rand(B, H, K, generator=g, dtype=dtype) + 0.5 if attn_norm else None,
        )
    return q, k, v, beta, state


CASES = list(itertools.product(["sum", "delta"], [False, True], [False, True], [1, 17, 64, 150]))


@pytest.mark.parametrize("rule,attn_norm,init,T", CASES)
def test_chunk_equals_reference_values_and_grads(rule, attn_norm, init, T):
    q, k, v, beta, state = inputs(T, init=init, attn_norm=attn_norm, seed=T)
    leaves = [q, k, v, beta] + ([state.S] + ([state.z] if state.z is not None else []) if state else [])
    for x in leaves:
        x.requires_grad_(True)
    results = {}
    for impl in ("recurrent", "chunk"):
        out, final = fast_weight_scan(
            q, k, v, beta if rule == "delta" else None, rule=rule, attn_norm=attn_norm,
            initial_state=state, output_final_state=True, impl=impl,
        )
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + final.S.pow(2).sum()
        if attn_norm:
            assert final.z is not None
            loss = loss + final.z.sum()
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results[impl] = (out, final, grads)
    (o_r, f_r, g_r), (o_c, f_c, g_c) = results["recurrent"], results["chunk"]
    assert rel(o_c, o_r) < RTOL
    assert rel(f_c.S, f_r.S) < RTOL
    if attn_norm:
        assert rel(f_c.z, f_r.z) < RTOL
    for i, (a, b) in enumerate(zip(g_c, g_r)):
        if rule == "sum" and i == 3:
            assert a is None and b is None  # beta unused by the sum rule
            continue
        assert rel(a, b) < RTOL, f"gradient {i}"


def test_reference_is_the_paper_equations():
    """Hand-rolled Eq. 20-25 for two steps, independent of the reference's code."""
    q, k, v, beta, _ = inputs(2, B=1, H=1)
    out, final = recurrent_fast_weight(q, k, v, beta, rule="delta", output_final_state=True)
    W = torch.zeros(v.shape[-1], k.shape[-1], dtype=torch.float64)
    for i in range(2):
        vbar = W @ k[i, 0, 0]
        W = W + beta[i, 0, 0] * torch.outer(v[i, 0, 0] - vbar, k[i, 0, 0])
        assert torch.allclose(out[i, 0, 0], W @ q[i, 0, 0])
    assert torch.allclose(final.S[0, 0], W.t())


def test_attention_normalised_sum_rule_is_linear_attention():
    """Eq. 13: y_i = sum_j v_j k_j.q_i / sum_j k_j.q_i."""
    q, k, v, _, _ = inputs(9)
    out, _ = fast_weight_scan(q, k, v, rule="sum", attn_norm=True, impl="chunk")
    scores = torch.einsum("ibhk,jbhk->bhij", q, k).tril()
    expect = torch.einsum("bhij,jbhv->ibhv", scores / scores.sum(-1, keepdim=True), v)
    assert rel(out, expect) < 1e-5  # up to the EPS = 1e-6 added to denominators of size ~1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    q, k, v, beta, _ = inputs(80, dtype=torch.float64)
    ref, ref_state = fast_weight_scan(q, k, v, beta, rule="delta", output_final_state=True, impl="recurrent")
    out, state = fast_weight_scan(
        q.to(dtype), k.to(dtype), v.to(dtype), beta.to(dtype), rule="delta", output_final_state=True, impl="chunk"
    )
    assert out.dtype == dtype and state.S.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert rel(out.double(), ref) < tol
    assert rel(state.S.double(), ref_state.S) < tol


def test_split_sequence_with_carried_state_equals_whole():
    q, k, v, beta, _ = inputs(100)
    whole, _ = fast_weight_scan(q, k, v, beta, rule="delta", attn_norm=True, impl="chunk")
    a, st = fast_weight_scan(q[:37], k[:37], v[:37], beta[:37], rule="delta", attn_norm=True, output_final_state=True, impl="chunk")
    b, _ = fast_weight_scan(q[37:], k[37:], v[37:], beta[37:], rule="delta", attn_norm=True, initial_state=st, impl="chunk")
    assert rel(torch.cat([a, b]), whole) < RTOL


def test_bad_inputs_name_the_argument():
    q, k, v, beta, _ = inputs(4)
    with pytest.raises(ValueError, match="beta"):
        fast_weight_scan(q, k, v, rule="delta")
    with pytest.raises(ValueError, match="beta must be"):
        fast_weight_scan(q, k, v, beta[:, :1], rule="delta")
    with pytest.raises(ValueError, match=r"q must be \[T, B, H, D\]"):
        fast_weight_scan(q[0], k, v)
    with pytest.raises(ValueError, match="v must be"):
        fast_weight_scan(q, k, v[:2])
    with pytest.raises(ValueError, match="q and k"):
        fast_weight_scan(q, k[..., :3], v)
    with pytest.raises(ValueError, match="rule"):
        fast_weight_scan(q, k, v, rule="hebb")
    with pytest.raises(ValueError, match="impl"):
        fast_weight_scan(q, k, v, impl="cuda-magic")
    bad = FastWeightState(torch.zeros(2, 2, 3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="initial_state.S"):
        fast_weight_scan(q, k, v, initial_state=bad)


def test_mixed_dtypes_run_in_their_common_dtype():
    q, k, v, beta, _ = inputs(20, dtype=torch.float64)
    ref, _ = fast_weight_scan(q, k, v, beta, rule="delta", impl="recurrent")
    out, _ = fast_weight_scan(q.float(), k.float(), v.half(), beta.float(), rule="delta", impl="chunk")
    assert out.dtype == torch.float32
    assert rel(out.double(), ref) < 1e-3  # v rounded to fp16
