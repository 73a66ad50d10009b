"""Corrupted archives are refused (issue 17, item 3).

Every single-byte change of a small generated archive -- the WMT14 ``test-full.tgz`` and
the WikiText-103 zip, each with the real inner layout -- must either be refused by the
recipe's own check with its one-line error naming the file to download again, or leave
the extracted text byte-identical (a change in a field nothing reads: a gzip header's
time stamp, a zip entry's date). Before the fix a ``.tgz`` was read member by member and
the gzip trailer (CRC-32, length) never reached: flipped bytes gave garbled references
with exit 0, or an uncaught ``zlib.error``.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

from fwp_recipes import common, downloads, wikitext103 as wt, wmt14  # noqa: E402
from fwp_recipes.common import RecipeError  # noqa: E402

FLIPS = (0xFF, 0x01)  # every bit of the byte, and its lowest bit


def _test_full_tgz(out: Path) -> Path:
    """A small test-full.tgz in the real layout (two .sgm files), built without the toy corpus."""
    import tarfile

    out.mkdir(parents=True, exist_ok=True)
    path = out / "test-full.tgz"
    src = ["Gutach: Increased safety for pedestrians", "They are not even 100 metres apart."]
    ref = ["Gutach: Noch mehr Sicherheit für Fußgänger", "Sie stehen keine 100 Meter voneinander entfernt."]
    with tarfile.open(path, "w:gz") as t:
        wmt14.toy._add(t, "test-full/newstest2014-deen-src.en.sgm", wmt14.toy._sgm(src, "src", "en", "newstest2014"))
        wmt14.toy._add(t, "test-full/newstest2014-deen-ref.de.sgm", wmt14.toy._sgm(ref, "ref", "de", "newstest2014"))
    return path


def _wikitext_zip(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / wt.ZIP_NAME
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for split in wt.SPLITS:
            z.writestr(f"{wt.ZIP_DIR}/{wt.TOKEN_FILES[split]}", f" = {split} = \n the cat sat on the mat . \n")
    return path


def _variants(data: bytes):
    for i in range(len(data)):
        for x in FLIPS:
            yield i, x, data[:i] + bytes([data[i] ^ x]) + data[i + 1:]


def _classify(path: Path, check, extract, original: dict):
    """'refused' (one-line RecipeError naming the file), 'same' (extracted bytes identical)
    or raises AssertionError describing what got through."""
    try:
        check(path)
        got = extract(path)
    except RecipeError as e:
        msg = str(e)
        assert "\n" not in msg and path.name in msg, msg
        return "refused"
    assert got == original, "altered text accepted"
    return "same"


def _tally(archive: Path, check, extract, tmp_path: Path):
    original = extract(archive)
    data = archive.read_bytes()
    bad = tmp_path / "flipped" / archive.name
    bad.parent.mkdir()
    counts = {"refused": 0, "same": 0}
    for i, x, variant in _variants(data):
        bad.write_bytes(variant)
        try:
            counts[_classify(bad, check, extract, original)] += 1
        except AssertionError as e:
            raise AssertionError(f"byte {i} ^ {x:#04x} of {archive.name} ({len(data)} bytes): {e}") from None
        except Exception as e:  # anything else is a traceback for the user
            raise AssertionError(f"byte {i} ^ {x:#04x} of {archive.name}: uncaught {type(e).__name__}: {e}") from None
    return counts, len(data)


def test_every_byte_flip_of_a_tgz_is_refused_or_harmless(tmp_path):
    archive = next(a for a in wmt14.ARCHIVES if a.file == "test-full.tgz")
    path = _test_full_tgz(tmp_path / "raw")
    n = [0]

    def extract(p):
        n[0] += 1
        out = wmt14.extract_members(archive, p, tmp_path / f"x{n[0]}")
        return {role: f.read_bytes() for role, f in out.items()}

    counts, size = _tally(path, wmt14.archives._check_members(archive), extract, tmp_path)
    # the gzip header's time stamp / extra-flags / OS bytes change nothing; everything else is refused
    assert counts["refused"] >= 0.9 * size * len(FLIPS), counts
    print(f"test-full.tgz, {size} bytes: {counts}")


def test_every_byte_flip_of_the_wikitext_zip_is_refused_or_harmless(tmp_path):
    path = _wikitext_zip(tmp_path / "raw")
    n = [0]

    def extract(p):
        n[0] += 1
        out = wt.data._extract(p, tmp_path / f"x{n[0]}", common.Steps(tmp_path / f"s{n[0]}"))
        return {split: f.read_bytes() for split, f in out.items()}

    def check(p):  # what prepare --raw does with a zip: find it, check it, then extract
        kind, found = wt.data._find_raw(p)
        assert kind == "zip"
        wt.data._check_zip(found)

    counts, size = _tally(path, check, extract, tmp_path)
    assert counts["refused"] >= 0.5 * size * len(FLIPS), counts  # dates, versions, attributes are unchecked
    print(f"{wt.ZIP_NAME}, {size} bytes: {counts}")


@pytest.mark.parametrize("recipe", ["wmt14", "wikitext103"])
def test_the_launcher_prints_one_line(recipe, tmp_path):
    """A damaged archive given to prepare --raw: exit 2, one line, no traceback, the file named."""
    raw = tmp_path / "raw"
    if recipe == "wmt14":
        wmt14.write_fake_archives(raw, train_pairs=3, valid=2, test=3)
        bad = raw / "test-full.tgz"
        args = ["--raw", raw, "--data", tmp_path / "data", "--expect", "2,3"]
    else:
        bad = _wikitext_zip(raw)
        args = ["--raw", bad, "--workdir", tmp_path / "w"]
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the compressed data
    bad.write_bytes(bytes(data))
    p = subprocess.run([sys.executable, str(ROOT / "recipes" / "launch.py"), recipe, "prepare", *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"{bad}: broken or incomplete archive" in errors[0] and f"download {bad.name} again" in errors[0]


def test_gzip_trailer_is_checked(tmp_path):
    """The CRC-32 at the end of a .tgz is read: a flip there alone is refused."""
    path = _test_full_tgz(tmp_path)
    data = bytearray(path.read_bytes())
    data[-6] ^= 0x01  # CRC-32 of the uncompressed tar (the last 8 bytes: CRC, length)
    path.write_bytes(bytes(data))
    with pytest.raises(RecipeError, match=r"test-full\.tgz: broken or incomplete archive \(BadGzipFile: CRC check failed"):
        downloads.test_archive(path)
