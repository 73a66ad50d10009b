"""The shared recipe launcher helpers (recipes/fwp_recipes/common.py, recipes/launch.py)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

from fwp_recipes import common, downloads  # noqa: E402
from fwp_recipes.common import RecipeError  # noqa: E402


@pytest.mark.parametrize("workers", [0, 1, 2, 3, 4, 6, 8, 12])
def test_split_batch_keeps_total(workers):
    for total, cap in ((96, 96), (96, 16), (56, 56), (56, 7)):
        if total % max(1, workers):
            continue
        per, freq = common.split_batch(total, workers, cap)
        assert per * max(1, workers) * freq == total
        assert per <= cap
        # fewest accumulation steps: one step less would not fit
        assert freq == 1 or total // (max(1, workers) * (freq - 1)) > cap or total % (max(1, workers) * (freq - 1))


def test_split_batch_refuses_uneven():
    with pytest.raises(RecipeError, match="56 sequences per update evenly over 3 processes.*1, 2, 4, 7, 8"):
        common.split_batch(56, 3, 56)


def test_update_freq_for_tokens(capsys):
    paper = 3 * 16 * 3584
    assert common.update_freq_for_tokens(paper, 3, 3584) == 16
    assert common.update_freq_for_tokens(paper, 1, 3584) == 48
    assert common.update_freq_for_tokens(paper, 8, 3584) == 6
    assert "note" not in capsys.readouterr().err
    assert common.update_freq_for_tokens(paper, 5, 3584) == 10  # 50 x 3584: 4% more, said aloud
    assert "1.042x" in capsys.readouterr().err


def test_world_size_env(monkeypatch):
    monkeypatch.setenv("FWP_NUM_GPUS", "4")
    assert common.world_size() == 4
    monkeypatch.delenv("FWP_NUM_GPUS")
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert common.world_size() == 16
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(RecipeError, match="WORLD_SIZE"):
        common.world_size()


def test_precision_flags(monkeypatch):
    monkeypatch.setenv("FWP_NUM_GPUS", "2")
    assert common.precision_flags("bf16") == ["--bf16"]
    assert common.precision_flags("fp32") == []
    monkeypatch.setenv("FWP_NUM_GPUS", "0")
    assert common.precision_flags("fp16") == []
    with pytest.raises(RecipeError, match="--precision.*fp16, bf16, fp32"):
        common.precision_flags("fp8")


def test_results_table_replaces_row(tmp_path):
    path = tmp_path / "r.md"
    header = ["model", "config", "ppl"]
    common.results_table(path, header, ("linear", "small"), ["linear", "small", 40.1], preamble="# Table")
    common.results_table(path, header, ("delta", "small"), ["delta", "small", 38.0])
    common.results_table(path, header, ("linear", "small"), ["linear", "small", 39.5])
    common.results_table(path, header, ("linear", "medium"), ["linear", "medium", 30.0])
    lines = path.read_text().splitlines()
    assert lines[0] == "# Table"
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert rows == ["| linear | small | 39.5 |", "| delta | small | 38.0 |", "| linear | medium | 30.0 |"]


def test_default_precision_and_rank(monkeypatch):
    import torch

    assert common.default_precision() == ("bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                                          else "fp16")
    monkeypatch.setenv("FWP_NUM_GPUS", "2")
    assert common.precision_flags(None) == [f"--{common.default_precision()}"]  # the one default of every recipe
    for k in ("RANK", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    assert common.rank() == 0
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert common.rank() == 3


def test_execute_quiet_with_progress(tmp_path, capsys):
    script = "import sys; print('| train_inner | epoch 1 | loss 2'); print('other'); sys.exit(3)"
    rc, out = common.execute([sys.executable, "-c", script], log=tmp_path / "x.log", echo=False, poll=0,
                             progress=lambda line: line.strip() if "train_inner" in line else None)
    assert rc == 3 and "other" in out and "other" in (tmp_path / "x.log").read_text()
    printed = capsys.readouterr()
    assert "other" not in printed.out and "| train_inner | epoch 1 | loss 2" in printed.out
    with pytest.raises(RecipeError, match="exit code 3"):
        common.run([sys.executable, "-c", script], echo=False)


def test_run_all(monkeypatch):
    seen = []
    common.run_all(seen.append, [1, 2, 3], jobs=1)
    common.run_all(seen.append, [4, 5], jobs=2)
    assert sorted(seen) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        common.run_all(lambda x: int("x"), [1, 2], jobs=2)


def test_train_once_markers_and_fresh(tmp_path, monkeypatch, capsys):
    ran = []

    def fake_run(cmd, log=None, **kw):
        ran.append(cmd)
        (tmp_path / "ck").mkdir(exist_ok=True)
        (tmp_path / "ck" / "checkpoint_last.pt").write_bytes(b"x")
        return ""

    monkeypatch.setattr(common, "run", fake_run)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    assert common.train_once(["train"], tmp_path / "ck", "k", name="r", tag="t")
    assert not common.train_once(["train"], tmp_path / "ck", "k", name="r", tag="t")  # finished: skipped
    assert common.train_once(["train"], tmp_path / "ck", "k2", name="r", tag="t")  # other flags: resumes
    assert "r: resuming from" in capsys.readouterr().err
    (tmp_path / "ck" / "stale").write_text("")
    assert common.train_once(["train"], tmp_path / "ck", "k2", name="r", tag="t", fresh=True)
    assert not (tmp_path / "ck" / "stale").exists() and len(ran) == 3


def test_steps(tmp_path):
    steps = common.Steps(tmp_path)
    key = common.key_of("a", 1)
    assert not steps.done("bpe", key)
    steps.mark("bpe", key)
    assert steps.done("bpe", key)
    assert not steps.done("bpe", common.key_of("a", 2))  # inputs changed: redo
    steps.forget("bpe")
    assert not steps.done("bpe", key)


def _archives(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("wikitext-103/wiki.train.tokens", "hello world\n" * 5000)
    t = tmp_path / "b.tgz"
    with tarfile.open(t, "w:gz") as f:
        data = b"<seg id=1>x</seg>\n" * 500
        info = tarfile.TarInfo("dev/newstest2013-src.en.sgm")
        info.size = len(data)
        f.addfile(info, io.BytesIO(data))
    g = tmp_path / "c.gz"
    g.write_bytes(gzip.compress(b"x" * 10000))
    return z, t, g


def test_archive_checks(tmp_path):
    for path in _archives(tmp_path):
        downloads.test_archive(path)
        cut = tmp_path / ("cut-" + path.name)
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(RecipeError, match="cut-"):
            downloads.test_archive(cut)
    page = tmp_path / "error.zip"
    page.write_text("<html>403 Forbidden</html>")
    with pytest.raises(RecipeError, match="not a zip, tar or gzip"):
        downloads.test_archive(page)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (as real mirrors do) and counts the bytes sent."""

    sent = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        type(self).sent += len(data) - start  # before the write: the client may check it as soon as it has the bytes
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _RangeHandler.sent = 0
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_download_resumes_and_falls_back(tmp_path, server, capsys):
    root, base = server
    z, _, _ = _archives(tmp_path)
    (root / "mirror").mkdir()
    (root / "mirror" / "a.zip").write_bytes(z.read_bytes())
    size, sha = z.stat().st_size, hashlib.sha256(z.read_bytes()).hexdigest()
    dest = tmp_path / "dl" / "a.zip"
    dest.parent.mkdir()
    (dest.parent / "a.zip.part").write_bytes(z.read_bytes()[:1000])  # a killed download
    urls = [f"{base}/original/a.zip", f"{base}/mirror/a.zip"]  # the first answers 404
    downloads.download(urls, dest, size=size, sha256=sha, check=downloads.test_archive)
    assert dest.read_bytes() == z.read_bytes()
    assert _RangeHandler.sent == size - 1000  # only the missing part was fetched
    err = capsys.readouterr().err
    assert f"served by {base}/mirror/a.zip" in err
    assert f"{base}/original/a.zip failed: HTTP Error 404" in err  # each failed address is said as it fails
    _RangeHandler.sent = 0
    downloads.download(urls, dest, size=size, sha256=sha)  # present and verified: no network
    assert _RangeHandler.sent == 0
    with pytest.raises(RecipeError, match=r"tried:\n.*original/a.zip.*404.*\n.*--raw DIR"):
        downloads.download([f"{base}/original/a.zip"], tmp_path / "dl" / "b.zip")
    with pytest.raises(RecipeError, match="sha256"):
        downloads.download([f"{base}/mirror/a.zip"], tmp_path / "dl" / "c.zip", sha256="0" * 64)
    assert not (tmp_path / "dl" / "c.zip.part").exists()  # a complete wrong file is not resumed from


def test_launcher_errors():
    launch = [sys.executable, str(ROOT / "recipes" / "launch.py")]
    p = subprocess.run(launch + ["nope", "train"], capture_output=True, text=True)
    assert p.returncode == 2 and "wikitext103" in p.stderr and "wmt14" in p.stderr
