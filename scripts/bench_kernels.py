#!/usr/bin/env python
"""Benchmark the fast weight scans: forward and forward+backward time, tokens/s, peak memory.

Implementations (each only where it runs):
  triton     our Triton chunked kernels (fwp_kernels.triton), CUDA
  chunk      our chunked PyTorch path (fwp_kernels.chunk_torch), the CPU path
  recurrent  the step-by-step paper-form loop (fwp_kernels.reference), T <= --recurrent-max-t
  fla-chunk, fla-fused-recurrent   flash-linear-attention, if importable (CUDA)
  sdpa       PyTorch scaled_dot_product_attention, causal softmax attention (the baseline)

Shapes: B*T = --tokens with T from --t; H * d_head = --model-dim with d_head from
--d-head; d_dot (feature size of phi(q), phi(k)) from --d-dot. Defaults are the GPU grid
(16K tokens, T in 512..32768, model dim 1024, d_head 64/128, d_dot 64/256/512).
``--cpu-small`` switches the defaults to a reduced CPU grid comparing chunk, recurrent and
sdpa (options given explicitly still apply).

Inputs: every fast-weight implementation of a rule gets the same values; only the layout
differs (ours time-major [T, B, H, D], fla [B, T, H, D], a transposed copy). For both
rules phi(q) = softmax over the feature axis (positive, sum 1) and v ~ N(0, 1). Keys: the
sum rule uses softmax over the features too; the delta rule uses those softmax keys
L2-normalised (fla requires unit keys; with unit keys and beta = sigmoid(.) in (0, 1) the
delta recurrence is stable in every implementation). No output scaling or normalisation
anywhere (fla: scale=1.0, normalize=False). SDPA gets its own random [B, H, T, d_head].

Self-check (on by default, --no-check disables): before timing, each fast-weight
implementation's forward output is compared with a float64 reference computed from the
same dtype-rounded inputs on the same device by the chunked PyTorch scans in float64
(fwp_kernels.chunk_torch, tested equal to the step-by-step reference); the column
``rel err`` is ||o - o_ref|| / ||o_ref||. It is a sanity bound that catches a wrong or
mismatched implementation, not the unit-test tolerance: fp32 1e-4, fp16 1e-2, bf16 5e-2.
An error above it marks the row ``CHECK FAILED`` and the script exits with status 1 after
printing everything.

Timing: median over --reps after --warmup calls (the step-by-step loop: one run); CUDA
events on CUDA, wall clock on CPU. fwd = one forward under no_grad; fwd+bwd = forward and
backward of sum(o) into all inputs. Peak memory: torch.cuda.max_memory_allocated on CUDA
(above what was allocated before the timed calls, so inputs excluded); on CPU the peak
resident-set growth sampled every ~1 ms (approximate).

After the main table two speedup tables follow (fwd+bwd, then forward only): per case the
time of each other implementation divided by the time of ours (triton, or chunk where triton
did not run), with the targets of the fwd+bwd comparison: >= 1.1x fla-chunk, faster than
SDPA from T = 4096 up, >= 20x the step-by-step loop at T = 8192.

Examples:
  python scripts/bench_kernels.py                         # full GPU grid, bf16
  python scripts/bench_kernels.py --t 2048 --d-dot 256 --rules delta --impls triton,fla-chunk
  python scripts/bench_kernels.py --cpu-small             # CPU table of docs/benchmarks.md
"""

import argparse
import gc
import inspect
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional

import torch
import torch.nn.functional as F

from fwp_kernels import fast_weight_scan
from fwp_kernels.chunk_torch import chunk_delta_rule_torch, chunk_linear_attn_torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ALL_IMPLS = ["triton", "chunk", "recurrent", "fla-chunk", "fla-fused-recurrent", "sdpa"]

#: Sanity bound on the forward relative error against the float64 reference, per dtype.
#: Loose on purpose (a wrong rule, layout or normalisation gives errors of order 1); the
#: unit tests in tests/ hold the implementations to much tighter tolerances.
CHECK_TOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}

#: Time ratios reported in the speedup tables: these implementations against ours.
COMPARED = ["chunk", "fla-chunk", "fla-fused-recurrent", "sdpa", "recurrent"]

