#!/usr/bin/env python
"""Benchmark the fast weight scans: forward and forward+backward time, tokens/s, peak memory.

Implementations (each only where it runs):
  triton     our Triton chunked kernels (fwp_kernels.linear_attn / fwp_kernels.delta_rule), CUDA
  chunk      our chunked PyTorch path (fwp_kernels.chunk_torch), the CPU path
  recurrent  the step-by-step paper-form loop (fwp_kernels.reference), T <= --recurrent-max-t
  fla-chunk, fla-fused-recurrent   flash-linear-attention, if importable (CUDA)
  sdpa       PyTorch scaled_dot_product_attention, causal softmax attention (the baseline)

Shapes: B*T = --tokens with T from --t; H * d_head = --model-dim with d_head from
--d-head; d_dot (feature size of phi(q), phi(k)) from --d-dot. Defaults are the GPU grid
(16K tokens, T in 512..32768, model dim 1024, d_head 64/128, d_dot 64/256/512).
``--cpu-small`` switches to a reduced CPU grid comparing chunk, recurrent and sdpa.

Inputs follow the model: phi(q), phi(k) positive and sum-normalised (softmax over the
feature axis), beta = sigmoid(.). Layout: ours time-major [T, B, H, D]; fla [B, T, H, D];
SDPA [B, H, T, d_head]. Peak memory: torch.cuda.max_memory_allocated on CUDA (above the
inputs); on CPU the peak resident-set growth sampled every ~1 ms (approximate).

Examples:
  python scripts/bench_kernels.py                         # full GPU grid, bf16
  python scripts/bench_kernels.py --t 2048 --d-dot 256 --rules delta --impls triton,fla-chunk
  python scripts/bench_kernels.py --cpu-small             # CPU table of docs/benchmarks.md
"""

import argparse
import os
import statistics
import threading
import time

import torch
import torch.nn.functional as F

from fwp_kernels.chunk_torch import chunk_delta_rule_torch, chunk_linear_attn_torch
from fwp_kernels.reference import recurrent_fast_weight

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ALL_IMPLS = ["triton", "chunk", "recurrent", "fla-chunk", "fla-fused-recurrent", "sdpa"]


# ----------------------------------------------------------------------------- fla


def load_fla():
    """(dict of fla functions, None) or ({}, reason)."""
    try:
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
        from fla.ops.linear_attn import chunk_linear_attn
    except Exception as e:  # ImportError, or Triton incompatibilities at import time
        return {}, f"fla not importable: {type(e).__name__}: {str(e)[:80]}"
    return {"chunk_delta_rule": chunk_delta_rule, "fused_recurrent_delta_rule": fused_recurrent_delta_rule,
            "chunk_linear_attn": chunk_linear_attn}, None


def fla_linear_attn(fn, q, k, v):
    try:
        return fn(q, k, v, scale=1.0, normalize=False, head_first=False)[0]
    except TypeError:  # newer fla: no head_first argument, [B, T, H, D] always
        return fn(q, k, v, scale=1.0, normalize=False)[0]


# ------------------------------------------------------------------------- measuring


class PeakRSS:
    """Peak growth of the resident set size while active (CPU memory, sampled)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.001)

    def __enter__(self):
        self.base = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self.base)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device, warmup, reps):
    """(median seconds, peak bytes) of fn()."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with PeakRSS() as mem:
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        peak = mem.peak
    return statistics.median(times), peak


# ---------------------------------------------------------------------------- cases


def make_inputs(rule, T, B, H, d_head, d_dot, dtype, device, layout):
    g = torch.Generator(device="cpu").manual_seed(0)
    shape_k = (T, B, H, d_dot) if layout == "tbhd" else (B, T, H, d_dot)
    shape_v = shape_k[:-1] + (d_head,)
    q = torch.randn(shape_k, generator=g).softmax(-1)
    k = torch.randn(shape_k, generator=g).softmax(-1)
    v = torch.randn(shape_v, generator=g)
    beta = torch.randn(shape_k[:-1], generator=g).sigmoid()
    out = [x.to(device=device, dtype=dtype) for x in (q, k, v, beta)]
    if layout == "bthd" and rule == "delta":  # fla expects L2-normalised keys
        out[1] = F.normalize(out[1].float(), dim=-1).to(dtype)
    return out


