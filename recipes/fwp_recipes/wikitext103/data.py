"""``prepare``: the WikiText-103 archive (downloaded or ``--raw``), extracted and binarised with
``fairseq-preprocess --only-source``."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .. import common, downloads
from ..common import RecipeError
from .args import DEFAULT_WORKDIR, log_msg, make_parser

# ------------------------------------------------------------------------------ data

ZIP_NAME = "wikitext-103-v1.zip"
ZIP_DIR = "wikitext-103"  # the folder inside the zip
SPLITS = ("train", "valid", "test")
TOKEN_FILES = {s: f"wiki.{s}.tokens" for s in SPLITS}
# The original address (answers 403 since 2024), then the dataset author's own host
# (Stephen Merity; threads such as pytorch/text#2255 and IST-DASLab/Quartet#11 report it
# serving the same zip). --mirror URL puts more addresses in front.
URLS = (
    "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip",
    "https://wikitext.smerity.com/wikitext-103-v1.zip",
)
# md5 of wikitext-103-v1.zip as published with torchtext's WikiText103 loader (the S3
# object's ETag); a download that differs is refused, a --raw archive only noted.
ZIP_MD5 = "9ddaacaf6af0710eda8c456decff7832"
LAYOUT = (
    f"either {ZIP_NAME} (members {ZIP_DIR}/wiki.train.tokens, {ZIP_DIR}/wiki.valid.tokens, "
    f"{ZIP_DIR}/wiki.test.tokens) or the three files wiki.train.tokens, wiki.valid.tokens, "
    f"wiki.test.tokens (in DIR or DIR/{ZIP_DIR})"
)

# ------------------------------------------------------------------------ prepare


def _zip_members(path: Path) -> Dict[str, str]:
    """{split: member name} of the three token files inside a WikiText-103 zip."""
    with downloads.reading_archive(path), zipfile.ZipFile(path) as z:
        names = z.namelist()
    found = {}
    for split, fname in TOKEN_FILES.items():
        hits = [n for n in names if n == f"{ZIP_DIR}/{fname}"] or [n for n in names if n.rsplit("/", 1)[-1] == fname]
        if not hits:
            shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise RecipeError(f"{path}: no {ZIP_DIR}/{fname} inside (members: {shown}); expected {LAYOUT}")
        found[split] = hits[0]
    return found


def _check_zip(path: Path) -> None:
    downloads.test_archive(path)
    _zip_members(path)


def _find_raw(raw: Path):
    """('zip', path) or ('files', {split: path}) for --raw PATH; a clear error otherwise."""
    raw = raw.expanduser().resolve()
    if not raw.exists():
        raise RecipeError(f"--raw {raw}: no such file or folder; expected {LAYOUT}")
    if raw.is_file():
        if not zipfile.is_zipfile(raw):
            raise RecipeError(f"--raw {raw}: not a zip archive; expected {LAYOUT}")
        return "zip", raw
    for folder in (raw, raw / ZIP_DIR):
        files = {s: folder / f for s, f in TOKEN_FILES.items()}
        present = [s for s, p in files.items() if p.is_file()]
        if len(present) == 3:
            return "files", files
        if present:
            missing = ", ".join(TOKEN_FILES[s] for s in SPLITS if s not in present)
            raise RecipeError(f"--raw {raw}: {missing} missing in {folder} (found "
                              f"{', '.join(TOKEN_FILES[s] for s in present)}); expected {LAYOUT}")
    if (raw / ZIP_NAME).is_file():
        return "zip", raw / ZIP_NAME
    raise RecipeError(f"--raw {raw}: found neither {ZIP_NAME} nor wiki.train.tokens, wiki.valid.tokens, "
                      f"wiki.test.tokens there; expected {LAYOUT}")


def _stamp(path: Path) -> Tuple[str, int, int]:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def _extract(zip_path: Path, out: Path, steps: common.Steps) -> Dict[str, Path]:
    files = {s: out / f for s, f in TOKEN_FILES.items()}
    key = common.key_of(_stamp(zip_path))
    if steps.done("extract", key, files.values()):
        log_msg(f"extract: done earlier ({out}), skipping")
        return files
    members = _zip_members(zip_path)
    out.mkdir(parents=True, exist_ok=True)
    with downloads.reading_archive(zip_path), zipfile.ZipFile(zip_path) as z:
        for split, member in members.items():
            tmp = files[split].with_name(files[split].name + ".tmp")
            with z.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)  # the member's CRC-32 is checked at its end
            tmp.replace(files[split])
    steps.mark("extract", key, files.values())
    log_msg(f"extract: {', '.join(TOKEN_FILES.values())} -> {out}")
    return files


def binarized_files(dest: Path) -> List[Path]:
    """What fairseq-preprocess --only-source writes (and training/evaluation read)."""
    return [dest / "dict.txt"] + [dest / f"{s}.{ext}" for s in SPLITS for ext in ("bin", "idx")]


def _binarize(files: Dict[str, Path], dest: Path, workers: int, steps: common.Steps, log: Path) -> None:
    key = common.key_of([_stamp(files[s]) for s in SPLITS], str(dest))
    outputs = binarized_files(dest)
    if steps.done("binarize", key, outputs):
        log_msg(f"binarize: done earlier ({dest}), skipping")
        return
    if dest.exists():
        shutil.rmtree(dest)  # a half-written folder from a killed run
    common.run(common.fairseq_cmd(
        "preprocess", "--only-source",
        "--trainpref", files["train"], "--validpref", files["valid"], "--testpref", files["test"],
        "--destdir", dest, "--workers", workers), log=log)
    steps.mark("binarize", key, outputs)


def data_info(data: Path) -> dict:
    """Vocabulary size (with fairseq's 4 special symbols) of a binarised folder."""
    d = Path(data) / "dict.txt"
    if not d.is_file():
        raise RecipeError(f"{data}: no dict.txt; run recipes/wikitext103/prepare.sh first (or pass --data)")
    with open(d) as f:
        words = sum(1 for _ in f)
    return {"vocab": words + 4, "dict_words": words}


def prepare(argv: Sequence[str]) -> int:
    p = make_parser("prepare.sh", "Download (or take --raw) WikiText-103 and binarise it with fairseq-preprocess.")
    p.add_argument("--raw", type=Path, metavar="PATH",
                   help=f"use files already here instead of downloading: {LAYOUT}")
    p.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="another address of wikitext-103-v1.zip, tried first (repeatable)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="fairseq-preprocess workers")
    a = common.parse_args(p, argv)
    workdir = a.workdir.resolve()
    steps = common.Steps(workdir)
    log = workdir / "prepare.log"
    if a.raw is not None:
        kind, found = _find_raw(a.raw)
        if kind == "zip":
            _check_zip(found)
            try:
                downloads.verify_file(found, md5=ZIP_MD5)
                log_msg(f"--raw {found}: the published archive (md5 {ZIP_MD5})")
            except RecipeError:
                log_msg(f"--raw {found}: a valid WikiText-103 layout, but not the published archive's md5 "
                     f"{ZIP_MD5} (fine for a locally built corpus; the paper's numbers need the original)")
            files = _extract(found, workdir / "raw", steps)
        else:
            files = found
            log_msg(f"--raw: using {found['train'].parent} directly")
    else:
        zip_path = downloads.download([*a.mirror, *URLS], workdir / "download" / ZIP_NAME, md5=ZIP_MD5, check=_check_zip)
        files = _extract(zip_path, workdir / "raw", steps)
    dest = workdir / "data-bin"
    _binarize(files, dest, a.workers, steps, log)
    info = data_info(dest)
    log_msg(f"ready: {dest} (vocabulary {info['vocab']:,} incl. 4 special symbols)")
    print(f"data: {dest}")
    print(f"vocabulary: {info['vocab']}")
    return 0
