#!/usr/bin/env python
"""Static resource use of every Triton kernel, compiled for a GPU without one.

Compiles each kernel of fwp_kernels.triton (chunked forward/backward passes of both
rules, the one-token step kernel for each rule) with the launch configuration the host
code uses (chunk 64, GPU tile sizes, warps, pipelining depth) for an NVIDIA target
(default sm_90, the H100/H200), and prints a markdown table of shared memory per block,
registers per thread and spilled bytes (local-memory stack frame), read from the cubin
with the ``cuobjdump`` that Triton ships. With ``--check`` it exits 1 when a kernel
needs more shared memory than the target has per block (227 KiB on sm_90), i.e. could
not launch.

Needs Triton with its NVIDIA backend; no GPU, no CUDA driver. The Triton interpreter
must be off (unset TRITON_INTERPRET).

  python scripts/kernel_resources.py                      # fp32 and bf16 inputs, sm_90
  python scripts/kernel_resources.py --dtypes fp16 --check
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

def kernel_table():
    """Rows (kernel, pointer args in the input dtype, float32 buffer args, constexprs,
    whether it is the register-state pass) covering every kernel and state path."""
    from fwp_kernels.triton import common as cm
    from fwp_kernels.triton import delta_rule as dr
    from fwp_kernels.triton import linear_attn as la
    from fwp_kernels.triton import step as st
    from fwp_kernels.triton.common import REG_STATE_MAX_D_DOT as REG

    return [
        (la.linear_attn_state_fwd_kernel, "k v", "h0 h", {"HAS_H0": True}, False),
        (cm.chunk_output_kernel, "q k o", "u h", {}, False),
        (la.linear_attn_state_bwd_kernel, "q do", "dht dh", {"HAS_DHT": True}, False),
        (la.linear_attn_dqk_kernel, "q k v do dq dk", "h dh", {}, False),
        (la.linear_attn_dv_kernel, "q k do dv", "dh", {}, False),
        (dr.delta_rule_prepare_kernel, "k v beta erase", "x w u", {}, False),
        (dr.delta_rule_state_fwd_kernel, "k", "w u h0 h vnew", {"HAS_H0": True, "BKH": 0}, False),
        (dr.delta_rule_state_fwd_kernel, "k", "w u h0 h vnew", {"HAS_H0": True, "BKH": REG}, True),
        (dr.delta_rule_state_bwd_kernel, "q k v beta erase do dv", "x dht dh dux dbeta", {"HAS_DHT": True}, False),
        (dr.delta_rule_dqk_kernel, "q k erase do dq dk", "vnew dux h dh dc", {}, False),
        (st.fast_weight_step_kernel, "q k v beta erase o", "s_in s_out", {"DELTA": False}, False),
        (st.fast_weight_step_kernel, "q k v beta erase o", "s_in s_out", {"DELTA": True}, False),
    ]


def resource_usage(cubin: bytes, cuobjdump: str):
    """(registers, stack bytes) of the one kernel in a cubin, from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    reg = re.search(r"REG:(\d+)", out.stdout)
    stack = re.search(r"STACK:(\d+)", out.stdout)
    if not reg:
        return None, None
    return int(reg.group(1)), int(stack.group(1)) if stack else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="fp32,bf16", help="input dtypes: fp32, fp16, bf16 (comma list)")
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    p.add_argument("--smem-limit", type=int, default=232448, help="bytes of shared memory per block")
    p.add_argument("--check", action="store_true", help="exit 1 if a kernel exceeds --smem-limit")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: the interpreter does not compile kernels")
    for dt in args.dtypes.split(","):
        if dt not in ("fp32", "fp16", "bf16"):
            p.error(f"--dtypes: unknown dtype {dt!r} (choose from fp32, fp16, bf16)")

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fwp_kernels.triton.common import (NUM_WARPS, REG_STATE_MAX_D_DOT, dot_precision, launch_options,
                                           state_pass_options)

    import torch

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    target = GPUTarget("cuda", args.arch, 32)
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    print(f"# triton {triton.__version__}, target sm_{args.arch}, chunk 64, tiles 32, {NUM_WARPS} warps")
    print("| kernel | state path | inputs | dot precision | stages | shared KiB | registers | spill bytes |")
    print("|---|---|---|---|---|---|---|---|")
    over = []
    for dt in args.dtypes.split(","):
        prec = dot_precision(torch_dtype[dt])
        for fn, in_ptrs, f32_ptrs, extra, reg_pass in kernel_table():
            consts = dict(extra)
            names = fn.arg_names
            if "C" in names:
                consts["C"] = 64
            if "PREC" in names:
                consts["PREC"] = prec
            consts.update(BK=32, BV=32)
            sig = {n: "constexpr" if n in consts else "*" + dt if n in in_ptrs.split()
                   else "*fp32" if n in f32_ptrs.split() else "i32" for n in names}
            opts = state_pass_options(REG_STATE_MAX_D_DOT) if reg_pass else launch_options()
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target, options=opts)
            regs, stack = resource_usage(k.asm["cubin"], cuobjdump)
            path = "-" if "BKH" not in extra else ("registers" if extra["BKH"] else "global memory")
            name = fn.__name__ + ("" if "DELTA" not in extra else " (delta)" if extra["DELTA"] else " (sum)")
            print(f"| {name} | {path} | {dt} | {prec if 'PREC' in names else '-'} | "
                  f"{opts.get('num_stages', 'default')} | {k.metadata.shared / 1024:.0f} | "
                  f"{regs if regs is not None else '?'} | {stack if stack is not None else '?'} |", flush=True)
            if k.metadata.shared > args.smem_limit:
                over.append(f"{fn.__name__} ({dt}, {path}): {k.metadata.shared} bytes")
    if over:
        print(f"# over the {args.smem_limit}-byte shared-memory limit: " + "; ".join(over))
    return 1 if (over and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
