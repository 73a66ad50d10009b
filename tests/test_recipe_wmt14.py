"""The WMT14 En-De recipe (recipes/wmt14_en_de, recipes/fwp_recipes/wmt14/).

Fast checks of the model table (Table 1 / Table 6), the batch arithmetic, the commands
and the bad-input errors; then one end-to-end run of ``smoke.sh`` (generated archives
with the real names and layout -> prepare -> train two models -> evaluate -> table),
which the prepare checks reuse. No network: everything goes through ``--raw``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
sys.path.insert(0, str(ROOT / "tests"))

from fwp_recipes import common, wmt14  # noqa: E402

LAUNCH = str(ROOT / "recipes" / "launch.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
           FWP_USE_CURRENT_ENV="1", FWP_PYTHON=sys.executable, FWP_NUM_GPUS="0")
SMOKE_MODELS = ("linear", "delta")
SMOKE_BLEU = 40.0  # test BLEU (t2t / fairseq / sacre) after 10 epochs: linear 77.3 / 79.5 / 75.1, delta 59.9 / 64.1 / 56.5


def launch(*args, timeout=120):
    return subprocess.run([sys.executable, LAUNCH, "wmt14", *map(str, args)], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ table and commands
PAPER = {  # Table 1: (valid, test); Table 6: d_dot -> m, nu with d_key = 64
    "transformer": (26.6, 27.7), "linear": (25.5, 26.8), "performer-64": (24.2, 24.4),
    "performer-256": (24.9, 25.3), "performer-512": (26.7, 27.7), "dpfp-256": (26.2, 26.9),
    "dpfp-512": (26.2, 27.1), "delta": (None, None), "dpfp-256-delta": (None, None),
}


def _flag(cmd, name):
    """The value of the LAST occurrence of ``name`` (fairseq's argparse keeps the last)."""
    idx = [i for i, c in enumerate(cmd) if c == name]
    assert idx, f"{name} not in {cmd}"
    return cmd[idx[-1] + 1]


def test_model_table_is_table_1():
    assert list(wmt14.MODELS) == list(PAPER)
    for name, m in wmt14.MODELS.items():
        assert (m.paper_valid, m.paper_test) == PAPER[name], name


@pytest.mark.parametrize("name", list(PAPER))
def test_train_command_per_model(name, monkeypatch, tmp_path):
    monkeypatch.setenv("FWP_NUM_GPUS", "3")
    m = wmt14.MODELS[name]
    cmd = wmt14.train_command(name, tmp_path / "data", tmp_path / "ck", ["--lr", "7e-4"])
    assert _flag(cmd, "--arch") == "fwp_transformer_wmt_en_de_big" and "--share-all-embeddings" in cmd
    assert _flag(cmd, "--max-tokens") == "3584" and _flag(cmd, "--update-freq") == "16"  # the paper's 3 x 16
    assert _flag(cmd, "--max-epoch") == "45" and "--fp16" in cmd and "--cpu" not in cmd
    assert "--eval-bleu" in cmd and _flag(cmd, "--best-checkpoint-metric") == "bleu"
    assert "--maximize-best-checkpoint-metric" in cmd and _flag(cmd, "--eval-bleu-detok") == "moses"
    assert _flag(cmd, "--lr") == "7e-4", "extra flags come last and win"
    assert _flag(cmd, "--save-dir") == str(tmp_path / "ck")
    fm = _flag(cmd, "--fwp-feature-map")
    if name == "transformer":
        assert fm == "softmax"
        return
    assert "--fwp-replace" not in cmd  # all three attentions (the default)
    rule = _flag(cmd, "--fwp-update-rule")
    assert rule == m.rule == ("delta" if name.endswith("delta") else "sum")
    # sum rule = Linear Transformer form (attention normalisation); delta = Delta Net (sum norm)
    assert ("--fwp-attn-norm" in cmd) == (rule == "sum") and ("--fwp-sum-norm" in cmd) == (rule == "delta")
    from fairseq_fwp.modules.feature_maps import build_feature_map

    phi = build_feature_map(fm, wmt14.D_KEY, dpfp_nu=int(cmd[cmd.index("--fwp-dpfp-nu") + 1]) if "--fwp-dpfp-nu" in cmd else 1,
                            favor_features=int(_flag(cmd, "--fwp-favor-features")) if fm == "favor" else 64)
    assert phi.d_dot == m.d_dot == int(re.search(r"(\d+)", name + "-64").group(1))  # Table 6
    expected = {"performer-64": ("favor", 32), "performer-256": ("favor", 128), "performer-512": ("favor", 256),
                "dpfp-256": ("dpfp", 2), "dpfp-512": ("dpfp", 4), "dpfp-256-delta": ("dpfp", 2)}
    if name in expected:
        kind, hp = expected[name]
        assert _flag(cmd, "--fwp-favor-features" if kind == "favor" else "--fwp-dpfp-nu") == str(hp)


def test_cpu_command_has_no_half_precision(monkeypatch, tmp_path):
    monkeypatch.setenv("FWP_NUM_GPUS", "0")
    cmd = wmt14.train_command("delta", tmp_path, tmp_path)
    assert "--cpu" in cmd and "--fp16" not in cmd and _flag(cmd, "--update-freq") == "48"
    monkeypatch.setenv("FWP_NUM_GPUS", "8")
    assert "--bf16" in wmt14.train_command("delta", tmp_path, tmp_path, precision="bf16")


def test_distributed_flags(monkeypatch):
    for k in ("SLURM_JOB_ID", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "FWP_DISTRIBUTED_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert common.distributed_flags(0) == []  # CPU
    assert common.distributed_flags(1) == ["--distributed-world-size", "1"]  # not every visible GPU
    assert common.distributed_flags(8) == ["--distributed-world-size", "8"]  # fairseq spawns 8 processes
    monkeypatch.setenv("SLURM_JOB_ID", "123456")  # srun, one task per GPU
    assert common.distributed_flags(16) == ["--distributed-world-size", "16", "--distributed-port", "13456"]
    for k, v in (("MASTER_ADDR", "n0"), ("MASTER_PORT", "29500"), ("WORLD_SIZE", "16"), ("RANK", "3")):
        monkeypatch.setenv(k, v)  # torchrun inside an allocation: fairseq uses env://
    assert common.distributed_flags(16) == ["--distributed-world-size", "16"]


@pytest.mark.parametrize("gpus,freq", [(1, 48), (2, 24), (3, 16), (4, 12), (8, 6)])
def test_update_freq_keeps_the_papers_tokens_per_update(gpus, freq):
    assert wmt14.update_freq(gpus) == freq
    assert gpus * 3584 * freq == 3 * 16 * 3584


@pytest.mark.parametrize("name", list(PAPER))
def test_every_parameter_gets_a_gradient(name):
    """DDP (pytorch_ddp, find_unused_parameters=False) needs every parameter in the graph."""
    from fairseq import options
    from fairseq_fwp.models.fwp_transformer import FwpTransformerModel
    from types import SimpleNamespace
    from fwp_helpers import make_dict, random_tokens

    d = make_dict(20)
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "/nonexistent", "--task", "translation", "--arch", "fwp_transformer_wmt_en_de_big",
        *wmt14.MODELS[name].flags, "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "32",
        "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"])
    torch.manual_seed(0)
    model = FwpTransformerModel.build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))
    model.train()
    src, tgt = random_tokens(d, 3, 7), random_tokens(d, 3, 5)
    out, _ = model(src, torch.full((3,), 7), tgt)
    out.float().pow(2).mean().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"{name}: parameters outside the graph: {unused}"


