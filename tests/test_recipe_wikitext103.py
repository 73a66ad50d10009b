"""The WikiText-103 recipe (recipes/wikitext103/, recipes/fwp_recipes/wikitext103/).

Launcher arithmetic and the fairseq commands for every MODEL (no subprocess), the paper's
row table, prepare --raw from a generated zip and from loose files (fairseq-preprocess),
and the whole smoke.sh end to end (CPU, about two minutes on two idle cores)."""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

from fwp_recipes import common, wikitext103 as wt  # noqa: E402
from fwp_recipes.common import RecipeError  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable


def _cmd(argv, workers=0, precision="bf16", max_per_gpu=None):
    s = wt.parse_setting(argv)
    cmd, info = wt.train_command(s, Path("/d"), Path("/ck"), workers=workers, precision=precision,
                                 max_per_gpu=max_per_gpu)
    return s, cmd, info


def _flag(cmd, name):
    """Value after ``name`` in ``cmd`` (the last one: fairseq takes the last)."""
    idx = [i for i, c in enumerate(cmd) if c == name]
    assert idx, f"{name} not in {cmd}"
    return cmd[idx[-1] + 1]


# ------------------------------------------------------------------ batch arithmetic


@pytest.mark.parametrize("gpus", [1, 2, 3, 4, 8])
def test_paper_batch_on_any_gpu_count(gpus, monkeypatch):
    monkeypatch.setenv("FWP_NUM_GPUS", str(gpus))
    _, cmd, info = _cmd(["small", "delta"], workers=gpus)
    per, freq = int(_flag(cmd, "--batch-size")), int(_flag(cmd, "--update-freq"))
    assert per * gpus * freq == 96 and per <= 48  # the paper's 96 x 256 tokens, V100-sized per GPU
    assert info["tokens_per_update"] == 96 * 256
    assert _flag(cmd, "--required-batch-size-multiple") == "1"  # fairseq would round 28/12 down to 8s
    assert _flag(cmd, "--distributed-world-size") == str(gpus)  # also 1: not every visible GPU
    assert "--bf16" in cmd and "--cpu" not in cmd
    # medium: 56 x 384; 3 GPUs cannot hold 56 sequences evenly
    if 56 % gpus == 0:
        _, cmd, info = _cmd(["medium", "delta"], workers=gpus)
        assert int(_flag(cmd, "--batch-size")) * gpus * int(_flag(cmd, "--update-freq")) == 56
        assert info["tokens_per_update"] == 56 * 384
    else:
        with pytest.raises(RecipeError, match="56 sequences per update evenly over 3 processes"):
            _cmd(["medium", "delta"], workers=gpus)


def test_cpu_and_max_per_gpu(monkeypatch):
    monkeypatch.setenv("FWP_NUM_GPUS", "0")
    _, cmd, _ = _cmd(["small", "linear"], workers=0)
    assert "--cpu" in cmd and "--bf16" not in cmd and "--fp16" not in cmd
    assert (_flag(cmd, "--batch-size"), _flag(cmd, "--update-freq")) == ("48", "2")
    monkeypatch.setenv("FWP_NUM_GPUS", "1")
    _, cmd, _ = _cmd(["small", "linear"], workers=1, max_per_gpu=96, precision="fp16")
    assert (_flag(cmd, "--batch-size"), _flag(cmd, "--update-freq")) == ("96", "1") and "--fp16" in cmd
    with pytest.raises(RecipeError, match="96 sequences per update evenly over 5 processes"):
        _cmd(["small", "linear"], workers=5)


# ------------------------------------------------------------- commands per model


def test_paper_hyperparameters():
    for config, L, arch, upd in (("small", 256, "fwp_lm_wt103_small", 500_000), ("medium", 384, "fwp_lm_wt103_medium", 340_000)):
        _, cmd, _ = _cmd([config, "delta"])
        assert cmd[1:3] == ["-m", "fairseq_cli.train"]
        want = {"--arch": arch, "--tokens-per-sample": str(L), "--lr": "0.00025", "--lr-scheduler": "cosine",
                "--warmup-updates": "2000", "--min-lr": "0", "--clip-norm": "0.25", "--dropout": "0.1",
                "--optimizer": "adam", "--criterion": "adaptive_loss", "--ddp-backend": "legacy_ddp",
                "--task": "fwp_language_modeling", "--sample-break-mode": "none", "--max-update": str(upd),
                "--user-dir": common.USER_DIR, "--save-dir": "/ck"}
        for k, v in want.items():
            assert _flag(cmd, k) == v, k
        assert cmd[3] == "/d"
    # ~120 / ~70 epochs of the 103M-token train set
    assert 115 < 500_000 * 96 * 256 / 103.2e6 < 125 and 68 < 340_000 * 56 * 384 / 103.2e6 < 73


