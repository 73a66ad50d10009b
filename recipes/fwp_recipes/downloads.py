"""Downloads that resume and verify, and archives read through to the end: what a recipe's
``prepare`` needs before any data is processed."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import lzma
import shutil
import struct
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Optional, Sequence

from .common import RecipeError

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


