"""Models of fairseq-fwp (fairseq also auto-imports this folder with --user-dir)."""

from . import fwp_lm  # noqa: F401
from . import fwp_retrieval  # noqa: F401
from . import fwp_transformer  # noqa: F401