# ---------------------------------------------------------------------------- helpers
def test_read_sgm_takes_seg_lines_like_sacrebleu(tmp_path):
    f = tmp_path / "x.sgm"
    f.write_text('<srcset setid="t" srclang="any">\n<doc docid="a" genre="news">\n<p>\n'
                 '<seg id="1">  Fish &amp; chips  cost\t3 €. </seg>\n<seg id=2>R&D <b></seg>\n</p>\n</doc>\n</srcset>\n',
                 encoding="utf-8")
    assert wmt14.read_sgm(f) == ["Fish &amp; chips cost 3 €.", "R&D <b>"]
    f.write_text('<doc docid="a">\n<seg id="1">open but not closed\n</doc>\n')
    with pytest.raises(common.RecipeError, match=r"x.sgm:2: a <seg> line"):
        wmt14.read_sgm(f)


def test_compound_splitting_and_tokenisation():
    tok = wmt14.moses_tokenize("Das Café-Liebhaber-Treffen kostet 3,5 Mio. €.", "de")
    assert "@-@" in tok
    assert wmt14.compound_split_t2t(tok) == "Das Café ##AT##-##AT## Liebhaber ##AT##-##AT## Treffen kostet 3,5 Mio. € ."
    assert wmt14.moses_detokenize(tok, "de") == "Das Café-Liebhaber-Treffen kostet 3,5 Mio. €."


