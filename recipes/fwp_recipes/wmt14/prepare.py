"""``prepare``: archives -> tokenised, cleaned, BPE'd text -> ``fairseq-preprocess --joined-dictionary``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, Sequence

from .. import common
from ..common import RecipeError
from .archives import ARCHIVES, CORPORA, _archive_key, count_lines, extract, fetch_archives
from .paper import BPE_SIZE, CLEAN_MAX, CLEAN_MIN, CLEAN_RATIO, DEFAULT_DATA, EXPECTED_SEGMENTS, SRC, TGT
from .text import _read_lines, apply_bpe, build_eval_sets, clean_pair, learn_bpe, tokenize_lines

# -------------------------------------------------------------------------- prepare
BIN_FILES = [f"dict.{SRC}.txt", f"dict.{TGT}.txt"] + [
    f"{split}.{SRC}-{TGT}.{lang}.{ext}" for split in ("train", "valid", "test") for lang in (SRC, TGT)
    for ext in ("bin", "idx")]


def check_prepared(data: Path) -> None:
    """RecipeError unless ``data`` is a directory that ``prepare`` finished."""
    missing = [f for f in BIN_FILES if not (data / "bin" / f).is_file()]
    missing += [f for f in ("prepare.json", f"ref/valid.{TGT}", f"ref/test.{TGT}", f"ref/valid.tok.{TGT}",
                            f"ref/test.tok.{TGT}") if not (data / f).is_file()]
    if missing:
        raise RecipeError(
            f"{data} is not a prepared WMT14 En-De data directory (missing {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}); run recipes/wmt14_en_de/prepare.sh --data {data} first")


def _workers_default() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def prepare(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="prepare.sh", description="Download and preprocess WMT14 En-De.",
                                allow_abbrev=False)
    p.add_argument("--raw", type=Path, help="folder with the already downloaded archives (no network)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"output folder [{DEFAULT_DATA}]")
    p.add_argument("--workers", type=int, default=_workers_default(), help="processes for tokenisation/BPE")
    p.add_argument("--bpe-size", type=int, default=BPE_SIZE, help=f"joined BPE vocabulary [{BPE_SIZE}]")
    p.add_argument("--bpe-sample", type=int, default=5_000_000,
                   help="sentences (of both languages) sampled to learn the BPE [5000000]")
    p.add_argument("--expect", default=f"{EXPECTED_SEGMENTS['valid']},{EXPECTED_SEGMENTS['test']}",
                   help="VALID,TEST: segments expected in newstest2013 / newstest2014 [3000,3003]")
    a = common.parse_args(p, argv)
    try:
        expect = dict(zip(("valid", "test"), (int(x) for x in a.expect.split(","))))
        assert len(expect) == 2
    except (ValueError, AssertionError):
        raise RecipeError(f"--expect {a.expect!r}: expected two integers VALID,TEST (e.g. 3000,3003)")
    data = a.data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    steps = common.Steps(data)
    t0 = time.time()
    summary: Dict[str, object] = {"settings": {"bpe_size": a.bpe_size, "bpe_sample": a.bpe_sample,
                                               "clean": [CLEAN_MIN, CLEAN_MAX, CLEAN_RATIO]}}
    if (data / "prepare.json").is_file():
        summary = json.loads((data / "prepare.json").read_text())

    archives = fetch_archives(data, a.raw.resolve() if a.raw else None, steps)
    files = extract(archives, data, steps)
    archive_key = common.key_of(*(_archive_key(archives[x.file]) for x in ARCHIVES))

    # 1. training corpora: line-aligned per corpus, then normalise + tokenise
    tok = data / "tok"
    key = common.key_of(archive_key, "tok-v1")
    outs = [tok / f"train.{lang}" for lang in (SRC, TGT)]
    if not steps.done("tokenize-train", key, outs):
        counts = {}
        for c in CORPORA:
            n = {lang: count_lines(files[f"{c}.{lang}"]) for lang in (SRC, TGT)}
            if n[SRC] != n[TGT]:
                raise RecipeError(f"{c}: {files[c + '.' + SRC]} has {n[SRC]} lines but "
                                  f"{files[c + '.' + TGT]} has {n[TGT]}; the archive is damaged")
            counts[c] = n[SRC]
        for lang in (SRC, TGT):
            common.log("wmt14", f"normalising and tokenising the {lang} training text "
                                f"({sum(counts.values())} lines)")
            tokenize_lines(_read_lines([files[f"{c}.{lang}"] for c in CORPORA]), lang, tok / f"train.{lang}", a.workers)
        summary["train_raw"] = counts
        steps.mark("tokenize-train", key, outs)

    # 2. newstest2013 / newstest2014 from SGML: raw references (sacreBLEU) and the
    # tokenised text, built as fairseq's script builds its test set (’ -> ', tokenizer -a)
    ref = data / "ref"
    ekey = common.key_of(archive_key, "eval-v2-fairseq-test-protocol")
    outs = [d / f"{split}{t}.{lang}" for split in ("valid", "test") for lang in (SRC, TGT)
            for d, t in ((ref, ""), (ref, ".tok"), (tok, ""))]
    if not steps.done("eval-sets", ekey, outs):
        build_eval_sets(files, ref, tok, expect)
        summary["segments"] = {s: count_lines(ref / f"{s}.{TGT}") for s in ("valid", "test")}
        steps.mark("eval-sets", ekey, outs)

    # 3. clean the training pairs (clean-corpus-n: 1-250 tokens, ratio 1.5)
    ckey = common.key_of(key, CLEAN_MIN, CLEAN_MAX, CLEAN_RATIO)
    outs = [tok / f"train.clean.{lang}" for lang in (SRC, TGT)]
    if not steps.done("clean", ckey, outs):
        kept = dropped = 0
        parts = {lang: open(tok / f"train.clean.{lang}.part", "w", encoding="utf-8") for lang in (SRC, TGT)}
        with open(tok / f"train.{SRC}", encoding="utf-8", newline="\n") as fs, \
                open(tok / f"train.{TGT}", encoding="utf-8", newline="\n") as ft:
            for s, t in zip(fs, ft):
                if clean_pair(s, t):
                    parts[SRC].write(s)
                    parts[TGT].write(t)
                    kept += 1
                else:
                    dropped += 1
        for lang, f in parts.items():
            f.close()
            (tok / f"train.clean.{lang}.part").replace(tok / f"train.clean.{lang}")
        summary["train_clean"] = {"kept": kept, "dropped": dropped}
        common.log("wmt14", f"cleaning kept {kept} of {kept + dropped} training pairs")
        steps.mark("clean", ckey, outs)

    # 4. joined BPE, learnt on the cleaned training text of both languages, applied to all splits
    spm_prefix = data / "bpe" / "spm"
    bkey = common.key_of(ckey, a.bpe_size, a.bpe_sample)
    outs = [spm_prefix.with_suffix(".model"), spm_prefix.with_suffix(".vocab")]
    if not steps.done("learn-bpe", bkey, outs):
        common.log("wmt14", f"learning a joined {a.bpe_size} BPE (sentencepiece)")
        learn_bpe([tok / f"train.clean.{SRC}", tok / f"train.clean.{TGT}"], spm_prefix, a.bpe_size,
                  a.bpe_sample, a.workers)
        steps.mark("learn-bpe", bkey, outs)
    akey = common.key_of(bkey, ekey, "apply")
    outs = [data / "bpe" / f"{split}.{lang}" for split in ("train", "valid", "test") for lang in (SRC, TGT)]
    if not steps.done("apply-bpe", akey, outs):
        for split, name in (("train", "train.clean"), ("valid", "valid"), ("test", "test")):
            for lang in (SRC, TGT):
                apply_bpe(spm_prefix.with_suffix(".model"), tok / f"{name}.{lang}", data / "bpe" / f"{split}.{lang}",
                          a.workers)
        steps.mark("apply-bpe", akey, outs)

    # 5. binarise with one joined dictionary (--share-all-embeddings)
    pkey = common.key_of(akey, "preprocess")
    outs = [data / "bin" / f for f in BIN_FILES]
    if not steps.done("binarise", pkey, outs):
        if (data / "bin").exists():
            shutil.rmtree(data / "bin")
        common.run(common.fairseq_cmd(
            "preprocess", "--source-lang", SRC, "--target-lang", TGT, "--joined-dictionary",
            "--trainpref", data / "bpe/train", "--validpref", data / "bpe/valid", "--testpref", data / "bpe/test",
            "--destdir", data / "bin", "--workers", a.workers), log=data / "preprocess.log")
        steps.mark("binarise", pkey, outs)

    import sacremoses
    import sentencepiece

    summary.update({
        "bin": str(data / "bin"), "dictionary_size": count_lines(data / "bin" / f"dict.{SRC}.txt"),
        "tokeniser": f"sacremoses {getattr(sacremoses, '__version__', '?')}: train normalize + remove "
                     f"non-printing + tokenize -a; valid/test only ’->' + tokenize -a (fairseq's "
                     f"prepare-wmt14en2de.sh); escape on",
        "bpe": f"sentencepiece {sentencepiece.__version__} bpe {a.bpe_size} joined",
    })
    (data / "prepare.json").write_text(json.dumps(summary, indent=1) + "\n")
    common.log("wmt14", f"data ready in {data / 'bin'} ({time.time() - t0:.0f}s): {json.dumps(summary)}")
    return 0
