"""fairseq-fwp: fast weight programmers (Schlag, Irie & Schmidhuber, ICML 2021) for fairseq.

Use with ``--user-dir path/to/fairseq_fwp``. Importing registers the models
(fwp_transformer, fwp_lm), tasks and criteria, and allowlists the types fairseq
checkpoints hold for torch's safe loading (torch >= 2.6).
"""

__version__ = "0.1.0"

from .checkpoint_compat import allow_fairseq_checkpoints

allow_fairseq_checkpoints()

from . import criterions, models, tasks  # noqa: E402,F401
from .models import fwp_lm, fwp_retrieval, fwp_transformer  # noqa: E402,F401
