"""Evaluation protocol and launcher arithmetic of the recipes (issue 17, items 1, 2, 4, 10, 11, 14).

* WMT14 valid/test text is built as fairseq's ``examples/translation/prepare-wmt14en2de.sh``
  builds newstest2014: the ``<seg>`` text, ’ replaced by ', ``tokenizer.perl -a`` -- no
  punctuation normalisation, no removal of non-printing characters (training text keeps both).
* The two compound-splitting conventions of the "t2t" and "fairseq" BLEU columns, checked
  against perl running the protocol's own one-liner.
* ``--distributed-world-size`` always equals the process count ``--update-freq`` was computed
  for, checked with fairseq's own parser on a machine that shows 8 GPUs.
* ``train.sh --dry-run`` prints the command before the data exists.
* ``--carry`` keeps the paper's streams in one update and refuses what cannot hold them;
  resuming a carried run with another stream layout is refused.
* Step markers are trusted only while their outputs exist (both recipes, one mechanism).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

from fwp_recipes import common, wikitext103 as wt, wmt14  # noqa: E402
from fwp_recipes.common import RecipeError  # noqa: E402

LAUNCH = str(ROOT / "recipes" / "launch.py")


# ------------------------------------------------------------- item 1: test-set text
SGM_REF = """<refset setid="newstest2014" srclang="any" trglang="de">
<doc sysid="ref" docid="1" genre="news" origlang="en">
<seg id="1">  „Das ist’s“, sagte er – und ging…  </seg>
<seg id="2">»Die E-Mail-Adresse«   lautet x@y.de;\u00a0das G8-Gipfel-Treffen endete 3-0.</seg>
<seg id="3">Soft\u00adhyphen und Zero\u200bwidth bleiben , „ok“ ?</seg>
<seg id="4">Fish &amp; chips &lt;b&gt; kosten 3,50 €.</seg>
</doc>
</refset>
"""


def _fairseq_test_pipeline(sgm: str, lang: str) -> list:
    """prepare-wmt14en2de.sh on a test .sgm, step by step: grep '<seg id', the two sed
    expressions that strip the tags with the whitespace next to them, sed s/’/'/g, then
    tokenizer.perl -a -l LANG (sacremoses, the Moses port: escaping on, as perl's default)."""
    import re

    from sacremoses import MosesTokenizer

    tok = MosesTokenizer(lang)
    out = []
    for line in sgm.splitlines():
        if "<seg id" not in line:
            continue
        line = re.sub(r'<seg id="[0-9]*">\s*', "", line)
        line = re.sub(r"\s*</seg>\s*", "", line)
        line = line.replace("\u2019", "'")
        out.append(tok.tokenize(line, aggressive_dash_splits=True, return_str=True, escape=True))
    return out


SGM_SRC = """<srcset setid="newstest2014" srclang="any">
<doc docid="1" genre="news" origlang="en">
<seg id="1">"That’s it," he said – and left…</seg>
<seg id="2">The e-mail address is x@y.de; the G8 summit ended 3-0.</seg>
<seg id="3">Soft\u00adhyphen and zero\u200bwidth stay, “ok”?</seg>
<seg id="4">Fish &amp; chips cost £3.50.</seg>
</doc>
</srcset>
"""


def test_test_set_is_tokenised_as_fairseqs_prepare_script(tmp_path):
    files = {}
    for split in ("valid", "test"):
        for lang, sgm in (("en", SGM_SRC), ("de", SGM_REF)):
            files[f"{split}.{lang}"] = tmp_path / f"{split}.{lang}.sgm"
            files[f"{split}.{lang}"].write_text(sgm, encoding="utf-8")
    wmt14.build_eval_sets(files, tmp_path / "ref", tmp_path / "tok", {"valid": 4, "test": 4})
    for split in ("valid", "test"):
        for lang, sgm in (("en", SGM_SRC), ("de", SGM_REF)):
            tok = (tmp_path / "tok" / f"{split}.{lang}").read_text(encoding="utf-8")
            assert tok.splitlines() == _fairseq_test_pipeline(sgm, lang), (split, lang)
            assert (tmp_path / "ref" / f"{split}.tok.{lang}").read_text(encoding="utf-8") == tok
    ours = (tmp_path / "ref" / "test.tok.de").read_text(encoding="utf-8").splitlines()
    # what the punctuation normaliser / non-printing removal would have changed is kept
    text = "\n".join(ours)
    for kept in ("„", "“", "»", "«", "–", "…", "\u00ad", "\u200b"):
        assert kept in text, kept
    assert "\u2019" not in text and "ist &apos; s" in ours[0]  # ’ -> ' (then Moses' splitting and escaping)
    assert "E @-@ Mail @-@ Adresse" in ours[1] and "G8 @-@ Gipfel" in ours[1] and "3 @-@ 0" in ours[1]
    assert "Fish &amp; amp ; chips" in ours[3]  # the .sgm's entity is text (as for sacreBLEU and fairseq)
    # the raw references (sacreBLEU's) are the segments as sacreBLEU reads them
    assert (tmp_path / "ref" / "test.de").read_text(encoding="utf-8").splitlines()[0] == "„Das ist’s“, sagte er – und ging…"
    assert "“ ok ” ?" in (tmp_path / "tok" / "test.en").read_text(encoding="utf-8")  # the source too
    with pytest.raises(RecipeError, match=r"test.en.sgm: 4 segments, expected 3003"):
        wmt14.build_eval_sets(files, tmp_path / "ref", tmp_path / "tok", {"valid": 4, "test": 3003})


def test_training_text_keeps_normalisation():
    line = "„Das ist’s“, sagte er – und ging…\u00ad"
    train = wmt14.moses_tokenize(line, "de")
    test = wmt14.moses_tokenize(line, "de", normalise=False)
    assert "„" not in train and "\u00ad" not in train  # normalize-punctuation + remove-non-printing
    assert "„" in test and "\u00ad" in test


# --------------------------------------------------------- item 14: compound splitting
SPLIT_CASES = [  # Moses -a output (as in ref/test.tok.de) -> (t2t column, fairseq column)
    ("Bayern gewann 3 @-@ 0 .", "Bayern gewann 3 ##AT##-##AT## 0 .", "Bayern gewann 3 @ ##AT##-##AT## @ 0 ."),
    ("der G8 @-@ Gipfel", "der G8 ##AT##-##AT## Gipfel", "der G8 @ ##AT##-##AT## @ Gipfel"),
    ("meine E @-@ Mail @-@ Adresse", "meine E ##AT##-##AT## Mail ##AT##-##AT## Adresse",
     "meine E @ ##AT##-##AT## @ Mail @ ##AT##-##AT## @ Adresse"),
    ("1 @-@ 2 @-@ 3", "1 ##AT##-##AT## 2-3", "1 @ ##AT##-##AT## @ 2 @ ##AT##-##AT## @ 3"),  # perl's s///g
    ("US-Präsident Obama - heute", "US ##AT##-##AT## Präsident Obama - heute",
     "US ##AT##-##AT## Präsident Obama - heute"),  # a hyphen -a did not split; a lone dash stays
    ("Café @-@ Liebhaber @-@ Treffen", "Café ##AT##-##AT## Liebhaber ##AT##-##AT## Treffen",
     "Café @ ##AT##-##AT## @ Liebhaber @ ##AT##-##AT## @ Treffen"),
]


@pytest.mark.parametrize("tok, t2t, fairseq", SPLIT_CASES)
def test_compound_split_conventions(tok, t2t, fairseq):
    assert wmt14.compound_split_t2t(tok) == t2t
    assert wmt14.compound_split(tok) == fairseq


@pytest.mark.skipif(shutil.which("perl") is None, reason="needs perl")
def test_compound_split_equals_the_perl_one_liner():
    """The protocol is a perl one-liner (tensor2tensor get_ende_bleu.sh, fairseq
    compound_split_bleu.sh): run it on the same lines, on -a text and on @-@ joined text."""
    lines = [c[0] for c in SPLIT_CASES] + [wmt14.moses_tokenize(x, "de", normalise=False) for x in (
        "Die E-Mail-Adresse des G8-Gipfels: 3-0, 1-2-3, x--y, -a- b-", "Nord-Süd-Dialog à-la-carte")]
    joined = [x.replace(" @-@ ", "-") for x in lines]
    perl = subprocess.run(["perl", "-CSD", "-ple", r"s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g"],
                          input="\n".join(lines + joined) + "\n", capture_output=True, text=True, check=True)
    want = perl.stdout.splitlines()
    assert [wmt14.compound_split(x) for x in lines] == want[:len(lines)]
    assert [wmt14.compound_split_t2t(x) for x in lines] == want[len(lines):]


def test_bleu_columns():
    refs = ["Die E @-@ Mail @-@ Adresse lautet x .", "Bayern gewann 3 @-@ 0 ."]
    hyps = ["Die E @-@ Mail @-@ Adresse ist x .", "Bayern gewann 3 @-@ 0 ."]
    s = wmt14.bleu_scores(hyps, refs, ["Die E-Mail-Adresse lautet x.", "Bayern gewann 3-0."], targets=refs)
    from sacrebleu.metrics import BLEU

    bleu = lambda h, r: round(BLEU(tokenize="none", force=True).corpus_score(h, [r]).score, 2)  # noqa: E731
    assert s["tok_bleu_t2t"] == bleu([wmt14.compound_split_t2t(h) for h in hyps], [wmt14.compound_split_t2t(r) for r in refs])
    assert s["tok_bleu_fairseq"] == bleu([wmt14.compound_split(h) for h in hyps], [wmt14.compound_split(r) for r in refs])
    assert s["tok_bleu_t2t"] != s["tok_bleu_fairseq"]  # the conventions differ: two columns
    assert s["detok"] == ["Die E-Mail-Adresse ist x.", "Bayern gewann 3-0."]


# ------------------------------------------------ item 2: world size = update-freq's
_PARSE = r"""
import json, os, sys
from pathlib import Path
import torch
torch.cuda.device_count = lambda: 8          # a machine that shows 8 GPUs
torch.cuda.is_available = lambda: True
sys.path.insert(0, sys.argv[1])
from fwp_recipes import common, wikitext103 as wt, wmt14
from fairseq import options
out = {}
w = common.world_size()
for name, cmd in (
    ("wmt14", wmt14.train_command("dpfp-256", Path("/d"), Path("/ck"), precision="fp16")),
    ("wt103", wt.train_command(wt.parse_setting(["medium", "delta"]), Path("/d"), Path("/ck"), workers=w,
                               precision="fp16")[0]),
    ("wt103-carry", wt.train_command(wt.parse_setting(["medium", "delta", "--carry"]), Path("/d"), Path("/ck"),
                                     workers=w, precision="fp16", max_per_gpu=56)[0]),
):
    args = options.parse_args_and_arch(options.get_training_parser(), cmd[3:])
    out[name] = {"world": args.distributed_world_size, "update_freq": args.update_freq[0],
                 "max_tokens": args.max_tokens, "batch_size": args.batch_size}
print(json.dumps(out))
"""


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_world_size_is_the_one_update_freq_was_computed_for(gpus):
    """fairseq's parser defaults --distributed-world-size to every visible GPU; the
    recipes' commands must override that with the process count they computed for."""
    env = {**os.environ, "FWP_NUM_GPUS": str(gpus)}
    for k in ("WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_ID", "RANK"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, "-c", _PARSE, str(ROOT / "recipes")], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    for name in got:
        assert got[name]["world"] == gpus, (name, got[name])
    w = got["wmt14"]
    assert w["world"] * w["max_tokens"] * w["update_freq"] == 3 * 3584 * 16  # the paper's tokens per update
    for name in ("wt103", "wt103-carry"):
        assert got[name]["world"] * got[name]["batch_size"] * got[name]["update_freq"] == 56
    assert got["wt103-carry"]["update_freq"] == 1


# ------------------------------------------------------- item 4: dry run without data
@pytest.mark.parametrize("recipe, args", [("wmt14", ["dpfp-256", "--data"]),
                                          ("wikitext103", ["medium", "delta", "--workdir"])])
def test_dry_run_prints_the_command_without_data(recipe, args, tmp_path):
    env = {**os.environ, "FWP_NUM_GPUS": "2"}
    p = subprocess.run([sys.executable, LAUNCH, recipe, "train", *args, str(tmp_path / "none"), "--dry-run"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "fairseq_cli.train" in p.stdout and "--distributed-world-size 2" in p.stdout
    assert "note: the data is missing" in p.stderr and "prepare.sh" in p.stderr
    assert "tokens per update" in p.stderr  # the arithmetic to check before downloading


# ----------------------------------------------------------------- item 10: --carry
@pytest.mark.parametrize("gpus", [1, 2, 4, 7, 8, 14])
def test_carry_keeps_the_papers_streams(gpus):
    s = wt.parse_setting(["medium", "delta", "--carry"])
    per, freq = wt.carry_streams(s, gpus, max_per_gpu=56)
    assert per * gpus == 56 and freq == 1  # 56 streams, one segment each per update


def test_carry_refuses_what_cannot_hold_the_streams():
    s = wt.parse_setting(["medium", "delta", "--carry"])
    with pytest.raises(RecipeError, match=r"1 process\(es\) must hold 56 sequences of 384 tokens.*above --max-per-gpu "
                                          r"28.*use 2, 4, 7, 8, 14, 28, 56 processes, or --max-per-gpu 56"):
        wt.carry_streams(s, 1, 28)
    with pytest.raises(RecipeError, match=r"3 processes cannot share evenly; process counts that can: 2, 4, 7"):
        wt.carry_streams(s, 3, 28)
    with pytest.raises(RecipeError, match=r"--update-freq 2 with --carry"):
        wt.carry_streams(s, 2, 28, ["--update-freq", "2"])
    with pytest.raises(RecipeError, match=r"--update-freq 4 with --carry"):
        wt.train_command(s, Path("/d"), Path("/ck"), workers=2, precision="bf16", extra=["--update-freq=4"])
    small = wt.parse_setting(["small", "delta", "--carry"])
    assert wt.carry_streams(small, 2, 48) == (48, 1)  # 96 streams
    # without --carry the batch may still be split into accumulation steps
    assert common.split_batch(56, 1, 28) == (28, 2)


def _fake_checkpoint(path: Path, batch_size: int, world: int, L: int = 384) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": {"dataset": {"batch_size": batch_size}, "distributed_training": {"distributed_world_size": world},
                        "task": {"tokens_per_sample": L}}, "model": {}}, path)


