"""Tasks of fairseq-fwp (fairseq also auto-imports this folder with --user-dir)."""

from . import associative_retrieval  # noqa: F401
from . import fwp_language_modeling  # noqa: F401