#: The defaults that --cpu-small switches to.
CPU_SMALL = dict(device="cpu", dtype="fp32", tokens=4096, model_dim=256, t="256,1024,4096", d_head="64",
                 d_dot="64,256", impls="chunk,recurrent,sdpa", warmup=1, reps=3, recurrent_max_t=1024)


# ----------------------------------------------------------------------------- fla


class Fla(NamedTuple):
    """flash-linear-attention as found: its functions (empty if unusable), version, or why not."""

    fns: dict
    version: Optional[str]
    reason: Optional[str]


def load_fla() -> Fla:
    try:
        import fla
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
        from fla.ops.linear_attn import chunk_linear_attn
    except Exception as e:  # ImportError, or Triton incompatibilities at import time
        return Fla({}, None, f"fla not importable: {describe(e, 80)}")
    fns = {"chunk_delta_rule": chunk_delta_rule, "fused_recurrent_delta_rule": fused_recurrent_delta_rule,
           "chunk_linear_attn": chunk_linear_attn}
    return Fla(fns, getattr(fla, "__version__", "unknown version"), None)


def fla_kwargs(fn, **kwargs) -> dict:
    """Keyword arguments for an fla op taking [B, T, H, D] inputs.

    Older fla versions have a ``head_first`` switch (default True, i.e. [B, H, T, D]); it is
    set to False only where the signature has it, so that a TypeError raised inside fla is
    never mistaken for a signature mismatch. ``normalize`` (chunk_linear_attn) likewise."""
    params = inspect.signature(fn).parameters
    if "normalize" in kwargs and "normalize" not in params:
        del kwargs["normalize"]
    if "head_first" in params:
        kwargs["head_first"] = False
    return kwargs


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


def describe(e: BaseException, width: int) -> str:
    """'Type: first line of the message', cut to `width` characters of message."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:width] if lines else ''}".rstrip(": ")


def free_memory(device, collect=False):
    """Release cached CUDA memory after a case; after a failure (e.g. an OOM) collect garbage
    first so that the failed call's tensors go too and later cases still run."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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


def make_inputs(rule, T, B, H, d_head, d_dot, dtype, device) -> List[torch.Tensor]:
    """[q, k, v, beta] of one fast-weight case, time-major, in `dtype` on `device`.

    q = softmax(N(0,1)) over the features; k the same for the sum rule and additionally
    L2-normalised for the delta rule; v ~ N(0, 1); beta = sigmoid(N(0,1)) [T, B, H]. Drawn
    in float32 on the device from a fixed seed, then rounded to `dtype`."""
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(shape, generator=g, device=device)

    q = randn(T, B, H, d_dot).softmax(-1)
    k = randn(T, B, H, d_dot).softmax(-1)
    if rule == "delta":
        k = F.normalize(k, dim=-1)
    v = randn(T, B, H, d_head)
    beta = randn(T, B, H).sigmoid()
    return [x.to(dtype) for x in (q, k, v, beta)]


def reference_output(rule, inputs) -> torch.Tensor:
    """Float64 forward output [T, B, H, d_head] of a case from its dtype-rounded inputs,
    by the chunked PyTorch scans run in float64 on the inputs' device."""
    q, k, v, beta = (x.double() for x in inputs)
    with torch.no_grad():
        if rule == "sum":
            return chunk_linear_attn_torch(q, k, v)[0]
        return chunk_delta_rule_torch(q, k, v, beta)[0]


def relative_error(out, ref, batch_major) -> float:
    """||o - o_ref|| / ||o_ref|| in float64; fla's [B, T, H, D] output is transposed first."""
    o = out.transpose(0, 1) if batch_major else out
    return ((o.double() - ref).norm() / ref.norm()).item()


class Runner(NamedTuple):
    """What is timed: fwd(*inputs) returns the forward output (leaf copies of the inputs
    get the gradients in fwd+bwd); batch_major: the output is [B, T, H, D] (fla)."""

    inputs: List[torch.Tensor]
    fwd: Callable
    batch_major: bool = False


