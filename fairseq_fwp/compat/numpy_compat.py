"""fairseq 0.12's data code under numpy 2: the removed numpy names it still uses.

fairseq 0.12 predates numpy 2, and a few of its modules use names numpy 2 removed:

============================================  =====================================  =================================
fairseq module                                removed name                           breaks
============================================  =====================================  =================================
``fairseq.data.token_block_dataset``          ``np.compat.long`` (= ``int``)         ``--sample-break-mode eos`` (LM
                                                                                     training, eval-lm, generate) and
                                                                                     every LM ``fairseq-interactive``
``fairseq.data.language_pair_dataset``        ``np.compat.long``                     ``--num-batch-buckets``
``fairseq.data.data_utils``                   ``np.percentile(interpolation=...)``   ``--num-batch-buckets``
                                              (now ``method=``), ``np.int``          (``get_buckets``); wav2vec masks
``fairseq.modules.dynamic_crf_layer``         ``np.float``                           NAT models' CRF
============================================  =====================================  =================================

:func:`install` gives exactly these modules their own view of numpy (:class:`NumpyView`):
numpy itself, plus the removed names that module uses, with their numpy 1 meaning. numpy
is not modified, so no other code sees a restored name (``hasattr(numpy, "compat")``
stays False under numpy 2) or a changed ``numpy.percentile``. A name numpy still has is
never overridden, so under numpy 1.x nothing is installed. ``fairseq_fwp/__init__.py``
calls :func:`install` on import, i.e. whenever a fairseq command runs with
``--user-dir fairseq_fwp``: fairseq imports the user dir before it builds any dataset
(fairseq-train while parsing arguments; generate, eval-lm, interactive and validate at
the start of ``main``, also in processes spawned for distributed training).
"""

import functools
import importlib
import inspect
import types
from typing import Dict, Tuple

import numpy as np


def _percentile_with_interpolation(a, q, *args, interpolation=None, **kwargs):
    """``np.percentile`` accepting numpy 1's ``interpolation=`` (renamed ``method=`` in numpy 1.22,
    removed in numpy 2.4)."""
    if interpolation is not None:
        if "method" in kwargs:
            raise TypeError("percentile() got both 'interpolation' and 'method'")
        kwargs["method"] = interpolation
    return np.percentile(a, q, *args, **kwargs)


def _numpy_has(name: str) -> bool:
    if name == "percentile(interpolation=)":
        return "interpolation" in inspect.signature(np.percentile).parameters
    return hasattr(np, name)


# name in the fairseq module -> its numpy 1 meaning
_RESTORE = {
    "compat": types.SimpleNamespace(long=int),  # numpy.compat.long was an alias of int
    "int": int,  # np.int / np.float were the builtins (deprecated in numpy 1.20, removed in 1.24)
    "float": float,
    "percentile(interpolation=)": _percentile_with_interpolation,
}

# the fairseq modules and the removed names each of them uses (grep of fairseq 0.12.3's package)
FAIRSEQ_USES: Dict[str, Tuple[str, ...]] = {
    "fairseq.data.token_block_dataset": ("compat",),
    "fairseq.data.language_pair_dataset": ("compat",),
    "fairseq.data.data_utils": ("percentile(interpolation=)", "int"),
    "fairseq.modules.dynamic_crf_layer": ("float",),
}


class NumpyView(types.ModuleType):
    """numpy as one fairseq module sees it: every numpy attribute, plus ``restored`` names."""

    def __init__(self, restored: Dict[str, object]):
        super().__init__("numpy", np.__doc__)
        self.__restored__ = tuple(sorted(restored))
        for name, value in restored.items():
            setattr(self, name.split("(")[0], value)

    def __getattr__(self, name):  # everything not restored is numpy's own
        return getattr(np, name)

    def __dir__(self):
        return sorted(set(dir(np)) | set(self.__dict__))

    def __repr__(self):
        return f"<numpy {np.__version__} for fairseq 0.12, restoring {', '.join(self.__restored__)}>"


@functools.lru_cache(maxsize=None)
def install() -> Dict[str, Tuple[str, ...]]:
    """Give each fairseq module in FAIRSEQ_USES a NumpyView restoring the names it uses that the
    installed numpy lacks. Idempotent; returns ``{module: restored names}`` (empty under numpy 1)."""
    done = {}
    for module_name, names in FAIRSEQ_USES.items():
        missing = [n for n in names if not _numpy_has(n)]
        if not missing:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a module this fairseq build does not have
            continue
        current = getattr(module, "np", None)
        if current is not np:  # not the plain numpy (already a view, or something else): leave it
            continue
        module.np = NumpyView({n: _RESTORE[n] for n in missing})
        done[module_name] = tuple(missing)
    return done