@pytest.mark.parametrize("argv, fm, rule, attn_norm, extra", [
    (["small", "transformer"], "softmax", None, False, {}),
    (["small", "linear"], "linear", "sum", True, {}),
    (["small", "delta"], "linear", "delta", False, {}),
    (["small", "performer"], "favor", "sum", True, {"--fwp-favor-features": "8"}),
    (["medium", "performer"], "favor", "sum", True, {"--fwp-favor-features": "16"}),
    (["small", "performer-delta", "--favor-features", "16"], "favor", "delta", False, {"--fwp-favor-features": "16"}),
    (["small", "dpfp"], "dpfp", "sum", True, {"--fwp-dpfp-nu": "1"}),
    (["small", "dpfp-delta", "--dpfp-nu", "2"], "dpfp", "delta", False, {"--fwp-dpfp-nu": "2"}),
    (["medium", "delta", "--attn-norm", "on", "--pos", "off"], "linear", "delta", True, {}),
])
def test_model_flags(argv, fm, rule, attn_norm, extra):
    s, cmd, _ = _cmd(argv)
    assert _flag(cmd, "--fwp-feature-map") == fm
    if rule is None:
        assert not any(c.startswith("--fwp-") and c != "--fwp-feature-map" for c in cmd)
    else:
        assert _flag(cmd, "--fwp-update-rule") == rule
        assert "--fwp-sum-norm" in cmd  # every fast weight LM of the paper (Sec. 6.3)
    assert ("--fwp-attn-norm" in cmd) == attn_norm
    for k, v in extra.items():
        assert _flag(cmd, k) == v
    assert ("--no-token-positional-embeddings" in cmd) == ("off" in argv)
    assert "--fwp-carry-state" not in cmd


def test_carry_is_table4():
    s, cmd, _ = _cmd(["medium", "delta", "--carry"], workers=2)  # the paper's two GPUs: 2 x 28 streams
    assert s.name == "medium-delta-carry"
    assert "--fwp-carry-state" in cmd and "--no-token-positional-embeddings" in cmd and "--fwp-attn-norm" not in cmd
    assert (_flag(cmd, "--batch-size"), _flag(cmd, "--update-freq")) == ("28", "1")
    s, cmd, _ = _cmd(["medium", "linear", "--carry"], workers=2)  # the paper's Linear Transformer row keeps z.phi(q)
    assert "--fwp-carry-state" in cmd and "--fwp-attn-norm" in cmd and "--no-token-positional-embeddings" in cmd
    s, cmd, _ = _cmd(["medium", "linear", "--carry", "--attn-norm", "off"], workers=2)
    assert "--fwp-attn-norm" not in cmd and s.name == "medium-linear-noattnnorm-carry"


def test_run_names_distinguish_settings():
    names = {wt.parse_setting(argv).name for _, _, argv in wt.PAPER_COMMANDS}
    assert len(names) == len({tuple(a) for _, _, a in wt.PAPER_COMMANDS})  # one folder per distinct run
    assert wt.parse_setting(["small", "performer", "--favor-features", "16"]).name == "small-performer-m16"
    assert wt.parse_setting(["medium", "delta", "--pos", "off", "--attn-norm", "on"]).name == "medium-delta-nopos-attnnorm"


