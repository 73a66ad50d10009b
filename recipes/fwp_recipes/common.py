"""What every recipe needs: process counts and batch arithmetic, precision, distributed and
logging flags, running fairseq (one runner, one training step with done markers and
``--fresh``, sequential or parallel runs), step markers, results tables, arguments
(downloads and archive checks: ``downloads``).

Nothing here knows a dataset or a model; the recipe modules (``wikitext103``, ``wmt14``)
hold those.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
USER_DIR = str(REPO / "fairseq_fwp")


class RecipeError(Exception):
    """A user-facing error: ``recipes/launch.py`` prints ``error: <message>`` and exits 2."""


# ----------------------------------------------------------------- processes and batches
def world_size() -> int:
    """Number of training processes: ``FWP_NUM_GPUS``, else ``WORLD_SIZE`` (torchrun),
    else ``SLURM_NTASKS`` (srun), else the visible CUDA devices; 0 means CPU training."""
    for var in ("FWP_NUM_GPUS", "WORLD_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(var)
        if value:
            try:
                n = int(value)
            except ValueError:
                raise RecipeError(f"{var}={value!r} is not an integer number of processes")
            if n < 0:
                raise RecipeError(f"{var}={value!r} must be >= 0")
            return n
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def split_batch(total: int, workers: int, max_per_worker: int) -> Tuple[int, int]:
    """(per_worker, update_freq) with per_worker * workers * update_freq == total.

    The smallest update_freq whose per-worker batch fits in ``max_per_worker`` (fewest
    accumulation steps, largest batches); ``workers`` < 1 counts as one (CPU)."""
    workers = max(1, int(workers))
    if total < 1 or max_per_worker < 1:
        raise RecipeError(f"batch sizes must be >= 1 (total {total}, per worker at most {max_per_worker})")
    for freq in range(1, total + 1):
        if total % (workers * freq) == 0 and total // (workers * freq) <= max_per_worker:
            return total // (workers * freq), freq
    ok = [w for w in range(1, total + 1) if total % w == 0]
    raise RecipeError(
        f"cannot split {total} sequences per update evenly over {workers} processes; "
        f"process counts that divide it: {', '.join(map(str, ok))} (set FWP_NUM_GPUS or use fewer GPUs)"
    )


def update_freq_for_tokens(paper_tokens_per_update: int, workers: int, tokens_per_worker: int) -> int:
    """--update-freq that brings ``workers`` x ``tokens_per_worker`` up to the paper's tokens per update."""
    workers = max(1, int(workers))
    freq = max(1, math.ceil(paper_tokens_per_update / (workers * tokens_per_worker)))
    ours = freq * workers * tokens_per_worker
    if ours != paper_tokens_per_update:
        print(
            f"[recipe] note: {workers} process(es) x {tokens_per_worker} tokens x update-freq {freq} = "
            f"{ours} tokens per update (paper: {paper_tokens_per_update}, {ours / paper_tokens_per_update:.3f}x)",
            file=sys.stderr,
        )
    return freq


PRECISIONS = ("fp16", "bf16", "fp32")


