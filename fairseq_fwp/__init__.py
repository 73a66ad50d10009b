"""fairseq-fwp: fast weight programmers (Schlag, Irie & Schmidhuber, ICML 2021) for fairseq.

Use with ``--user-dir path/to/fairseq_fwp``. Importing registers the models
(fwp_transformer, fwp_lm), tasks and criteria, and makes fairseq 0.12 work in today's
environment: it allowlists the types fairseq checkpoints hold for torch's safe loading
(torch >= 2.6), restores for fairseq's data modules the numpy names numpy 2 removed, and,
in fairseq command-line processes, prints configuration errors of the plugin as one short
line; ``--bf16`` no longer implies ``--tpu`` (the shims of :mod:`fairseq_fwp.compat`).

Layout (as fairseq's): ``models/``, ``modules/``, ``tasks/``, ``criterions/``, ``data/``;
``config.py`` the ``--fwp-*`` flags, ``presets.py`` the paper's settings, ``compat/`` the shims.
"""

__version__ = "0.1.0"

from . import compat

compat.install()

from . import criterions, data, models, tasks  # noqa: E402,F401
