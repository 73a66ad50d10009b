"""The WMT14 archives: addresses, the members the recipe reads, verification, extraction, the test sets' SGML."""

from __future__ import annotations

import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import common, downloads
from ..common import RecipeError

# --------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class Archive:
    file: str
    urls: Tuple[str, ...]
    members: Dict[str, str]  # role (corpus.lang / split.lang) -> path inside the archive
    md5: Optional[str] = None  # only where a published checksum exists


ARCHIVES: Tuple[Archive, ...] = (
    Archive("training-parallel-europarl-v7.tgz",
            ("https://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz",
             "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz"),
            {"europarl.en": "training/europarl-v7.de-en.en", "europarl.de": "training/europarl-v7.de-en.de"}),
    Archive("training-parallel-commoncrawl.tgz",
            ("https://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz",
             "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz"),
            {"commoncrawl.en": "commoncrawl.de-en.en", "commoncrawl.de": "commoncrawl.de-en.de"}),
    Archive("training-parallel-nc-v9.tgz",
            ("https://www.statmt.org/wmt14/training-parallel-nc-v9.tgz",
             "http://statmt.org/wmt14/training-parallel-nc-v9.tgz"),
            {"news-commentary.en": "training/news-commentary-v9.de-en.en",
             "news-commentary.de": "training/news-commentary-v9.de-en.de"}),
    Archive("dev.tgz",
            ("https://www.statmt.org/wmt14/dev.tgz", "http://statmt.org/wmt14/dev.tgz",
             "http://data.statmt.org/wmt17/translation-task/dev.tgz"),
            {"valid.en": "dev/newstest2013-src.en.sgm", "valid.de": "dev/newstest2013-ref.de.sgm"}),
    Archive("test-full.tgz",
            ("https://www.statmt.org/wmt14/test-full.tgz", "http://statmt.org/wmt14/test-full.tgz"),
            {"test.en": "test-full/newstest2014-deen-src.en.sgm", "test.de": "test-full/newstest2014-deen-ref.de.sgm"},
            md5="a8cd784e006feb32ac6f3d9ec7eb389a"),  # sacrebleu's checksum of wmt14/full
)
CORPORA = ("europarl", "commoncrawl", "news-commentary")


def expected_layout() -> str:
    lines = []
    for a in ARCHIVES:
        lines.append(f"  {a.file}  ({a.urls[0]})")
        lines += [f"      {m}" for m in a.members.values()]
    return "\n".join(lines)


def _archive_key(path: Path) -> str:
    st = path.stat()
    return common.key_of(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _check_members(archive: Archive):
    def check(path: Path) -> None:
        try:
            downloads.test_archive(path)
        except RecipeError as e:
            raise RecipeError(f"{e} (from {archive.urls[0]})") from None
        with downloads.reading_archive(path), tarfile.open(path) as t:
            names = set(t.getnames())
        missing = [m for m in archive.members.values() if m not in names]
        if missing:
            raise RecipeError(
                f"{path}: no {', '.join(missing)} inside; expected the layout of {archive.urls[0]}")
    return check


def fetch_archives(data: Path, raw: Optional[Path], steps: common.Steps) -> Dict[str, Path]:
    """Each archive: from --raw DIR (verified in place) or downloaded (resuming) into DATA/orig."""
    paths = {}
    if raw is not None:
        if not raw.is_dir():
            raise RecipeError(f"--raw {raw}: not a directory; it must hold these archives:\n{expected_layout()}")
        missing = [a.file for a in ARCHIVES if not (raw / a.file).is_file()]
        if missing:
            raise RecipeError(
                f"--raw {raw}: missing {', '.join(missing)}. Expected these archives (with this "
                f"inner layout) in that folder:\n{expected_layout()}")
    for a in ARCHIVES:
        if raw is not None:
            path = raw / a.file
            if not steps.done(f"verify-{a.file}", _archive_key(path), [path]):
                common.log("wmt14", f"verifying {path}")
                downloads.verify_file(path, check=_check_members(a))
                if a.md5 and downloads._digest(path, "md5") != a.md5:
                    common.log("wmt14", f"note: {a.file} is readable and has the expected files, but it is "
                                        f"not the official archive (md5 differs from {a.md5}); results will "
                                        f"not be comparable")
                steps.mark(f"verify-{a.file}", _archive_key(path), [path])
        else:
            path = data / "orig" / a.file
            if not (path.is_file() and steps.done(f"verify-{a.file}", _archive_key(path), [path])):
                downloads.download(list(a.urls), path, md5=a.md5, check=_check_members(a))
                steps.mark(f"verify-{a.file}", _archive_key(path), [path])
        paths[a.file] = path
    return paths


def extract_members(archive: Archive, path: Path, dest: Path) -> Dict[str, Path]:
    """Extract the members the recipe reads from one archive into ``dest/<member>``
    (each written as ``.part`` and renamed when complete); {role: path}."""
    targets = {role: dest / member for role, member in archive.members.items()}
    with downloads.reading_archive(path), tarfile.open(path) as t:
        for role, member in archive.members.items():
            target = targets[role]
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            with t.extractfile(member) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            tmp.replace(target)
    return targets


def extract(paths: Dict[str, Path], data: Path, steps: common.Steps) -> Dict[str, Path]:
    """Extract only the members the recipe reads into DATA/orig/<archive>/<member>."""
    out = {}
    for a in ARCHIVES:
        dest = data / "orig" / a.file.replace(".tgz", "")
        key = _archive_key(paths[a.file])
        targets = {role: dest / member for role, member in a.members.items()}
        if not steps.done(f"extract-{a.file}", key, targets.values()):
            common.log("wmt14", f"extracting {', '.join(a.members.values())} from {a.file}")
            extract_members(a, paths[a.file], dest)
            steps.mark(f"extract-{a.file}", key, targets.values())
        out.update(targets)
    return out


_SEG = re.compile(r'<seg\b[^>]*?\bid\s*=\s*"?([^"\s>]+)"?[^>]*>(.*)</seg>', re.IGNORECASE)


def read_sgm(path: Path) -> List[str]:
    """The segments of a WMT "SGML" file, in file order, one string each.

    WMT's pre-2021 .sgm files are not well-formed XML (raw ``&`` and ``<`` occur in the
    text), so, like sacreBLEU's reader of ``wmt14/full``, we take each ``<seg id=...>``
    line's content with a regular expression, keep the text as it is (no entity
    decoding) and collapse whitespace. The result therefore equals sacreBLEU's
    references. Every line that opens a ``<seg`` must close it on the same line."""
    segs = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, 1):
            if "<seg" not in line.lower():
                continue
            m = _SEG.search(line)
            if not m:
                raise RecipeError(f"{path}:{lineno}: a <seg> line without its id or closing </seg>: {line.strip()[:120]}")
            segs.append(" ".join(m.group(2).split()))
    if not segs:
        raise RecipeError(f"{path}: no <seg id=...> lines; is it a WMT .sgm file?")
    return segs


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n
