"""What every recipe needs: process counts and batch arithmetic, precision and logging
flags, running fairseq, step markers, resumable downloads, archive checks, results tables.

Nothing here knows a dataset or a model; the recipe modules (``wikitext103``, ``wmt14``)
hold those.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import lzma
import bz2
import math
import os
import shlex
import shutil
import subprocess
import struct
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
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


# What reading a damaged archive can raise: a bad CRC or length (BadZipFile, BadGzipFile
# = OSError), a cut stream (EOFError), corrupt deflate/xz data (zlib.error, LZMAError),
# a damaged zip directory (ValueError, struct.error; NotImplementedError for a flipped
# compression method; RuntimeError for a flipped encryption bit).
ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError,
                  ValueError, struct.error, NotImplementedError, RuntimeError)


@contextlib.contextmanager
def reading_archive(path):
    """Turn any error of reading a damaged archive into one RecipeError line that names
    the file to download again."""
    try:
        yield
    except RecipeError:
        raise
    except ARCHIVE_ERRORS as e:
        detail = " ".join(str(e).split()) or "no detail"
        kind = type(e).__name__ if type(e).__name__ != "error" else f"{type(e).__module__}.error"  # zlib.error
        raise RecipeError(f"{path}: broken or incomplete archive ({kind}: {detail}); "
                          f"delete it and download {Path(path).name} again") from None


_COMPRESSED = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


def _drain(f) -> None:
    while f.read(1 << 20):
        pass


def test_archive(path) -> None:
    """Read a zip, tar (plain or compressed) or gzip file through to the end (the type is
    taken from the content, so ``x.zip.part`` works); RecipeError naming the file if broken.

    Every checksum is checked: each zip member is read to its end (its CRC-32), and a
    gzip / bzip2 / xz stream is decompressed to its end before the tar inside is read, so
    the trailer (gzip: CRC-32 and length of every member) is reached; reading a .tgz
    member by member would stop at the tar's end marker and never see it."""
    path = Path(path)
    with reading_archive(path):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    with z.open(info) as f:
                        _drain(f)
            return
        with open(path, "rb") as f:
            head = f.read(6)
        opener = next((o for magic, o in _COMPRESSED if head.startswith(magic)), None)
        if opener is not None:
            with opener(path, "rb") as f:
                _drain(f)
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as t:
                for member in t:
                    if member.isfile():
                        _drain(t.extractfile(member))
        elif opener is None:
            raise RecipeError(f"{path}: not a zip, tar or gzip archive (truncated or an error page?); "
                              f"download {path.name} again")


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