@pytest.mark.parametrize("argv, match", [
    (["big", "delta"], r"unknown CONFIG 'big'; valid: small, medium, tiny"),
    (["small", "lstm"], r"unknown MODEL 'lstm'; valid: transformer, linear, delta, performer, performer-delta, dpfp, dpfp-delta"),
    (["small", "transformer", "--carry"], r"--carry needs a fast weight model"),
    (["small", "transformer", "--attn-norm", "on"], r"--attn-norm needs a fast weight model"),
    (["small", "delta", "--favor-features", "16"], r"--favor-features M .* performer"),
    (["medium", "performer-delta", "--carry"], r"--carry does not work with performer"),
    (["small", "dpfp", "--dpfp-nu", "0"], r"--dpfp-nu N \(an integer >= 1\)"),
    (["small", "delta", "--pos", "maybe"], r"invalid choice: 'maybe'"),
])
def test_bad_settings(argv, match):
    with pytest.raises(RecipeError, match=match):
        wt.parse_setting(argv)


def test_launcher_reports_bad_model():
    r = subprocess.run([PY, str(ROOT / "recipes" / "launch.py"), "wikitext103", "train", "small", "lstm", "--dry-run"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "error: unknown MODEL 'lstm'; valid: transformer, linear, delta" in r.stderr and "Traceback" not in r.stderr


def test_every_paper_row_has_one_command():
    want = {(2, k): v for k, v in wt.PAPER_TABLE2.items()}
    want.update({(3, k): v for k, v in wt.PAPER_TABLE3.items()})
    want.update({(4, k): v for k, v in wt.PAPER_TABLE4.items()})
    want.update({(5, k): v for k, v in wt.PAPER_TABLE5.items()})
    covered = {}
    for table, _, argv in wt.PAPER_COMMANDS:
        s = wt.parse_setting(argv)
        rows = dict(wt.paper_rows(s))
        assert table in rows, (table, argv)
        key = {2: (s.config, s.model), 3: (s.pos, s.effective_attn_norm), 4: s.model, 5: s.model}[table]
        assert rows[table] == want[(table, key)]
        covered[(table, key)] = argv
    assert set(covered) == set(want)
    # the paper's numbers, read from Tables 2-5 (Sec. 6.3, Appendix D.3)
    assert wt.PAPER_TABLE2[("medium", "delta")] == wt.PAPER_TABLE3[(True, False)] == (29.7, 31.5)
    assert wt.PAPER_TABLE4["delta"] == ("89.9", "0.13", "27.8", "29.4")
    assert wt.PAPER_TABLE5["dpfp-delta"] == (33.9, 35.0)
    # a run no table has (small Performer with m = 32) goes to "Other runs"
    assert wt.paper_rows(wt.parse_setting(["small", "performer", "--favor-features", "32"])) == []


def test_state_size_from_checkpoint(tmp_path):
    import torch

    def save(fm, **kw):
        m = argparse.Namespace(decoder_layers=16, decoder_attention_heads=8, decoder_embed_dim=256,
                               fwp_feature_map=fm, fwp_dpfp_nu=kw.get("nu", 1), fwp_favor_features=kw.get("m", 64))
        path = tmp_path / f"{fm}.pt"
        w = torch.zeros(3, 4)
        torch.save({"model": {"a.weight": w, "b.weight": w, "c.bias": torch.zeros(5)}, "cfg": {"model": m},
                    "optimizer_history": [{"num_updates": 7}]}, path)
        return wt.model_stats(path)

    st = save("linear")
    assert st["state"] == 16 * 8 * 32 * 32 == 131_072 and wt.results._m(st["state"]) == "0.13"  # Table 4: 0.13M
    assert st["params"] == 12 + 5 and st["num_updates"] == 7  # tied (shared) tensors counted once
    assert save("dpfp", nu=2)["state"] == 16 * 8 * (2 * 2 * 32) * 32
    assert save("favor", m=16)["d_dot"] == 32
    assert save("softmax")["state"] is None


def test_result_rows_follow_the_paper_tables():
    ppl = {(m, sp): v for m, sp, v in (("sliding", "valid", 30.0), ("sliding", "test", 31.0),
                                         ("full", "valid", 28.5), ("full", "test", 29.5))}
    stats = {"params": 89.9e6, "state": 16 * 8 * 32 * 32, "d_dot": 32, "heads": 8, "num_updates": 340000}
    rows = dict(wt.result_rows(wt.parse_setting(["medium", "delta", "--carry"]), stats, ppl))
    assert list(rows) == [4]
    assert rows[4] == ["medium-delta-carry", "Delta Network", "89.9", "0.13", 340000, "28.50", "29.50",
                       "89.9", "0.13", "27.8", "29.4"]
    for table, header in ((t, wt.SECTIONS[t][1]) for t in rows):
        assert len(rows[table]) == len(header)
    rows = dict(wt.result_rows(wt.parse_setting(["medium", "delta"]), stats, ppl))
    assert sorted(rows) == [2, 3]
    assert rows[2][-2:] == ["29.7", "31.5"] and rows[3][1:3] == ["yes", "no"] and rows[3][-2:] == ["29.7", "31.5"]
    small = {**stats, "d_dot": 32}
    rows = dict(wt.result_rows(wt.parse_setting(["small", "performer", "--favor-features", "16"]), small, ppl))
    assert list(rows) == [5] and rows[5][3] == 256 and rows[5][-2:] == ["38.0", "38.8"]  # d_dot over 8 heads
    rows = dict(wt.result_rows(wt.parse_setting(["small", "transformer"]), {**stats, "state": None, "d_dot": None},
                               {k: v for k, v in ppl.items() if k[0] == "sliding"}))
    assert sorted(rows) == [2, 5] and rows[2][8:10] == ["—", "—"]  # no full mode without fast weights


def test_results_table_with_sections(tmp_path):
    path = tmp_path / "r.md"
    common.results_table(path, ["run", "x"], ("a",), ["a", 1], "# pre", section="T2")
    common.results_table(path, ["run", "y"], ("a",), ["a", 2], section="T3")
    common.results_table(path, ["run", "x"], ("b",), ["b", 3], section="T2")
    common.results_table(path, ["run", "x"], ("a",), ["a", 4], section="T2")
    text = path.read_text()
    assert text.startswith("# pre")
    t2, t3 = text.split("## T3")
    assert "| a | 4 |" in t2 and "| b | 3 |" in t2 and "| a | 1 |" not in t2 and t2.index("| a | 4 |") < t2.index("| b | 3 |")
    assert "| a | 2 |" in t3


# ------------------------------------------------------------------------ prepare


def test_raw_errors(tmp_path):
    d = tmp_path / "loose"
    wt.write_toy_raw(d, "files", (2, 1, 1))
    (d / "wiki.valid.tokens").unlink()
    with pytest.raises(RecipeError, match=r"wiki\.valid\.tokens missing in .*loose.*expected either wikitext-103-v1\.zip"):
        wt.prepare(["--raw", str(d), "--workdir", str(tmp_path / "w")])
    with pytest.raises(RecipeError, match=r"no such file or folder; expected either"):
        wt.prepare(["--raw", str(tmp_path / "nothing"), "--workdir", str(tmp_path / "w")])
    bad = tmp_path / "bad" / wt.ZIP_NAME
    bad.parent.mkdir()
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("wikitext-103/wiki.train.tokens", "a b\n")
        z.writestr("wikitext-103/wiki.valid.tokens", "a b\n")
    with pytest.raises(RecipeError, match=r"no wikitext-103/wiki\.test\.tokens inside"):
        wt.prepare(["--raw", str(bad.parent), "--workdir", str(tmp_path / "w")])
    bad.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(RecipeError, match="not a zip archive"):
        wt.prepare(["--raw", str(bad), "--workdir", str(tmp_path / "w")])


def test_prepare_downloads_original_then_mirror(tmp_path, monkeypatch, capsys):
    """Without --raw: the original address (403 here, as today), then a mirror serving a
    zip with the wrong md5 (refused), then one serving the right one; the log says which
    served it, and the extracted files are the archive's."""
    import functools
    import hashlib
    import http.server
    import threading

    good = wt.write_toy_raw(tmp_path / "srv" / "good", "zip", (2, 1, 1), seed=3)
    wt.write_toy_raw(tmp_path / "srv" / "other", "zip", (2, 1, 1), seed=4)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/s3/"):
                self.send_error(403, "Forbidden")
            else:
                super().do_GET()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path / "srv")))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        monkeypatch.setattr(wt.data, "URLS", (f"{base}/s3/{wt.ZIP_NAME}", f"{base}/other/{wt.ZIP_NAME}", f"{base}/good/{wt.ZIP_NAME}"))
        monkeypatch.setattr(wt.data, "ZIP_MD5", hashlib.md5(good.read_bytes()).hexdigest())
        binarized = []
        monkeypatch.setattr(wt.data, "_binarize", lambda files, dest, *a: binarized.append(files))
        monkeypatch.setattr(wt.data, "data_info", lambda data: {"vocab": 0})
        assert wt.prepare(["--workdir", str(tmp_path / "w")]) == 0
    finally:
        srv.shutdown()
    err = capsys.readouterr().err
    tried = re.findall(r"downloading wikitext-103-v1\.zip from (\S+)", err)
    assert tried == list(wt.data.URLS)  # original first, the wrong-md5 copy refused, then the good mirror
    assert f"served by {base}/good/{wt.ZIP_NAME}" in err
    with zipfile.ZipFile(good) as z:
        assert binarized[0]["test"].read_bytes() == z.read("wikitext-103/wiki.test.tokens")
    assert (tmp_path / "w" / "download" / wt.ZIP_NAME).read_bytes() == good.read_bytes()