def build(impl, rule, T, B, H, d_head, d_dot, dtype, device, fla):
    """A closure running one forward (returning the output), or a string: why it does not run."""
    if impl == "sdpa":
        q, k, v = (torch.randn(B, H, T, d_head, device=device, dtype=dtype) for _ in range(3))
        return [q, k, v], lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if impl.startswith("fla"):
        if not fla[0]:
            return fla[1]
        if device.type != "cuda":
            return "fla needs CUDA"
        q, k, v, beta = make_inputs(rule, T, B, H, d_head, d_dot, dtype, device, "bthd")
        if impl == "fla-chunk" and rule == "sum":
            return [q, k, v], lambda q, k, v: fla_linear_attn(fla[0]["chunk_linear_attn"], q, k, v)
        if impl == "fla-chunk":
            fn = fla[0]["chunk_delta_rule"]
        elif rule == "delta":
            fn = fla[0]["fused_recurrent_delta_rule"]
        else:
            return "fla fused-recurrent benchmarked for the delta rule only"
        return [q, k, v, beta], lambda q, k, v, beta: fn(q, k, v, beta, scale=1.0)[0]
    q, k, v, beta = make_inputs(rule, T, B, H, d_head, d_dot, dtype, device, "tbhd")
    if impl == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton needs CUDA"
        from fwp_kernels.delta_rule import chunk_delta_rule
        from fwp_kernels.linear_attn import chunk_linear_attn
        if rule == "sum":
            return [q, k, v], lambda q, k, v: chunk_linear_attn(q, k, v)[0]
        return [q, k, v, beta], lambda q, k, v, beta: chunk_delta_rule(q, k, v, beta)[0]
    if impl == "chunk":
        if rule == "sum":
            return [q, k, v], lambda q, k, v: chunk_linear_attn_torch(q, k, v)[0]
        return [q, k, v, beta], lambda q, k, v, beta: chunk_delta_rule_torch(q, k, v, beta)[0]
    if impl == "recurrent":
        if rule == "sum":
            return [q, k, v], lambda q, k, v: recurrent_fast_weight(q, k, v, rule="sum")[0]
        return [q, k, v, beta], lambda q, k, v, beta: recurrent_fast_weight(q, k, v, beta, rule="delta")[0]
    raise ValueError(impl)


def run_case(impl, rule, T, B, H, d_head, d_dot, args, device, fla):
    if impl == "recurrent" and T > args.recurrent_max_t:
        return None, f"skipped: T > --recurrent-max-t {args.recurrent_max_t}"
    built = build(impl, rule, T, B, H, d_head, d_dot, DTYPES[args.dtype], device, fla)
    if isinstance(built, str):
        return None, built
    inputs, fwd = built
    grads = [x.detach().clone().requires_grad_(True) for x in inputs]
    # the step-by-step loop is slow and has nothing to warm up: one timed run
    warm, reps = (args.warmup, args.reps) if impl != "recurrent" else (0, 1)

    def fwd_only():
        with torch.no_grad():
            fwd(*inputs)

    def fwd_bwd():
        out = fwd(*grads)
        out.backward(torch.ones_like(out))
        for x in grads:
            x.grad = None

    try:
        t_f, m_f = measure(fwd_only, device, warm, reps)
        t_fb, m_fb = (None, None) if args.no_backward else measure(fwd_bwd, device, warm, reps)
    except Exception as e:  # unsupported shape/dtype in a third-party kernel, OOM, ...
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:90]}"
    return (t_f, m_f, t_fb, m_fb), ""


