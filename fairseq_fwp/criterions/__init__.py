"""Criteria of fairseq-fwp (imported by the package; fairseq does not auto-import this folder)."""

from . import retrieval_mse  # noqa: F401