def test_prepare_loose_files_matches_zip(tmp_path, smoke, capsys):
    """The three loose files binarise to the same dictionary and data as the zip did in
    the smoke run; a rerun of the zip's prepare skips both steps."""
    d = tmp_path / "loose"
    with zipfile.ZipFile(smoke["out"] / "archive" / wt.ZIP_NAME) as z:
        for split in wt.SPLITS:
            (d / "wikitext-103").mkdir(parents=True, exist_ok=True)
            (d / "wikitext-103" / f"wiki.{split}.tokens").write_bytes(z.read(f"wikitext-103/wiki.{split}.tokens"))
    assert wt.prepare(["--raw", str(d), "--workdir", str(tmp_path / "w"), "--workers", "1"]) == 0
    ours, theirs = tmp_path / "w" / "data-bin", smoke["out"] / "data-bin"
    assert (ours / "dict.txt").read_text() == (theirs / "dict.txt").read_text()
    for split in wt.SPLITS:
        assert (ours / f"{split}.bin").read_bytes() == (theirs / f"{split}.bin").read_bytes()
    capsys.readouterr()
    before = (theirs / "dict.txt").stat().st_mtime_ns
    wt.prepare(["--raw", str(smoke["out"] / "archive"), "--workdir", str(smoke["out"]), "--workers", "1"])
    err = capsys.readouterr().err
    assert "extract: done earlier" in err and "binarize: done earlier" in err and "fairseq_cli.preprocess" not in err
    assert (theirs / "dict.txt").stat().st_mtime_ns == before