def fmt_ms(t):
    return "-" if t is None else f"{t * 1e3:.2f}"


def fmt_tps(t, tokens):
    if t is None:
        return "-"
    rate = tokens / t
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.1f}K" if rate >= 1e3 else f"{rate:.0f}"


def fmt_mib(m):
    return "-" if m is None else f"{m / 2**20:.0f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16384, help="B*T per case (default 16K)")
    p.add_argument("--t", type=str, default="512,2048,8192,32768", help="sequence lengths T")
    p.add_argument("--model-dim", type=int, default=1024, help="H * d_head")
    p.add_argument("--d-head", type=str, default="64,128", help="d_head (= d_value)")
    p.add_argument("--d-dot", type=str, default="64,256,512", help="d_dot, the feature size of phi(q), phi(k)")
    p.add_argument("--rules", type=str, default="sum,delta")
    p.add_argument("--impls", type=str, default=",".join(ALL_IMPLS))
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--recurrent-max-t", type=int, default=2048, help="skip the step-by-step loop above this T")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--cpu-small", action="store_true",
                   help="reduced CPU grid: 4K tokens, T 256/1024/4096, model dim 256, d_head 64, "
                        "d_dot 64/256, fp32, impls chunk,recurrent,sdpa, recurrent up to T = 1024")
    args = p.parse_args(argv)
    if args.cpu_small:
        args.device, args.dtype, args.tokens, args.model_dim = "cpu", "fp32", 4096, 256
        args.t, args.d_head, args.d_dot = "256,1024,4096", "64", "64,256"
        args.impls, args.warmup, args.reps, args.recurrent_max_t = "chunk,recurrent,sdpa", 1, 3, 1024
    device = torch.device(args.device)
    impls = args.impls.split(",")
    for i in impls:
        if i not in ALL_IMPLS:
            p.error(f"--impls: unknown implementation {i!r} (choose from {ALL_IMPLS})")
    fla = load_fla() if any(i.startswith("fla") for i in impls) else ({}, "not requested")

    env = [f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
           f" ({os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()})",
           f"torch {torch.__version__}", f"dtype {args.dtype}"]
    try:
        import triton
        env.append(f"triton {triton.__version__}")
    except ImportError:
        env.append("triton not installed")
    if fla[1] and fla[1] != "not requested":
        env.append(fla[1])
    print("# " + ", ".join(env))
    print(f"# tokens per case B*T = {args.tokens}, model dim H*d_head = {args.model_dim}; "
          f"times are medians in ms; tok/s = B*T / time")
    head = ["rule", "T", "B", "H", "d_head", "d_dot", "impl", "fwd ms", "fwd tok/s", "fwd MiB",
            "fwd+bwd ms", "fwd+bwd tok/s", "fwd+bwd MiB", "note"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for T in map(int, args.t.split(",")):
        B = max(1, args.tokens // T)
        for d_head in map(int, args.d_head.split(",")):
            H = args.model_dim // d_head
            sdpa_done = False
            for rule in args.rules.split(","):
                for d_dot in map(int, args.d_dot.split(",")):
                    for impl in impls:
                        if impl == "sdpa":
                            if sdpa_done:
                                continue
                            sdpa_done = True
                        res, note = run_case(impl, rule, T, B, H, d_head, d_dot, args, device, fla)
                        t_f, m_f, t_fb, m_fb = res if res else (None,) * 4
                        row = ["softmax" if impl == "sdpa" else rule, T, B, H, d_head,
                               "-" if impl == "sdpa" else d_dot, impl,
                               fmt_ms(t_f), fmt_tps(t_f, B * T), fmt_mib(m_f),
                               fmt_ms(t_fb), fmt_tps(t_fb, B * T), fmt_mib(m_fb), note]
                        print("| " + " | ".join(map(str, row)) + " |", flush=True)
                        if device.type == "cuda":
                            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