def test_resuming_a_carried_run_with_another_layout_is_refused(tmp_path, monkeypatch):
    work = tmp_path / "w"
    (work / "data-bin").mkdir(parents=True)
    (work / "data-bin" / "dict.txt").write_text("a 1\n")
    save = work / "checkpoints" / "medium-delta-carry"
    _fake_checkpoint(save / "checkpoint_last.pt", batch_size=28, world=2)  # trained on 2 GPUs
    ran = []
    monkeypatch.setattr(common, "run", lambda cmd, **kw: ran.append(cmd) or "")
    monkeypatch.setenv("FWP_NUM_GPUS", "1")
    with pytest.raises(RecipeError, match=r"checkpoint_last.pt was trained with --carry over --batch-size 28 x world "
                                          r"size 2 = 56 streams.*this command has --batch-size 56 x world size 1.*"
                                          r"FWP_NUM_GPUS=2.*--fresh"):
        wt.train(["medium", "delta", "--carry", "--workdir", str(work), "--max-per-gpu", "56"])
    assert not ran
    monkeypatch.setenv("FWP_NUM_GPUS", "2")  # the same layout resumes
    assert wt.train(["medium", "delta", "--carry", "--workdir", str(work)]) == 0 and len(ran) == 1
    # a run without --carry has no stream layout to keep
    _fake_checkpoint(work / "checkpoints" / "medium-delta" / "checkpoint_last.pt", batch_size=28, world=2)
    monkeypatch.setenv("FWP_NUM_GPUS", "4")
    assert wt.train(["medium", "delta", "--workdir", str(work)]) == 0 and len(ran) == 2


