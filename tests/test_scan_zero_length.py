"""A zero-length input to the chunked CPU scans (issue 17, item 6): no outputs and the
initial state unchanged, as the step-by-step path gives (``stack expects a non-empty
TensorList`` before). float64 throughout; states compared exactly."""

import pytest
import torch

from fwp_kernels import FastWeightState, fast_weight_scan
from fwp_kernels.chunk_torch import chunk_delta_rule_torch, chunk_linear_attn_torch

B, H, K, V = 2, 3, 4, 5


def empty_inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.rand(0, B, H, K, generator=g, dtype=dtype) for _ in range(2))
    v = torch.rand(0, B, H, V, generator=g, dtype=dtype)
    return q, k, v, torch.rand(0, B, H, generator=g, dtype=dtype)


@pytest.mark.parametrize("attn_norm", [False, True])
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_zero_tokens_give_no_output_and_the_initial_state(rule, attn_norm):
    q, k, v, beta = empty_inputs()
    g = torch.Generator().manual_seed(1)
    init = FastWeightState(torch.randn(B, H, K, V, generator=g, dtype=torch.float64),
                           torch.rand(B, H, K, generator=g, dtype=torch.float64) if attn_norm else None)
    for impl in ("chunk", "recurrent"):
        out, state = fast_weight_scan(q, k, v, beta if rule == "delta" else None, rule=rule, attn_norm=attn_norm,
                                      initial_state=init, output_final_state=True, impl=impl)
        assert out.shape == (0, B, H, V) and out.dtype == torch.float64, impl
        assert torch.equal(state.S, init.S), impl
        assert (state.z is None) if not attn_norm else torch.equal(state.z, init.z), impl


@pytest.mark.parametrize("attn_norm", [False, True])
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_zero_tokens_without_initial_state_give_a_zero_state(rule, attn_norm):
    q, k, v, beta = empty_inputs()
    out, state = fast_weight_scan(q, k, v, beta if rule == "delta" else None, rule=rule, impl="chunk",
                                  attn_norm=attn_norm, output_final_state=True)
    assert out.shape == (0, B, H, V) and torch.equal(state.S, torch.zeros(B, H, K, V, dtype=torch.float64))
    if attn_norm:  # the normaliser too: z = 0, as a scan that then continues from it expects
        assert torch.equal(state.z, torch.zeros(B, H, K, dtype=torch.float64))
    else:
        assert state.z is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_cores_on_zero_tokens_keep_dtypes_and_gradients(dtype):
    q, k, v, beta = empty_inputs(dtype)
    S0 = torch.randn(B, H, K, V, requires_grad=True)  # float32 state, as for half inputs
    for o, S in (chunk_linear_attn_torch(q, k, v, S0), chunk_delta_rule_torch(q, k, v, beta, initial_state=S0),
                 chunk_linear_attn_torch(q, k, v, S0, out_dtype=torch.float32)):
        assert o.shape == (0, B, H, V) and S.dtype == torch.float32
        (S * 2).sum().backward()
        assert torch.equal(S0.grad, torch.full_like(S0, 2.0))
        S0.grad = None
    assert chunk_linear_attn_torch(q, k, v, S0)[0].dtype == dtype
    assert chunk_linear_attn_torch(q, k, v, S0, out_dtype=torch.float32)[0].dtype == torch.float32