def default_precision() -> str:
    """bf16 where the GPU has it (Ampere and newer), else fp16 (fairseq's dynamic loss
    scaling, e.g. the paper's V100s); the one default of every recipe.

    bf16 has float32's exponent range, so no loss-scale overflows in the fast weight sums,
    FAVOR+'s exp features or a large softmax; fairseq 0.12's --bf16 no longer implies
    --tpu once the plugin is imported (``fairseq_fwp.compat.bf16_compat``)."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
    except ImportError:
        pass
    return "fp16"


def precision_flags(kind: Optional[str]) -> List[str]:
    """fairseq's half-precision flag for ``kind`` (None: :func:`default_precision`) on GPU;
    nothing on CPU or for fp32."""
    if kind is not None:
        check_choice("--precision", kind, PRECISIONS)
    if world_size() == 0:
        return []
    kind = kind or default_precision()
    return [] if kind == "fp32" else [f"--{kind}"]


def rank() -> int:
    """This launcher's rank: one launcher per process under torchrun (RANK) or srun (SLURM_PROCID)."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def distributed_flags(workers: int) -> List[str]:
    """fairseq's own distributed training: one node spawns a process per GPU itself; under
    torchrun it reads RANK/WORLD_SIZE/MASTER_*; under srun (one task per GPU) it builds a
    tcp:// address from the SLURM node list and needs a port, which is derived from the job
    id (or taken from FWP_DISTRIBUTED_PORT). The world size is always passed, also for one
    GPU: the batch arithmetic is computed for ``workers`` processes, and without the flag
    fairseq 0.12 trains on every visible GPU (FWP_NUM_GPUS=1 on an 8-GPU machine would give
    8 times the paper's batch), and a task that sees only its own GPU would train alone."""
    if workers < 1:
        return []
    flags = ["--distributed-world-size", str(workers)]
    torchrun = all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"))
    if workers > 1 and "SLURM_JOB_ID" in os.environ and not torchrun:
        port = os.environ.get("FWP_DISTRIBUTED_PORT") or str(10000 + int(os.environ["SLURM_JOB_ID"]) % 20000)
        flags += ["--distributed-port", port]
    return flags


def log(tag: str, msg: str) -> None:
    """A recipe's own message: ``[tag] msg`` on stderr (fairseq's output goes to stdout)."""
    print(f"[{tag}] {msg}", file=sys.stderr, flush=True)


def tensorboard_flags(logdir) -> List[str]:
    """``--tensorboard-logdir`` when fairseq can write tensorboard logs here, else [] and a note."""
    if importlib.util.find_spec("tensorboardX") or importlib.util.find_spec("tensorboard"):
        return ["--tensorboard-logdir", str(logdir)]
    print("[recipe] note: no tensorboardX/tensorboard installed, so no tensorboard logs "
          "(pip install tensorboardX)", file=sys.stderr)
    return []


# --------------------------------------------------------------------- running things
def fairseq_cmd(tool: str, *args) -> List[str]:
    """The command line of a fairseq CLI (train, generate, eval_lm, preprocess, interactive, score)."""
    return [sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, args)]


def execute(cmd: Sequence, log: Optional[Path] = None, env: Optional[dict] = None, cwd=None, *,
            echo: bool = True, progress: Optional[Callable[[str], Optional[str]]] = None,
            poll: float = 15.0) -> Tuple[int, str]:
    """Run ``cmd`` (the one way every recipe runs fairseq): its output is appended to
    ``log`` and streamed to the terminal (``echo=False``: only to the log). With
    ``progress``, every output line goes through it and the newest status it returns is
    printed at most every ``poll`` seconds. Ctrl-C stops the command too.
    Returns (exit code, the whole output)."""
    cmd = [str(c) for c in cmd]
    line = shlex.join(cmd)
    if echo:
        print(f"[recipe] $ {line}", file=sys.stderr, flush=True)
    out: List[str] = []
    logf = None
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        logf = open(log, "a")
        logf.write(f"$ {line}\n")
    status, shown, last_shown = None, None, time.time()
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=None if env is None else {**os.environ, **env}, cwd=cwd, bufsize=1)
        try:
            for text in p.stdout:
                if echo:
                    sys.stdout.write(text)
                out.append(text)
                if logf:
                    logf.write(text)
                if progress is not None:
                    status = progress(text) or status
                    if status != shown and time.time() - last_shown >= poll:
                        print(f"    {status}", flush=True)
                        shown, last_shown = status, time.time()
            rc = p.wait()
        except KeyboardInterrupt:
            p.terminate()
            p.wait()
            raise
    finally:
        if logf:
            logf.close()
    if progress is not None and status and status != shown:
        print(f"    last: {status}", flush=True)
    return rc, "".join(out)


