"""What makes fairseq 0.12 work in today's environment; :func:`install` runs at plugin import.

* ``checkpoint_compat``: allowlists the types fairseq checkpoints hold for torch's safe
  loading (torch >= 2.6);
* ``numpy_compat``: restores for fairseq's data modules the numpy names numpy 2 removed;
* ``cli_errors``: in fairseq command-line processes, prints configuration errors of the
  plugin as one short line (and defines :class:`~.cli_errors.FwpConfigError`);
* ``ema_compat``: ``--store-ema`` copies FAVOR+'s random features instead of averaging them;
* ``bf16_compat``: ``--bf16`` on a GPU no longer implies ``--tpu``.
"""

from .bf16_compat import install as _install_bf16
from .checkpoint_compat import allow_fairseq_checkpoints
from .cli_errors import install_cli_error_hook
from .numpy_compat import install as _install_numpy


def install() -> None:
    """Install every shim (each is idempotent)."""
    allow_fairseq_checkpoints()
    _install_numpy()
    install_cli_error_hook()
    from .ema_compat import patch_fairseq_ema  # imports the feature maps (torch), hence after the others

    patch_fairseq_ema()
    _install_bf16()
