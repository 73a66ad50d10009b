"""Short error messages for bad ``--fwp-*`` (and other plugin) settings on fairseq's command lines.

Our models validate their configuration when fairseq builds them and raise a ValueError
that names the flag and what would be valid. fairseq catches nothing there, so the user
would see a 30-frame traceback ending in that message. In a fairseq command-line process
(``fairseq-train``, ``fairseq-generate``, ``fairseq-eval-lm``, ``fairseq-interactive``, ...
or ``python -m fairseq_cli.*``) importing the plugin installs a ``sys.excepthook`` that,
for such an error, prints only::

    fairseq-fwp: invalid configuration (FWP_TRACEBACK=1 shows the traceback)
    fairseq-fwp: error: <the message>

and the process exits with status 1, as with any uncaught exception. Such an error is

* a :class:`FwpConfigError` (a ValueError) raised by this package anywhere: the task's
  checks of batching, splits and evaluation flags run when fairseq asks for batches
  (``get_batch_iterator``, ``eval_lm_dataloader``), loads a split or takes a step, long
  after the model is built; or
* a ValueError raised by code in this package while fairseq builds a model or sets up a task
  (a ``build_model`` / ``setup_task`` frame on the stack; or ``prepare_for_inference_``, where
  ``fairseq-generate`` hands a loaded model its decoding flags, e.g. ``--print-alignment``),

also when it comes from a worker process of ``torch.multiprocessing.spawn`` (fairseq's
multi-GPU ``call_main``), which re-raises it in the parent as text. Every other exception
keeps its full traceback (the previous hook is called), and ``FWP_TRACEBACK=1`` restores
it for ours too.
"""

import os
import re
import sys
import traceback
from typing import Optional

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # fairseq_fwp/
BUILD_FUNCTIONS = ("build_model", "setup_task", "prepare_for_inference_")  # the last: generate/interactive flags (--print-alignment)
HINT = "fairseq-fwp: invalid configuration (FWP_TRACEBACK=1 shows the traceback)"



class FwpConfigError(ValueError):
    """A bad flag, split or combination of options, found by the plugin outside model building:
    printed as one line in fairseq commands wherever it is raised (see the module doc)."""


# how traceback formats the exception line of a FwpConfigError (module-qualified name)
_CONFIG_ERROR_PREFIX = f"{FwpConfigError.__module__}.{FwpConfigError.__qualname__}: "

_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+, in (?P<func>\S+)$')


def _in_package(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path == PACKAGE_DIR or path.startswith(PACKAGE_DIR + os.sep)


def _from_traceback_text(text: str) -> Optional[str]:
    """The message of a ValueError of ours in a formatted traceback (as torch's spawn passes it on)."""
    lines = text.rstrip("\n").splitlines()
    frames = [(i, m) for i, m in ((i, _FRAME.match(line)) for i, line in enumerate(lines)) if m]
    if not frames:
        return None
    # the last traceback printed (after any "During handling of the above exception" chain)
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")), default=0)
    last_i, last = frames[-1]
    if last_i < start or not _in_package(last.group("file")):
        return None
    tail = lines[last_i + 1:]
    while tail and (tail[0].startswith(" ") or not tail[0].strip()):  # source line and ^^^ markers
        tail = tail[1:]
    if tail and tail[0].startswith(_CONFIG_ERROR_PREFIX):
        return "\n".join(tail)[len(_CONFIG_ERROR_PREFIX):]
    if not any(m.group("func") in BUILD_FUNCTIONS for i, m in frames if i >= start):
        return None
    if not tail or not tail[0].startswith("ValueError: "):
        return None
    return "\n".join(tail)[len("ValueError: "):]


def fwp_error_message(exc: BaseException) -> Optional[str]:
    """The message to print instead of a traceback, or None when ``exc`` is not a configuration
    error of this plugin (a FwpConfigError, or a ValueError raised while fairseq builds a model
    or task)."""
    if isinstance(exc, ValueError):
        frames = traceback.extract_tb(exc.__traceback__)
        if not (frames and _in_package(frames[-1].filename)):
            return None
        if isinstance(exc, FwpConfigError) or any(f.name in BUILD_FUNCTIONS for f in frames):
            return str(exc)
        return None
    try:
        from torch.multiprocessing.spawn import ProcessRaisedException
    except ImportError:  # pragma: no cover - torch always has it
        return None
    if isinstance(exc, ProcessRaisedException):
        return _from_traceback_text(str(exc))
    return None


def _hook(exc_type, exc, tb, _previous=None):
    message = None if os.environ.get("FWP_TRACEBACK", "") not in ("", "0") else fwp_error_message(exc)
    if message is None:
        return (_previous or sys.__excepthook__)(exc_type, exc, tb)
    try:
        sys.stdout.flush()
    except Exception:  # a closed stdout must not hide the message
        pass
    sys.stderr.write(f"{HINT}\nfairseq-fwp: error: {message}\n")
    sys.stderr.flush()


def fairseq_command() -> Optional[str]:
    """The fairseq command this process runs, as its ``fairseq_cli`` module name (``train``,
    ``validate``, ``eval_lm``, ``generate``, ``interactive``, ...), or None outside them."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = str(getattr(spec, "name", "")) if spec is not None else ""
    if name.startswith("fairseq_cli."):
        return name[len("fairseq_cli."):]
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    if script.startswith("fairseq-"):
        return script[len("fairseq-"):].replace("-", "_")
    return None


def running_fairseq_cli() -> bool:
    """True in a fairseq command-line process (a ``fairseq-*`` script or ``python -m fairseq_cli.*``)."""
    return fairseq_command() is not None


def install_cli_error_hook() -> bool:
    """Install the short-error hook (chaining the current one) in fairseq command-line processes
    only; library use of the plugin keeps Python's behaviour. Idempotent; True when installed."""
    if getattr(sys.excepthook, "_fwp_short_errors", False):
        return True
    if not running_fairseq_cli():
        return False
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        _hook(exc_type, exc, tb, _previous=previous)

    hook._fwp_short_errors = True
    sys.excepthook = hook
    return True