def test_clean_pair_is_clean_corpus_n():
    assert wmt14.clean_pair("a b", "c d e")  # ratio 1.5 is allowed
    assert not wmt14.clean_pair("a b", "c d e f")  # 2.0
    assert not wmt14.clean_pair("", "a") and not wmt14.clean_pair(" ".join("a" * 251), " ".join("b" * 251))


# ------------------------------------------------------------------------- bad input
def test_unknown_model_lists_the_valid_ones(tmp_path):
    for command in ("train", "evaluate"):
        p = launch(command, "performer-128", "--data", tmp_path)
        assert p.returncode == 2, p.stderr
        assert "unknown MODEL 'performer-128'; valid: transformer, linear, performer-64" in p.stderr
        assert "Traceback" not in p.stderr


def test_unprepared_data_dir_is_named(tmp_path):
    (tmp_path / "bin").mkdir()
    p = launch("train", "linear", "--data", tmp_path)
    assert p.returncode == 2
    assert f"{tmp_path} is not a prepared WMT14 En-De data directory" in p.stderr and "prepare.sh" in p.stderr


def test_missing_raw_archive_is_named_with_the_layout(tmp_path):
    wmt14.write_fake_archives(tmp_path / "raw", train_pairs=30, valid=5, test=5)
    (tmp_path / "raw" / "dev.tgz").unlink()
    p = launch("prepare", "--raw", tmp_path / "raw", "--data", tmp_path / "data")
    assert p.returncode == 2, p.stderr
    assert "missing dev.tgz" in p.stderr and "dev/newstest2013-src.en.sgm" in p.stderr
    assert "test-full/newstest2014-deen-ref.de.sgm" in p.stderr and "Traceback" not in p.stderr


def test_raw_archive_without_the_expected_member(tmp_path):
    wmt14.write_fake_archives(tmp_path / "raw", train_pairs=30, valid=5, test=5)
    with tarfile.open(tmp_path / "raw" / "test-full.tgz", "w:gz") as t:  # wrong inner layout
        wmt14.toy._add(t, "newstest2014-deen-src.en.sgm", '<seg id="1">x</seg>\n')
    p = launch("prepare", "--raw", tmp_path / "raw", "--data", tmp_path / "data")
    assert p.returncode == 2
    assert "test-full.tgz: no test-full/newstest2014-deen-src.en.sgm" in p.stderr


def test_truncated_raw_archive(tmp_path):
    wmt14.write_fake_archives(tmp_path / "raw", train_pairs=300, valid=5, test=5)
    f = tmp_path / "raw" / "training-parallel-commoncrawl.tgz"
    f.write_bytes(f.read_bytes()[:-200])
    p = launch("prepare", "--raw", tmp_path / "raw", "--data", tmp_path / "data")
    assert p.returncode == 2 and "training-parallel-commoncrawl.tgz: broken or incomplete archive" in p.stderr