def run(cmd: Sequence, log: Optional[Path] = None, env: Optional[dict] = None, cwd=None, **kwargs) -> str:
    """:func:`execute`; returns the whole output, a non-zero exit raises RecipeError with
    the last lines."""
    rc, out = execute(cmd, log, env, cwd, **kwargs)
    if rc != 0:
        tail = "".join(out.splitlines(keepends=True)[-30:])
        raise RecipeError(f"command failed with exit code {rc}: {shlex.join(map(str, cmd))}\n" + tail)
    return out


def key_of(*parts) -> str:
    """A short stable hash of anything printable (inputs, flags) for :class:`Steps`."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class Steps:
    """Markers of finished steps in ``workdir/.steps/`` (one mechanism for every recipe).

    ``mark(name, key, outputs)`` records the key of the step's inputs and settings and the
    size of every output file; ``done(name, key, outputs)`` is true only when the key is
    unchanged and every output is still there with the recorded size. A rerun therefore
    skips a finished step, redoes it when its inputs changed, and redoes it when one of
    its outputs was deleted or cut short (a marker never outlives its files)."""

    def __init__(self, workdir):
        self.dir = Path(workdir) / ".steps"

    @staticmethod
    def _sizes(outputs: Iterable) -> dict:
        return {str(Path(o)): Path(o).stat().st_size for o in outputs}

    def done(self, name: str, key: str = "", outputs: Iterable = ()) -> bool:
        path = self.dir / name
        if not path.is_file():
            return False
        text = path.read_text()
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):  # a marker of the older layout (the key only): no sizes to compare
            return text == key and all(Path(o).is_file() for o in outputs)
        if record.get("key") != key:
            return False
        recorded = record.get("outputs", {})
        if set(recorded) != {str(Path(o)) for o in outputs}:
            return False
        return all(Path(o).is_file() and Path(o).stat().st_size == size for o, size in recorded.items())

    def mark(self, name: str, key: str = "", outputs: Iterable = ()) -> None:
        """Record ``name`` as finished; every path in ``outputs`` must exist."""
        record = {"key": key, "outputs": self._sizes(outputs)}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.dir / name)

    def forget(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)


def dry_run(cmd: Sequence, check_data: Callable[[], object], tag: str) -> int:
    """``--dry-run``: print the command, even before the data exists (the GPU arithmetic
    can be checked before a download); a missing data folder is only noted."""
    try:
        check_data()
    except RecipeError as e:
        log(tag, f"note: the data is missing: {e}")
    print(shlex.join(map(str, cmd)))
    return 0


def train_once(cmd: Sequence, save_dir: Path, key: str, *, name: str, tag: str, fresh: bool = False,
               before_run: Optional[Callable[[], None]] = None, log_path: Optional[Path] = None,
               **run_kwargs) -> bool:
    """Run one fairseq-train command of a recipe, the same way for every recipe.

    ``--fresh`` (rank 0) deletes ``save_dir`` first. A finished run with the same ``key``
    (the run's settings and extra flags) and its ``checkpoint_last.pt`` is skipped; a
    killed one resumes from ``checkpoint_last.pt`` (fairseq's own resumption).
    ``before_run`` is called when fairseq is about to run (after ``--fresh``; it may refuse
    an incompatible resume by raising RecipeError). The output goes to
    ``log_path`` (default ``save_dir/train.log``; other ranks: ``train.rankN.log``) and
    ``run_kwargs`` go to :func:`run`; rank 0 marks the run done. Returns whether fairseq ran."""
    save_dir = Path(save_dir)
    steps = Steps(save_dir)
    if fresh and save_dir.exists() and rank() == 0:
        log(tag, f"--fresh: removing {save_dir}")
        shutil.rmtree(save_dir)
    last = save_dir / "checkpoint_last.pt"
    if steps.done("train", key, [last]):
        log(tag, f"{name}: training finished earlier ({save_dir}/.steps/train); --fresh retrains")
        return False
    save_dir.mkdir(parents=True, exist_ok=True)
    if before_run is not None:
        before_run()
    if last.exists():
        log(tag, f"{name}: resuming from {last}")
    r = rank()
    run(cmd, log=log_path or save_dir / ("train.log" if r == 0 else f"train.rank{r}.log"), **run_kwargs)
    if r == 0:
        steps.mark("train", key, [last])
    log(tag, f"{name}: done; checkpoints in {save_dir}")
    return True


def smoke_on_cpu() -> None:
    """The environment of every smoke run: CPU whatever the machine has, and one thread per
    fairseq process (tiny models: one thread each is fastest, and runs go one per core)."""
    os.environ.setdefault("FWP_NUM_GPUS", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_all(fn: Callable, items: Sequence, jobs: int = 0) -> None:
    """``fn(item)`` for every item, ``jobs`` at a time (0: one per CPU core), in threads that
    each wait on their own fairseq process (their logs interleave on the terminal); the
    first error is raised."""
    jobs = max(1, min(int(jobs) or os.cpu_count() or 1, len(items)))
    if jobs == 1:
        for x in items:
            fn(x)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(fn, x) for x in items]:
            f.result()


# ---------------------------------------------------------------------- results tables
def results_table(path, header: Sequence[str], key: Tuple, row: Sequence, preamble: str = "",
                  section: Optional[str] = None) -> None:
    """Put ``row`` into a Markdown table of ``path``: it replaces the row whose first
    ``len(key)`` cells equal ``key``, else it goes after the table's last row.

    With ``section`` the table is the one under ``## section`` (several tables in one file;
    a missing section is added at the end), else the file's one table. A new file starts
    with ``preamble``."""
    path = Path(path)
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    fmt = lambda values: "| " + " | ".join(str(v) for v in values) + " |"  # noqa: E731
    if len(row) != len(header):
        raise ValueError(f"row has {len(row)} cells, header {len(header)}")
    lines = path.read_text().splitlines() if path.exists() else preamble.rstrip().splitlines()
    table = [fmt(header), fmt(["---"] * len(header))]
    if section is None:
        if not any(line.startswith("|") for line in lines):
            lines += ([""] if lines else []) + table
        start = -1
    else:
        head = f"## {section}"
        if head not in lines:
            lines += ["", head, ""] + table
        start = lines.index(head)
    end = next((i for i in range(start + 1, len(lines)) if section and lines[i].startswith("## ")), len(lines))
    key = tuple(str(k) for k in key)
    last_row = start
    for i in range(start + 1, end):
        if lines[i].startswith("|"):
            last_row = i
            if tuple(cells(lines[i])[: len(key)]) == key:
                lines[i] = fmt(row)
                break
    else:
        lines.insert(last_row + 1, fmt(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------- arguments
def _raise_recipe_error(p: argparse.ArgumentParser):
    def error(message):
        raise RecipeError(f"{message}\n{p.format_usage().strip()}")
    return error


def parse_args(p: argparse.ArgumentParser, argv: Sequence[str]):
    """``p.parse_args(argv)`` with argparse's errors raised as RecipeError (no traceback, exit 2)."""
    p.error = _raise_recipe_error(p)
    return p.parse_args(list(argv))


def parse_known_args(p: argparse.ArgumentParser, argv: Sequence[str]):
    """Like :func:`parse_args`, but returns (options, the other arguments) so a recipe can
    pass the rest on to fairseq."""
    p.error = _raise_recipe_error(p)
    return p.parse_known_args(list(argv))


def check_choice(name: str, value: str, valid: Iterable[str]) -> str:
    """RecipeError("unknown MODEL 'x'; valid: a, b, c") unless ``value`` is one of ``valid``."""
    valid = list(valid)
    if value not in valid:
        raise RecipeError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
    return value
