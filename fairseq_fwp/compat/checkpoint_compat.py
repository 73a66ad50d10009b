"""Let fairseq load its own checkpoints under torch >= 2.6 (``weights_only=True`` by default).

fairseq 0.12 calls ``torch.load(f, map_location="cpu")`` without ``weights_only``.
Since torch 2.6 that means the restricted "weights only" unpickler, which refuses
every global that is not allowlisted. Checkpoints written by ``fairseq-train`` hold
a few such globals besides tensors, so ``fairseq-generate``, ``fairseq-eval-lm``,
resuming a run and checkpoint averaging fail out of the box with
``WeightsUnpickler error: Unsupported global``.

:func:`allow_fairseq_checkpoints` registers exactly the extra globals found in
checkpoints written by fairseq-train (inspected with ``pickletools`` over
translation and language-model checkpoints: best/last/epoch/update checkpoints,
``--eval-bleu``, EMA, adaptive softmax/input; see ``FAIRSEQ_CHECKPOINT_GLOBALS``)
with ``torch.serialization.add_safe_globals``. Loading stays in torch's safe mode:
anything else (arbitrary classes, functions, ``os.system`` ...) is still refused.

Where the globals come from:

* ``argparse.Namespace`` -- ``cfg["model"]`` of models registered with legacy
  ``add_args`` (e.g. ``transformer``) and the top-level ``args`` of old checkpoints.
* numpy arrays (``_reconstruct``, ``ndarray``, ``dtype`` and the concrete dtype
  classes) -- ``extra_state["metrics"]`` meters, e.g. the ``_bleu_counts`` /
  ``_bleu_totals`` arrays logged by the translation task with ``--eval-bleu``.
* numpy scalars (``scalar`` and dtype classes) -- meter values or ``best`` /
  ``val_loss`` when a metric is computed with numpy.

Everything else in a fairseq checkpoint (``OrderedDict`` state dicts, tensors and
their storages, dicts/lists/floats for ``optimizer_history``, ``extra_state``,
``train_iterator``, ``cfg`` which fairseq stores as a plain container, ``_codecs.encode``
used by numpy's pickles) is already on torch's default allowlist.

The function is idempotent and is called when ``fairseq_fwp`` is imported, which
fairseq does (via ``--user-dir``) before it loads any checkpoint in
``fairseq-train``, ``fairseq-generate``, ``fairseq-interactive``, ``fairseq-validate``
and ``fairseq-eval-lm``.
"""

from __future__ import annotations

import argparse
from typing import Any, List, Tuple, Union

__all__ = ["allow_fairseq_checkpoints", "fairseq_checkpoint_globals", "FAIRSEQ_CHECKPOINT_GLOBALS"]

# Fully qualified names as they appear in the pickles (numpy 2 writes ``numpy._core``,
# numpy 1 wrote ``numpy.core``; both are accepted so old checkpoints load under either).
FAIRSEQ_CHECKPOINT_GLOBALS = (
    "argparse.Namespace",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.<numeric and bool dtype classes>",
)

# dtypes a metric array or scalar can have
_NUMPY_DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "longlong",
    "ulonglong",
    "longdouble",
)

_done = False


def _numpy_globals() -> List[Union[Any, Tuple[Any, str]]]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - fairseq requires numpy
        return []
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray

    out: List[Union[Any, Tuple[Any, str]]] = []
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        out.append((multiarray._reconstruct, f"{mod}._reconstruct"))
        out.append((multiarray.scalar, f"{mod}.scalar"))
    out += [np.ndarray, np.dtype]
    # Concrete dtype classes (numpy >= 1.25 has numpy.dtypes.*DType); the unpickler
    # needs them when it rebuilds a dtype.
    seen = set()
    for name in _NUMPY_DTYPES:
        cls = type(np.dtype(name))
        if cls is np.dtype or cls in seen:
            continue
        seen.add(cls)
        out.append(cls)
    return out


def fairseq_checkpoint_globals() -> List[Union[Any, Tuple[Any, str]]]:
    """The objects (or ``(object, qualified_name)`` pairs) that :func:`allow_fairseq_checkpoints` allowlists."""
    return [argparse.Namespace] + _numpy_globals()


def allow_fairseq_checkpoints() -> bool:
    """Allowlist the globals of fairseq checkpoints for torch's ``weights_only`` loading.

    Returns True when the allowlist was (or already had been) installed, False on a
    torch without ``torch.serialization.add_safe_globals`` (torch < 2.4, where
    ``torch.load`` does not default to weights-only anyway).
    """
    global _done
    if _done:
        return True
    import torch

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # pragma: no cover - old torch
        return False
    globs = fairseq_checkpoint_globals()
    try:
        add(globs)
    except (TypeError, ValueError):  # pragma: no cover - torch 2.4/2.5: no (obj, name) tuples
        add([g for g in globs if not isinstance(g, tuple)])
    _done = True
    return True
