#!/usr/bin/env python
"""Time our Triton chunk kernels under each launch configuration: warps per program,
software-pipelining depth and, for the delta rule, where its sequential forward pass keeps
the state (registers or global memory). Prints one markdown table; the row marked
``default`` is what the kernels use today (``fwp_kernels.triton.common``: NUM_WARPS,
NUM_STAGES, REG_STATE_MAX_D_DOT, REG_STATE_STAGES), and ``x default`` is the default's time
divided by the row's (> 1: that configuration is faster than today's default).

Each configuration is first checked against the float64 reference (the same sanity bound
as scripts/bench_kernels.py); a row that fails is marked and the script exits 1.

  python scripts/tune_kernels.py                                  # GPU: bf16, T 8192, d_dot 64
  python scripts/tune_kernels.py --t 32768 --d-dot 256 --rules delta
  TRITON_INTERPRET=1 python scripts/tune_kernels.py --device cpu --t 128 --tokens 128 \\
      --model-dim 32 --d-head 16 --d-dot 16 --reps 1 --warmup 0   # rehearsal (times meaningless)
"""

import argparse
import sys
from typing import List, Optional, Tuple

import torch

import bench_kernels as bk

def configurations(rule: str, d_dot: int, d_value: int, dtype) -> List[Tuple[int, Optional[int], str]]:
    """(num_warps, num_stages or None = Triton's default, state path) in the order they are
    timed: today's default first, then the alternatives. The state path ("registers" /
    "global") matters only for the delta rule; the sum rule's rows have "-"."""
    import fwp_kernels.triton.common as tu

    reg_default = "registers" if d_dot <= tu.REG_STATE_MAX_D_DOT else "global"
    path = reg_default if rule == "delta" else "-"
    default = tu.launch_options(*tu.tile_sizes(d_dot, d_value, tu.dot_precision(dtype)))
    rows = [(default["num_warps"], default.get("num_stages"), path)]
    for warps in (4, 8):
        for stages in (1, 2, 3):
            if (warps, stages, path) not in rows:
                rows.append((warps, stages, path))
    if rule == "delta":
        other = "global" if reg_default == "registers" else "registers"
        if other == "global" or d_dot <= 128:  # registers above 128 spill heavily (kernel_resources.py)
            rows.append(rows[0][:2] + (other,))
    return rows


def apply(cfg, d_dot):
    """Set the module-level launch options the kernels read at every launch."""
    import fwp_kernels.triton.common as tu

    warps, stages, path = cfg
    for prefix in ("", "NARROW_"):  # 32- and 16-wide tiles alike
        setattr(tu, prefix + "NUM_WARPS", warps)
        setattr(tu, prefix + "NUM_STAGES", stages)
        if path == "registers":
            setattr(tu, prefix + "REG_STATE_STAGES", stages or 2)
    if path == "registers":
        tu.REG_STATE_MAX_D_DOT = max(d_dot, 16)
    elif path == "global":
        tu.REG_STATE_MAX_D_DOT = 0


SAVED = ("NUM_WARPS", "NUM_STAGES", "REG_STATE_STAGES", "NARROW_NUM_WARPS", "NARROW_NUM_STAGES",
         "NARROW_REG_STATE_STAGES", "REG_STATE_MAX_D_DOT")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16384, help="B*T (default 16K)")
    p.add_argument("--t", type=int, default=8192)
    p.add_argument("--model-dim", type=int, default=1024, help="H * d_head")
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--d-dot", type=int, default=64)
    p.add_argument("--rules", default="delta,sum")
    p.add_argument("--dtype", choices=sorted(bk.DTYPES), default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args(argv)
    import fwp_kernels.triton.common as tu

    saved = {name: getattr(tu, name) for name in SAVED}
    device = torch.device(a.device)
    T, B, H = a.t, max(1, a.tokens // a.t), a.model_dim // a.d_head
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)"
    print(f"# device: {dev_name}, dtype {a.dtype}; {bk.versions_line(bk.Fla({}, None, 'fla not used'))[2:]}")
    print(f"# T {T}, B {B}, H {H}, d_head {a.d_head}, d_dot {a.d_dot}; medians of {a.reps} in ms; "
          f"default: {tu.launch_options(*tu.tile_sizes(a.d_dot, a.d_head, tu.dot_precision(bk.DTYPES[a.dtype])))}, "
          f"registers up to d_dot {saved['REG_STATE_MAX_D_DOT']}")
    print()
    head = ["rule", "warps", "stages", "state pass", "fwd ms", "fwd+bwd ms", "x default (fwd+bwd)", "rel err", "note"]
    bk.print_table(head, [])
    failed = []
    for rule in a.rules.split(","):
        inputs = bk.make_inputs(rule, T, B, H, a.d_head, a.d_dot, bk.DTYPES[a.dtype], device)
        ref = bk.Reference(rule, inputs, device)
        args = argparse.Namespace(dtype=a.dtype, warmup=a.warmup, reps=a.reps, recurrent_max_t=0,
                                  no_backward=False)
        base = None
        for i, cfg in enumerate(configurations(rule, a.d_dot, a.d_head, bk.DTYPES[a.dtype])):
            apply(cfg, a.d_dot)
            try:
                res = bk.run_case("triton", rule, inputs, ref, args, device, bk.Fla({}, None, "unused"))
            finally:
                for name, value in saved.items():
                    setattr(tu, name, value)
            if i == 0:
                base = res.t_fb
            speed = None if base is None or res.t_fb is None else base / res.t_fb
            if res.check_failed:
                failed.append(f"{rule} {cfg}")
            warps, stages, path = cfg
            row = [rule, warps, stages or "default", path, bk.fmt_ms(res.t_f), bk.fmt_ms(res.t_fb),
                   bk.fmt_ratio(speed), bk.fmt_err(res.rel_err), ("default; " if i == 0 else "") + res.note]
            print("| " + " | ".join(map(str, row)) + " |", flush=True)
            bk.free_memory(device)
        del inputs, ref
    if failed:
        print(f"\n# self-check FAILED: {'; '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
