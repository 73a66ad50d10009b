"""``--bf16`` on a GPU with fairseq 0.12's command-line tools.

fairseq 0.12's ``options.parse_args_and_arch`` ends with "if args.bf16: args.tpu = True":
bfloat16 then meant a TPU. On a GPU (or ``--cpu``) the Trainer then asks torch_xla for a
device and every ``fairseq-train --bf16`` fails with ``'NoneType' object has no attribute
'xla_device'`` (found on an H200; docs/benchmarks.md). The rest of fairseq supports bf16
without a TPU (the Trainer casts model and criterion to bfloat16, the FP16 optimizer runs
without a loss scaler), so only the implied flag is wrong.

The plugin is imported inside ``parse_args_and_arch`` (``--user-dir``), before that line runs,
so it cannot change the parse; every fairseq command line then converts the parsed
namespace with ``fairseq.dataclass.utils.convert_namespace_to_omegaconf``, looked up in the
command's module at call time. :func:`install` wraps that function there (and wherever
it was imported by name): a namespace with
``bf16`` and the implied ``tpu`` gets ``tpu = False`` unless ``--tpu`` was given on the
command line. Nothing changes for ``--tpu --bf16`` or without ``--bf16``.
"""

import argparse
import sys

_MARK = "_fwp_bf16_without_tpu"


def _tpu_requested(argv) -> bool:
    return any(a == "--tpu" for a in argv)


def bf16_without_implied_tpu(args, argv=None) -> None:
    """Turn off the ``tpu`` that fairseq 0.12 infers from ``bf16`` (not one asked for)."""
    if getattr(args, "bf16", False) and getattr(args, "tpu", False):
        if not _tpu_requested(sys.argv if argv is None else argv):
            args.tpu = False


def install() -> None:
    """Wrap ``convert_namespace_to_omegaconf`` in fairseq and in the loaded command modules."""
    try:
        import fairseq.dataclass.utils as du
    except ImportError:  # fwp_kernels-only use: nothing to do
        return
    original = du.convert_namespace_to_omegaconf
    if getattr(original, _MARK, False):
        return

    def convert_namespace_to_omegaconf(args, *a, **kw):
        if isinstance(args, argparse.Namespace):
            bf16_without_implied_tpu(args)
        return original(args, *a, **kw)

    setattr(convert_namespace_to_omegaconf, _MARK, True)
    convert_namespace_to_omegaconf.__doc__ = original.__doc__
    du.convert_namespace_to_omegaconf = convert_namespace_to_omegaconf
    # every module that imported the function by name: fairseq_cli.*, and __main__ under
    # ``python -m fairseq_cli.train``
    for module in list(sys.modules.values()):
        if getattr(module, "convert_namespace_to_omegaconf", None) is original:
            module.convert_namespace_to_omegaconf = convert_namespace_to_omegaconf
