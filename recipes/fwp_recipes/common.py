"""What every recipe needs: process counts and batch arithmetic, precision and logging
flags, running fairseq, step markers, resumable downloads, archive checks, results tables.

Nothing here knows a dataset or a model; the recipe modules (``wikitext103``, ``wmt14``)
hold those.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import gzip
from collections import deque
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


def precision_flags(kind: str) -> List[str]:
    """fairseq's half-precision flag for ``kind`` on GPU; nothing on CPU or for fp32."""
    check_choice("--precision", kind, PRECISIONS)
    if kind == "fp32" or world_size() == 0:
        return []
    return [f"--{kind}"]


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


def run(cmd: Sequence, log: Optional[Path] = None, env: Optional[dict] = None, cwd=None) -> str:
    """Run ``cmd``, streaming its output to the terminal and appending it to ``log``.

    Returns the whole output; a non-zero exit raises RecipeError with the last lines."""
    cmd = [str(c) for c in cmd]
    line = shlex.join(cmd)
    print(f"[recipe] $ {line}", file=sys.stderr, flush=True)
    out: List[str] = []
    tail: deque = deque(maxlen=30)
    logf = None
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        logf = open(log, "a")
        logf.write(f"$ {line}\n")
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=None if env is None else {**os.environ, **env}, cwd=cwd, bufsize=1)
        for text in p.stdout:
            sys.stdout.write(text)
            out.append(text)
            tail.append(text)
            if logf:
                logf.write(text)
        rc = p.wait()
    finally:
        if logf:
            logf.close()
    if rc != 0:
        raise RecipeError(f"command failed with exit code {rc}: {line}\n" + "".join(tail))
    return "".join(out)


def key_of(*parts) -> str:
    """A short stable hash of anything printable (inputs, flags) for :class:`Steps`."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class Steps:
    """Markers of finished steps in ``workdir/.steps/``: a rerun skips a step whose key is
    unchanged and redoes it when its inputs (the key) changed."""

    def __init__(self, workdir):
        self.dir = Path(workdir) / ".steps"

    def done(self, name: str, key: str = "") -> bool:
        path = self.dir / name
        return path.is_file() and path.read_text() == key

    def mark(self, name: str, key: str = "") -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(key)
        tmp.replace(self.dir / name)

    def forget(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)


# ------------------------------------------------------------------------ downloads
def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, *, size: Optional[int] = None, sha256: Optional[str] = None,
                md5: Optional[str] = None, check: Optional[Callable[[Path], None]] = None) -> None:
    """Raise RecipeError unless ``path`` has the given size / checksums and passes ``check``."""
    path = Path(path)
    if size is not None and path.stat().st_size != size:
        raise RecipeError(f"{path}: size {path.stat().st_size} bytes, expected {size}")
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want is not None:
            got = _digest(path, algo)
            if got != want.lower():
                raise RecipeError(f"{path}: {algo} {got}, expected {want}")
    if check is not None:
        check(path)


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Download ``url`` into ``part``, continuing from its current size with an HTTP Range request."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "fairseq-fwp-recipe"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is already complete
            return
        raise
    with resp:
        mode = "ab" if have and resp.status == 206 else "wb"  # 200 = server ignored Range: start over
        with open(part, mode) as f:
            shutil.copyfileobj(resp, f, 1 << 20)


def download(urls: Sequence[str], dest, *, size: Optional[int] = None, sha256: Optional[str] = None,
             md5: Optional[str] = None, check: Optional[Callable[[Path], None]] = None,
             timeout: float = 60.0) -> Path:
    """Fetch ``dest`` from the first of ``urls`` that serves a file that verifies.

    An existing ``dest`` that verifies is kept (no network). A partial download
    (``dest.part``) is continued. Prints which address served the file. Raises
    RecipeError listing every address tried and why it failed."""
    dest = Path(dest)
    if dest.exists():
        try:
            verify_file(dest, size=size, sha256=sha256, md5=md5, check=check)
            print(f"[recipe] {dest.name}: present and verified", file=sys.stderr)
            return dest
        except RecipeError as e:
            print(f"[recipe] {dest.name}: present but {e}; downloading again", file=sys.stderr)
            dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = []
    for url in urls:
        print(f"[recipe] downloading {dest.name} from {url}" + (" (resuming)" if part.exists() else ""),
              file=sys.stderr, flush=True)
        try:
            _fetch(url, part, timeout)
            verify_file(part, size=size, sha256=sha256, md5=md5, check=check)
        except (urllib.error.URLError, OSError, RecipeError, ValueError) as e:
            failures.append(f"{url}: {e}")
            print(f"[recipe] {url} failed: {e}", file=sys.stderr, flush=True)
            if isinstance(e, RecipeError):
                part.unlink(missing_ok=True)  # complete but wrong: do not resume from it
            continue
        part.replace(dest)
        print(f"[recipe] {dest.name}: served by {url}", file=sys.stderr)
        return dest
    raise RecipeError(
        f"could not download {dest.name}; tried:\n  " + "\n  ".join(failures)
        + f"\nDownload it yourself and pass the folder that holds it with --raw DIR."
    )


def test_archive(path) -> None:
    """Read a zip, tar (plain or compressed) or gzip file through to the end (the type is
    taken from the content, so ``x.zip.part`` works); RecipeError naming the file if broken."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                if bad is not None:
                    raise RecipeError(f"{path}: corrupt member {bad}")
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as t:
                for member in t:
                    if member.isfile():
                        f = t.extractfile(member)
                        while f.read(1 << 20):
                            pass
        else:
            with open(path, "rb") as f:
                magic = f.read(2)
            if magic != b"\x1f\x8b":
                raise RecipeError(f"{path}: not a zip, tar or gzip archive (truncated or an error page?)")
            with gzip.open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise RecipeError(f"{path}: broken or incomplete archive ({e}); delete it and download again")


# ---------------------------------------------------------------------- results tables
def results_table(path, header: Sequence[str], key: Tuple, row: Sequence, preamble: str = "") -> None:
    """Put ``row`` into the Markdown table in ``path``: it replaces the row whose first
    ``len(key)`` cells equal ``key``, else it is appended. A new file gets ``preamble``
    and the header."""
    path = Path(path)
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    fmt = lambda values: "| " + " | ".join(str(v) for v in values) + " |"  # noqa: E731
    if len(row) != len(header):
        raise ValueError(f"row has {len(row)} cells, header {len(header)}")
    if path.exists():
        lines = path.read_text().splitlines()
    else:
        lines = ([preamble.rstrip(), ""] if preamble else []) + [fmt(header), fmt(["---"] * len(header))]
    key = tuple(str(k) for k in key)
    new = fmt(row)
    for i, line in enumerate(lines):
        if line.startswith("|") and tuple(cells(line)[: len(key)]) == key:
            lines[i] = new
            break
    else:
        lines.append(new)
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