# ------------------------------------------------------------- end to end: smoke.sh
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("wmt14_smoke")
    results = ROOT / "results" / "wmt14.md"
    before = results.read_text() if results.exists() else None
    t0 = time.time()
    p = subprocess.run(["bash", str(ROOT / "recipes/wmt14_en_de/smoke.sh"), "--out", str(out),
                        "--models", ",".join(SMOKE_MODELS), "--epochs", "10"],
                       env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    print(f"smoke.sh took {time.time() - t0:.0f}s")
    after = results.read_text() if results.exists() else None
    assert before == after, "the smoke run must not write the repository's results/wmt14.md"
    return out, p.stdout + p.stderr


def test_smoke_reaches_bleu(smoke):
    out, log = smoke
    for name in SMOKE_MODELS:
        m = re.search(rf"smoke BLEU {name}: test t2t ([0-9.]+) fairseq ([0-9.]+) sacre ([0-9.]+)", log)
        assert m, log[-3000:]
        assert all(float(x) >= SMOKE_BLEU for x in m.groups()), m.group(0)
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| linear ") or line.startswith("| delta ")]
    assert len(rows) == 2
    assert "| linear | Linear | 64 | sum | 25.5 |" in table and "| 26.8 |" in table  # the paper's numbers
    assert "nrefs:1" in table and "tok:13a" in table  # the sacreBLEU signature
    for name in SMOKE_MODELS:
        ck = out / "checkpoints" / name
        assert (ck / "checkpoint_best.pt").is_file() and (ck / "eval" / "test" / "hyp.detok.de").is_file()
        assert "best_bleu" in (ck / "train.log").read_text()  # validation BLEU every epoch


def _bleu_json(out, name):
    import json

    return json.loads((out / "checkpoints" / name / "eval" / "bleu.json").read_text())


def test_sacrebleu_equals_the_sacrebleu_command_line(smoke):
    """The sacre figure is sacreBLEU on the detokenised hypotheses: the sacrebleu CLI on
    hyp.detok.de against the raw references gives the same number and signature."""
    out, _ = smoke
    cli = Path(sys.executable).with_name("sacrebleu")
    for name in SMOKE_MODELS:
        for split in ("valid", "test"):
            hyp = out / "checkpoints" / name / "eval" / split / "hyp.detok.de"
            p = subprocess.run([str(cli), str(out / "data" / "ref" / f"{split}.de"), "-i", str(hyp), "-m", "bleu",
                                "-w", "2", "-f", "text"], capture_output=True, text=True, check=True)
            score = float(re.search(r"BLEU\|\S+ = ([0-9.]+)", p.stdout).group(1))
            ours = _bleu_json(out, name)[split]
            assert ours["sacrebleu"] == score, (name, split, ours["sacrebleu"], p.stdout)
            assert p.stdout.split(" = ")[0].replace("BLEU|", "") in ours["signature"]


@pytest.mark.skipif(shutil.which("perl") is None, reason="needs perl")
def test_fairseq_column_is_compound_split_bleu_sh(smoke, tmp_path):
    """The fairseq figure equals fairseq's scripts/compound_split_bleu.sh run on
    generate-test.txt: H and T lines through the perl one-liner, then fairseq-score."""
    out, _ = smoke
    score = Path(sys.executable).with_name("fairseq-score")
    split = r"s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g"
    for name in SMOKE_MODELS:
        gen = out / "checkpoints" / name / "eval" / "test" / "generate-test.txt"
        lines = gen.read_text(encoding="utf-8").splitlines()
        sys_lines = [x.split("\t")[-1] for x in lines if x.startswith("H")]
        ref_lines = ["\t".join(x.split("\t")[1:]) for x in lines if x.startswith("T")]
        for kind, text in (("sys", sys_lines), ("ref", ref_lines)):
            p = subprocess.run(["perl", "-CSD", "-ple", split], input="\n".join(text) + "\n",
                               capture_output=True, text=True, check=True)
            (tmp_path / kind).write_text(p.stdout, encoding="utf-8")
        p = subprocess.run([str(score), "--sys", str(tmp_path / "sys"), "--ref", str(tmp_path / "ref")],
                           capture_output=True, text=True, check=True)
        bleu = float(re.search(r"BLEU4 = ([0-9.]+),", p.stdout).group(1))
        assert abs(_bleu_json(out, name)["test"]["tok_bleu_fairseq"] - bleu) < 0.006, (name, p.stdout)


_HUB = r"""
import sys
out, kind = sys.argv[1], sys.argv[2]
kw = dict(checkpoint_file="checkpoint_best.pt", data_name_or_path=out + "/data/bin", tokenizer="moses",
          bpe="sentencepiece", sentencepiece_model=out + "/data/bpe/spm.model")
if kind == "fwp":
    from fairseq_fwp.models.fwp_transformer import FwpTransformerModel as M
    kw["user_dir"] = sys.argv[3]
else:  # fairseq's own class, no plugin imported
    from fairseq.models.transformer import TransformerModel as M
    if kind == "stock+user_dir":
        kw["user_dir"] = sys.argv[3]
m = M.from_pretrained(out + "/checkpoints/linear", **kw)
src = open(out + "/data/ref/test.en", encoding="utf-8").read().splitlines()
for line in m.translate(src, beam=4, lenpen=0.6):
    print("OUT\t" + line)
"""


def test_raw_text_translation_matches_evaluate(smoke):
    """The README's raw-text commands: fairseq-interactive with the Moses tokenizer and the
    recipe's SentencePiece model, and from_pretrained(..., user_dir=...).translate(...),
    give exactly evaluate.sh's detokenised hypotheses; without user_dir fairseq's own
    class cannot read the checkpoint (torch's weights-only loading, argparse.Namespace)."""
    out, _ = smoke
    data = out / "data"
    want = (out / "checkpoints" / "linear" / "eval" / "test" / "hyp.detok.de").read_text(encoding="utf-8").splitlines()
    interactive = Path(sys.executable).with_name("fairseq-interactive")
    p = subprocess.run([str(interactive), str(data / "bin"), "-s", "en", "-t", "de", "--user-dir", common.USER_DIR,
                        "--path", str(out / "checkpoints" / "linear" / "checkpoint_best.pt"), "--tokenizer", "moses",
                        "--bpe", "sentencepiece", "--sentencepiece-model", str(data / "bpe" / "spm.model"),
                        "--beam", "4", "--lenpen", "0.6", "--cpu", "--buffer-size", "200", "--max-tokens", "8000"],
                       input=(data / "ref" / "test.en").read_text(encoding="utf-8"), env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = {int(x.split("\t")[0][2:]): x.split("\t")[2] for x in p.stdout.splitlines() if x.startswith("D-")}
    assert [got[i] for i in range(len(want))] == want
    for kind, ok in (("fwp", True), ("stock+user_dir", True), ("stock", False)):
        p = subprocess.run([sys.executable, "-c", _HUB, str(out), kind, common.USER_DIR], env=ENV, cwd="/",
                           capture_output=True, text=True, timeout=300)
        if ok:
            assert p.returncode == 0, (kind, p.stderr[-3000:])
            assert [x.split("\t", 1)[1] for x in p.stdout.splitlines() if x.startswith("OUT\t")] == want, kind
        else:
            assert p.returncode != 0 and "Unsupported global" in p.stderr and "argparse.Namespace" in p.stderr


def test_prepare_from_generated_archives(smoke):
    out, _ = smoke
    data = out / "data"
    counts = {"train": 2003, "dropped": 3, "valid": 100, "test": 103}  # write_fake_archives' defaults
    # SGML: one line per <seg>, the text as in the archive
    with tarfile.open(out / "raw" / "test-full.tgz") as t:
        sgm = t.extractfile("test-full/newstest2014-deen-ref.de.sgm").read().decode()
    segs = re.findall(r"<seg id=\"\d+\">(.*)</seg>", sgm)
    assert (data / "ref" / "test.de").read_text().splitlines() == segs and len(segs) == counts["test"]
    assert wmt14.count_lines(data / "ref" / "valid.en") == counts["valid"]
    for split in ("valid", "test"):  # valid/test tokenised without the training text's normalisation
        for lang in ("en", "de"):
            raw = (data / "ref" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            assert (data / "ref" / f"{split}.tok.{lang}").read_text(encoding="utf-8").splitlines() == \
                [wmt14.moses_tokenize(x, lang, normalise=False) for x in raw]
    # Moses tokenisation (-a: hyphens split), cleaning drops exactly the generated bad pairs
    tok = (data / "tok" / "train.en").read_text().splitlines()
    assert len(tok) == counts["train"] and any("@-@" in line for line in tok)
    assert wmt14.count_lines(data / "tok" / "train.clean.de") == counts["train"] - counts["dropped"]
    # joined BPE, applied to every split; binarised with one dictionary
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(data / "bpe" / "spm.model"))
    assert sp.get_piece_size() == 120
    bpe = (data / "bpe" / "test.de").read_text().splitlines()
    assert len(bpe) == counts["test"] and "\u2581" in bpe[0]
    assert "".join(bpe[0].split()).replace("\u2581", " ").strip() == (data / "tok" / "test.de").read_text().splitlines()[0]
    assert (data / "bin" / "dict.en.txt").read_text() == (data / "bin" / "dict.de.txt").read_text()
    for f in wmt14.BIN_FILES:
        assert (data / "bin" / f).is_file()

    # a rerun finds every step done and redoes nothing
    stamps = {f: f.stat().st_mtime_ns for f in (data / "bin").iterdir()}
    p = launch("prepare", "--raw", out / "raw", "--data", data, "--workers", "1", "--bpe-size", "120",
               "--expect", f"{counts['valid']},{counts['test']}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "fairseq_cli.preprocess" not in p.stderr and "tokenising" not in p.stderr
    assert "extracting" not in p.stderr and "learning" not in p.stderr
    assert stamps == {f: f.stat().st_mtime_ns for f in (data / "bin").iterdir()}
    # a different BPE size is a different key: BPE and binarisation are redone, tokenisation is not
    with pytest.raises(common.RecipeError, match="--bpe-size"):
        wmt14.prepare(["--raw", str(out / "raw"), "--data", str(data), "--workers", "1", "--bpe-size", "100000",
                       "--expect", f"{counts['valid']},{counts['test']}"])


def test_wrong_test_set_size_is_an_error(smoke, tmp_path):
    out, _ = smoke
    p = launch("prepare", "--raw", out / "raw", "--data", tmp_path / "data", "--workers", "1")
    assert p.returncode == 2
    assert "103 segments, expected 3000" in p.stderr or "100 segments, expected 3000" in p.stderr


def test_evaluate_without_checkpoint(smoke, tmp_path):
    out, _ = smoke
    p = launch("evaluate", "transformer", "--data", out / "data", "--save-dir", tmp_path / "none")
    assert p.returncode == 2 and "no checkpoint" in p.stderr and "train.sh transformer" in p.stderr


def test_train_again_continues_from_the_last_checkpoint(smoke):
    """The same command with one more epoch resumes (checkpoint_last.pt), it does not start over."""
    out, _ = smoke
    ck = out / "checkpoints" / "linear"
    p = launch("train", "linear", "--data", out / "data", "--save-dir", ck, *wmt14.SMOKE_ARCH, *wmt14.SMOKE_OPT,
               "--max-epoch", "11", timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    log = p.stdout + p.stderr
    # fairseq names the epoch it continues with: 10 epochs done -> "epoch 11 @ 350 updates"
    assert re.search(r"Loaded checkpoint \S*checkpoint_last\.pt \(epoch 11 @ [1-9]\d* updates\)", log), log[-3000:]
    assert "begin training epoch 11" in log and "begin training epoch 1\n" not in log
    assert "resuming from" in p.stderr


def test_download_verifies_and_falls_back_to_the_next_address(tmp_path, monkeypatch):
    """Without --raw: each archive is downloaded, verified (read through, expected members),
    a broken copy from the first address is rejected and the next address serves it;
    a second run trusts its markers and downloads nothing."""
    import dataclasses
    import functools
    import http.server
    import threading

    good = tmp_path / "srv" / "good"
    wmt14.write_fake_archives(good, train_pairs=30, valid=5, test=5)
    bad = tmp_path / "srv" / "bad"
    bad.mkdir()
    for f in good.iterdir():
        (bad / f.name).write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "srv"))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.setattr(wmt14.archives, "ARCHIVES", tuple(
            dataclasses.replace(a, urls=(f"{base}/bad/{a.file}", f"{base}/good/{a.file}"), md5=None)
            for a in wmt14.ARCHIVES))
        data = tmp_path / "data"
        paths = wmt14.fetch_archives(data, None, common.Steps(data))
        for a in wmt14.archives.ARCHIVES:
            assert paths[a.file].read_bytes() == (good / a.file).read_bytes()
            assert not paths[a.file].with_name(a.file + ".part").exists()
        (good / "dev.tgz").unlink()  # a rerun must not ask the server again
        assert wmt14.fetch_archives(data, None, common.Steps(data)) == paths
    finally:
        server.shutdown()