def build(impl, rule, inputs, fla: Fla, device):
    """A Runner for one implementation on a case's shared time-major inputs, or a string:
    why it does not run."""
    q, k, v, beta = inputs
    T, B, H, d_head = v.shape
    if impl == "sdpa":  # softmax attention on its own inputs, [B, H, T, d_head]
        g = torch.Generator(device=device).manual_seed(1)
        qkv = [torch.randn(B, H, T, d_head, generator=g, device=device).to(v.dtype) for _ in range(3)]
        return Runner(qkv, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    if impl.startswith("fla"):
        if not fla.fns:
            return fla.reason
        if device.type != "cuda":
            return "fla needs CUDA"
        q, k, v, beta = (x.transpose(0, 1).contiguous() for x in inputs)  # [B, T, H, *]
        if impl == "fla-chunk" and rule == "sum":
            fn = fla.fns["chunk_linear_attn"]
            kw = fla_kwargs(fn, scale=1.0, normalize=False)
            return Runner([q, k, v], lambda q, k, v: fn(q, k, v, **kw)[0], batch_major=True)
        if impl == "fla-chunk":
            fn = fla.fns["chunk_delta_rule"]
        elif rule == "delta":
            fn = fla.fns["fused_recurrent_delta_rule"]
        else:
            return "fla fused-recurrent benchmarked for the delta rule only"
        kw = fla_kwargs(fn, scale=1.0)
        return Runner([q, k, v, beta], lambda q, k, v, beta: fn(q, k, v, beta, **kw)[0], batch_major=True)
    if impl not in ("triton", "chunk", "recurrent"):
        raise ValueError(impl)
    if impl == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton needs CUDA"
    # ours: the project's one entry point, with the implementation named
    leaves = [q, k, v] if rule == "sum" else [q, k, v, beta]
    return Runner(leaves, lambda *x: fast_weight_scan(*x, rule=rule, impl=impl)[0])


class Reference:
    """The float64 reference output of one case: computed on first use, shared by all
    implementations of the case, dropped with the case. ``get()`` is the tensor, or a
    string saying why there is none (e.g. out of memory)."""

    def __init__(self, rule, inputs, device):
        self.rule, self.inputs, self.device = rule, inputs, device
        self._value = None

    def get(self):
        if self._value is None:
            try:
                self._value = reference_output(self.rule, self.inputs)
            except Exception as e:  # e.g. out of memory for the float64 temporaries
                self._value = describe(e, 60)
            free_memory(self.device, collect=isinstance(self._value, str))
        return self._value


@dataclass
class Result:
    """One row of the main table (times in s, memory in bytes; None = not measured)."""

    t_f: Optional[float] = None
    m_f: Optional[int] = None
    t_fb: Optional[float] = None
    m_fb: Optional[int] = None
    rel_err: Optional[float] = None
    check_failed: bool = False
    note: str = ""


def run_case(impl, rule, inputs, ref: Optional[Reference], args, device, fla) -> Result:
    """Check (unless ref is None or impl is sdpa), then time one implementation on one case."""
    T = inputs[0].shape[0]
    if impl == "recurrent" and T > args.recurrent_max_t:
        return Result(note=f"skipped: T > --recurrent-max-t {args.recurrent_max_t}")
    built = build(impl, rule, inputs, fla, device)
    if isinstance(built, str):
        return Result(note=built)
    res = Result()
    grads = [x.detach().clone().requires_grad_(True) for x in built.inputs]
    # the step-by-step loop is slow and has nothing to warm up: one timed run
    warm, reps = (args.warmup, args.reps) if impl != "recurrent" else (0, 1)

    def fwd_only():
        with torch.no_grad():
            return built.fwd(*built.inputs)

    def fwd_bwd():
        out = built.fwd(*grads)
        out.backward(torch.ones_like(out))
        for x in grads:
            x.grad = None

    error = None
    try:
        if ref is not None and impl != "sdpa":
            ref_out = ref.get()
            if isinstance(ref_out, str):
                res.note = f"check skipped: reference failed: {ref_out}"
            else:
                res.rel_err = relative_error(fwd_only(), ref_out, built.batch_major)
                tol = CHECK_TOL[args.dtype]
                res.check_failed = not res.rel_err <= tol  # NaN fails too
                if res.check_failed:
                    res.note = f"CHECK FAILED (rel err > {tol:g})"
        res.t_f, res.m_f = measure(fwd_only, device, warm, reps)
        if not args.no_backward:
            res.t_fb, res.m_fb = measure(fwd_bwd, device, warm, reps)
    except Exception as e:  # unsupported shape/dtype in a third-party kernel, OOM, ...
        error = f"failed: {describe(e, 90)}"
    if error is not None:
        # outside the except block: the traceback (holding the failed call's tensors) is gone
        del grads, built
        free_memory(device, collect=True)
        res.note = "; ".join(n for n in (res.note, error) if n)
    return res


# --------------------------------------------------------------------------- printing


def fmt_ms(t):
    return "-" if t is None else f"{t * 1e3:.2f}"


def fmt_tps(t, tokens):
    if t is None:
        return "-"
    rate = tokens / t
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.1f}K" if rate >= 1e3 else f"{rate:.0f}"


