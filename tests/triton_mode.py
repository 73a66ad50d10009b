"""Run the Triton kernels in the interpreter where there is no GPU (imports neither fairseq nor triton)."""

import os
import sys

import torch

HAS_CUDA = torch.cuda.is_available()


def interpret_without_cuda() -> None:
    """Set TRITON_INTERPRET=1 on a machine without CUDA. Triton decides interpreter vs
    compiler when its own functions are decorated, i.e. at import: if something imported
    it (or our kernels) before, drop those modules so that they are imported afresh."""
    if HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1":
        return
    os.environ["TRITON_INTERPRET"] = "1"
    for name in [m for m in sys.modules if m == "triton" or m.startswith("triton.")
                 or m == "fwp_kernels.triton" or m.startswith("fwp_kernels.triton.")]:
        del sys.modules[name]