# -------------------------------------------------------------------------- smoke


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("wt103_smoke")
    env = {**os.environ, "FWP_USE_CURRENT_ENV": "1", "FWP_PYTHON": PY, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "recipes" / "wikitext103" / "smoke.sh"), "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"out": out, "stdout": r.stdout, "stderr": r.stderr}


def test_smoke_end_to_end(smoke):
    results = {}
    for m in re.finditer(r"^RESULT run=(\S+) mode=(\S+) split=(\S+) ppl=(\S+) tokens=(\d+) vocab=(\d+)$",
                         smoke["stdout"], re.M):
        run, mode, split, ppl, ntok, vocab = m.groups()
        results[(run, mode, split)] = (float(ppl), int(ntok), int(vocab))
    runs = {"tiny-transformer": ("sliding",), "tiny-delta": ("sliding", "full"), "tiny-delta-carry": ("sliding", "full")}
    assert set(results) == {(r, m, s) for r, modes in runs.items() for m in modes for s in ("valid", "test")}
    for key, (ppl, ntok, vocab) in results.items():
        # finite and far below the uniform distribution over the vocabulary
        assert math.isfinite(ppl) and 1.0 < ppl < vocab / 2, (key, ppl, vocab)
        assert ntok > 1000
    # every token of a split is scored in both modes
    assert results[("tiny-delta", "sliding", "valid")][1] == results[("tiny-delta", "full", "valid")][1]
    table = (smoke["out"] / "results.md").read_text()
    for run in runs:
        assert re.search(rf"^\| {run} \| tiny \|", table, re.M), table
    delta_row = next(l for l in table.splitlines() if l.startswith("| tiny-delta |"))
    assert "| 0.0005 |" in delta_row  # state size 2 layers x 4 heads x d_dot 8 x d_head 8 = 512
    assert "SMOKE done" in smoke["stdout"]
    # the training runs finished and left their done markers
    for run in runs:
        assert (smoke["out"] / "checkpoints" / run / ".steps" / "train").is_file()
        assert (smoke["out"] / "checkpoints" / run / "checkpoint_best.pt").is_file()
    assert "--fwp-carry-state" in (smoke["out"] / "checkpoints" / "tiny-delta-carry" / "train.log").read_text()