def fmt_mib(m):
    return "-" if m is None else f"{m / 2**20:.0f}"


def fmt_err(e):
    return "-" if e is None else f"{e:.1e}"


def fmt_ratio(r):
    if r is None:
        return "-"
    return f"{r:.0f}x" if r >= 100 else f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def print_table(head, rows):
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |", flush=True)


def targets(rule, T, ratios, ours_failed) -> str:
    """The issue's fwd+bwd targets that apply to a case, each marked met / MISSED."""
    out = []

    def add(name, ok):
        out.append(f"{name} {'met' if ok else 'MISSED'}")

    if ratios.get("fla-chunk") is not None:
        add(">=1.1x fla-chunk", ratios["fla-chunk"] >= 1.1)
    if T >= 4096 and ratios.get("sdpa") is not None:
        add(">sdpa", ratios["sdpa"] > 1.0)
    if T == 8192 and ratios.get("recurrent") is not None:
        add(">=20x recurrent", ratios["recurrent"] >= 20.0)
    if ours_failed:
        out.append("ours CHECK FAILED")
    return ", ".join(out) or "-"


def print_speedups(title, field, cases, results, impls, rules, with_targets):
    """One row per case: time of each other implementation / time of ours (> 1: ours faster).

    Ours is triton where it was measured, else chunk. results maps (case, impl) -> Result;
    sdpa is measured once per (T, d_head) and stored under every case of that shape."""
    others = [i for i in COMPARED if i in impls and not (i == "chunk" and "triton" not in impls)]
    head = ["rule", "T", "d_head", "d_dot", "ours"] + [f"x {i}" for i in others]
    head += ["targets"] if with_targets else []
    rows = []
    for case in sorted(cases, key=lambda c: (rules.index(c[0]), c[2], c[3], c[1])):  # rule, d_head, d_dot, T
        rule, T, d_head, d_dot = case

        def time_of(impl):
            r = results.get((case, impl))
            return None if r is None else getattr(r, field)

        ours = next((i for i in ("triton", "chunk") if time_of(i) is not None), None)
        ratios = {}
        for i in others:
            if ours is not None and i != ours and time_of(i) is not None:
                ratios[i] = time_of(i) / time_of(ours)
        row = [rule, T, d_head, d_dot, ours or "-"] + [fmt_ratio(ratios.get(i)) for i in others]
        if with_targets:
            ours_failed = ours is not None and results[(case, ours)].check_failed
            row.append(targets(rule, T, ratios, ours_failed) if ours else "no triton/chunk timing")
        rows.append(row)
    print()
    print(f"{title}: time of the other implementation / time of ours (> 1: ours is faster)")
    print()
    print_table(head, rows)


def versions_line(fla: Optional[Fla]) -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    if torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except Exception:
        parts.append("triton not importable")
    if fla is None:
        try:
            from importlib.metadata import version

            parts.append(f"fla {version('flash-linear-attention')} (installed, not requested)")
        except Exception:
            parts.append("fla not requested")
    elif fla.version is not None:
        parts.append(f"fla {fla.version}")
    else:
        parts.append(fla.reason)
    return "# versions: " + ", ".join(parts)