# -------------------------------------------------------------- item 11: step markers
def _loose_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in wt.SPLITS:
        (folder / wt.TOKEN_FILES[split]).write_text(" = A = \n" + " the cat sat on the mat . \n" * 20)
    return folder


def test_wikitext_prepare_redoes_a_step_whose_outputs_are_gone(tmp_path, capsys):
    raw, work = _loose_files(tmp_path / "raw"), tmp_path / "w"
    assert wt.prepare(["--raw", str(raw), "--workdir", str(work), "--workers", "1"]) == 0
    train_bin = work / "data-bin" / "train.bin"
    before = train_bin.read_bytes()
    capsys.readouterr()
    train_bin.unlink()
    assert wt.prepare(["--raw", str(raw), "--workdir", str(work), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "binarize: done earlier" not in err and "fairseq_cli.preprocess" in err
    assert train_bin.read_bytes() == before
    assert wt.prepare(["--raw", str(raw), "--workdir", str(work), "--workers", "1"]) == 0
    assert "binarize: done earlier" in capsys.readouterr().err


def test_steps_trust_markers_only_with_their_outputs(tmp_path):
    steps = common.Steps(tmp_path)
    out = tmp_path / "out.txt"
    out.write_text("abc")
    steps.mark("x", "k", [out])
    assert steps.done("x", "k", [out])
    assert not steps.done("x", "k2", [out])  # inputs changed
    assert not steps.done("x", "k", [out, tmp_path / "other"])  # another set of outputs
    out.write_text("ab")
    assert not steps.done("x", "k", [out])  # cut short
    out.unlink()
    assert not steps.done("x", "k", [out])  # deleted
    (tmp_path / ".steps" / "y").write_text("k")  # a marker of the old layout (the key only) ...
    other = tmp_path / "other.txt"
    assert not steps.done("y", "k", [other])  # ... is trusted only while its outputs exist
    other.write_text("x")
    assert steps.done("y", "k", [other]) and not steps.done("y", "k2", [other])