def test_train_rerun_and_resume(smoke, capsys):
    """The same command after training finished does nothing; a longer schedule (or a
    kill) continues from checkpoint_last.pt instead of starting over."""
    out = smoke["out"]
    os.environ["FWP_NUM_GPUS"] = "0"
    try:
        assert wt.train(["tiny", "delta", "--workdir", str(out)]) == 0
        assert "training finished earlier" in capsys.readouterr().err
        assert wt.train(["tiny", "delta", "--workdir", str(out), "--max-update", "320"]) == 0
    finally:
        del os.environ["FWP_NUM_GPUS"]
    captured = capsys.readouterr()
    assert "resuming from" in captured.err
    log = captured.out
    assert "Loaded checkpoint" in log and "@ 300 updates" in log
    assert wt.model_stats(out / "checkpoints" / "tiny-delta" / "checkpoint_last.pt")["num_updates"] == 320


_LM_HUB = r"""
import sys
import torch
out, kind, user_dir = sys.argv[1:4]
kw = dict(checkpoint_file="checkpoint_best.pt", data_name_or_path=out + "/data-bin")
if kind == "fwp":
    from fairseq_fwp.models.fwp_lm import FwpLanguageModel as M
    kw["user_dir"] = user_dir
else:  # fairseq's own class, no plugin imported
    from fairseq.models.transformer_lm import TransformerLanguageModel as M
lm = M.from_pretrained(out + "/checkpoints/tiny-delta", **kw)
for line in lm.sample(["the cat", "a dog sees"], beam=1, max_len_b=20):
    print("GREEDY\t" + line)
torch.manual_seed(1)
print("SAMPLE\t" + lm.sample("the cat", sampling=True, sampling_topk=10, beam=1, max_len_b=20))
"""


def test_raw_text_generation(smoke):
    """The README's commands for text from a trained LM: fairseq-interactive (greedy and
    sampling) and FwpLanguageModel.from_pretrained(..., user_dir=...).sample(...), which
    agree on the greedy continuation; fairseq's own class without user_dir does not know
    the checkpoint's task (fairseq never imports the user dir a checkpoint names)."""
    out = smoke["out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    interactive = [str(Path(PY).with_name("fairseq-interactive")), str(out / "data-bin"), "--user-dir", common.USER_DIR,
                   "--task", "fwp_language_modeling", "--path", str(out / "checkpoints" / "tiny-delta" / "checkpoint_best.pt"),
                   "--beam", "1", "--max-len-b", "20", "--cpu"]
    outputs = {}
    for name, extra in (("greedy", []), ("sample", ["--sampling", "--sampling-topk", "10", "--seed", "1"])):
        r = subprocess.run(interactive + extra, input="the cat\na dog sees\n", capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        outputs[name] = [x.split("\t")[2] for x in r.stdout.splitlines() if x.startswith("D-")]
    assert len(outputs["sample"]) == 2 and all(x.startswith("the cat ") for x in outputs["sample"][:1])
    assert all(len(x.split()) > 10 for x in outputs["greedy"] + outputs["sample"])
    r = subprocess.run([PY, "-c", _LM_HUB, str(out), "fwp", common.USER_DIR], capture_output=True, text=True,
                       env=env, cwd="/", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    hub = [x.split("\t", 1)[1] for x in r.stdout.splitlines() if x.startswith("GREEDY\t")]
    assert hub == outputs["greedy"]
    sample = [x.split("\t", 1)[1] for x in r.stdout.splitlines() if x.startswith("SAMPLE\t")]
    assert len(sample) == 1 and sample[0].startswith("the cat ") and len(sample[0].split()) > 10
    r = subprocess.run([PY, "-c", _LM_HUB, str(out), "stock", common.USER_DIR], capture_output=True, text=True,
                       env=env, cwd="/", timeout=300)
    assert r.returncode != 0 and "Could not infer task type" in r.stderr and "fwp_language_modeling" in r.stderr