# ------------------------------------------------------------------------------ main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16384, help="B*T per case (default 16K)")
    p.add_argument("--t", type=str, default="512,2048,8192,32768", help="sequence lengths T")
    p.add_argument("--model-dim", type=int, default=1024, help="H * d_head")
    p.add_argument("--d-head", type=str, default="64,128", help="d_head (= d_value)")
    p.add_argument("--d-dot", type=str, default="64,256,512", help="d_dot, the feature size of phi(q), phi(k)")
    p.add_argument("--rules", type=str, default="sum,delta")
    p.add_argument("--impls", type=str, default=",".join(ALL_IMPLS), help=f"subset of {','.join(ALL_IMPLS)}")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--recurrent-max-t", type=int, default=8192,
                   help="skip the step-by-step loop above this T (default 8192, where the 20x target is)")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--no-check", action="store_true",
                   help="skip the forward self-check against the float64 reference")
    p.add_argument("--cpu-small", action="store_true",
                   help="reduced CPU grid (new defaults; options given explicitly still apply): "
                        "4K tokens, T 256/1024/4096, model dim 256, d_head 64, d_dot 64/256, fp32, "
                        "impls chunk,recurrent,sdpa, warmup 1, reps 3, recurrent up to T = 1024")
    args = p.parse_args(argv)
    if args.cpu_small:
        p.set_defaults(**CPU_SMALL)
        args = p.parse_args(argv)
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for i in args.impls:
        if i not in ALL_IMPLS:
            p.error(f"--impls: unknown implementation {i!r} (choose from {', '.join(ALL_IMPLS)})")
    for r in args.rules.split(","):
        if r not in ("sum", "delta"):
            p.error(f"--rules: unknown rule {r!r} (choose from sum, delta)")
    return args


def main(argv=None) -> int:
    """Print the tables; return 0, or 1 when a self-check failed."""
    args = parse_args(argv)
    device = torch.device(args.device)
    impls, rules = args.impls, args.rules.split(",")
    fla = load_fla() if any(i.startswith("fla") for i in impls) else None
    no_fla = Fla({}, None, "fla not requested")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# device: {device_name} ({os.cpu_count()} CPUs visible, torch threads "
          f"{torch.get_num_threads()}), dtype {args.dtype}")
    print(versions_line(fla))
    print(f"# tokens per case B*T = {args.tokens}, model dim H*d_head = {args.model_dim}; "
          f"times are medians in ms; tok/s = B*T / time")
    print("# rel err: forward ||o - o_ref|| / ||o_ref|| against the float64 chunked reference; "
          + ("off (--no-check)" if args.no_check else f"sanity bound {CHECK_TOL[args.dtype]:g} for {args.dtype}"))
    print()
    head = ["rule", "T", "B", "H", "d_head", "d_dot", "impl", "fwd ms", "fwd tok/s", "fwd MiB",
            "fwd+bwd ms", "fwd+bwd tok/s", "fwd+bwd MiB", "rel err", "note"]
    print_table(head, [])

    results, cases, failed = {}, [], []
    for T in map(int, args.t.split(",")):
        B = max(1, args.tokens // T)
        for d_head in map(int, args.d_head.split(",")):
            H = args.model_dim // d_head
            sdpa = None  # measured once per (T, d_head), shared by the rules and d_dot
            for rule in rules:
                for d_dot in map(int, args.d_dot.split(",")):
                    case = (rule, T, d_head, d_dot)
                    cases.append(case)
                    inputs = make_inputs(rule, T, B, H, d_head, d_dot, DTYPES[args.dtype], device)
                    ref = None if args.no_check else Reference(rule, inputs, device)
                    for impl in impls:
                        if impl == "sdpa" and sdpa is not None:
                            results[(case, impl)] = sdpa
                            continue
                        res = run_case(impl, rule, inputs, ref, args, device, fla or no_fla)
                        results[(case, impl)] = res
                        if impl == "sdpa":
                            sdpa = res
                        if res.check_failed:
                            failed.append(f"{impl} {rule} T={T} d_head={d_head} d_dot={d_dot}")
                        row = ["softmax" if impl == "sdpa" else rule, T, B, H, d_head,
                               "-" if impl == "sdpa" else d_dot, impl,
                               fmt_ms(res.t_f), fmt_tps(res.t_f, B * T), fmt_mib(res.m_f),
                               fmt_ms(res.t_fb), fmt_tps(res.t_fb, B * T), fmt_mib(res.m_fb),
                               fmt_err(res.rel_err), res.note]
                        print("| " + " | ".join(map(str, row)) + " |", flush=True)
                        free_memory(device)
                    del inputs, ref
                    free_memory(device)

    if args.no_backward:
        print("\nspeedups (fwd+bwd): not measured (--no-backward)")
    else:
        print_speedups("speedups (fwd+bwd)", "t_fb", cases, results, impls, rules, with_targets=True)
    print_speedups("speedups (fwd only)", "t_f", cases, results, impls, rules, with_targets=False)

    if failed:
        print(f"\n# self-check FAILED for {len(failed)} row(s): " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
