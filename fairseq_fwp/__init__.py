"""fairseq-fwp: fast weight programmers (Schlag, Irie & Schmidhuber, ICML 2021) for fairseq.

Use with ``--user-dir path/to/fairseq_fwp``. Importing registers the models
(fwp_transformer, fwp_lm), tasks and criteria, and makes fairseq 0.12 work in today's
environment: it allowlists the types fairseq checkpoints hold for torch's safe loading
(torch >= 2.6, ``checkpoint_compat``), restores for fairseq's data modules the numpy names
numpy 2 removed (``numpy_compat``), and, in fairseq command-line processes, prints
configuration errors of the plugin as one short line (``cli_errors``); ``--bf16`` no
longer implies ``--tpu`` (``bf16_compat``).
"""

__version__ = "0.1.0"

from .checkpoint_compat import allow_fairseq_checkpoints
from .cli_errors import install_cli_error_hook
from .numpy_compat import install as install_numpy_compat

allow_fairseq_checkpoints()
install_numpy_compat()
install_cli_error_hook()

from .ema_compat import patch_fairseq_ema  # noqa: E402

patch_fairseq_ema()  # --store-ema: copy FAVOR+'s random features instead of averaging them (ema_compat)

from .bf16_compat import install as install_bf16_compat  # noqa: E402

install_bf16_compat()  # --bf16 on a GPU: fairseq 0.12 would imply --tpu (bf16_compat)

from . import criterions, models, tasks  # noqa: E402,F401
from .models import fwp_lm, fwp_retrieval, fwp_transformer  # noqa: E402,F401
