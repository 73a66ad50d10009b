"""WMT14 English-German big translation recipe (paper Sec. 6.2, Table 1, Appendix E).

Commands (``recipes/wmt14_en_de/{prepare,train,evaluate,smoke}.sh`` -> ``main``):

* ``prepare [--raw DIR] [--data DIR]``: the archives of fairseq's
  ``prepare-wmt14en2de.sh --icml17`` (Europarl v7, CommonCrawl, News Commentary v9) for
  training, newstest2013 (``dev.tgz``) as validation and the full newstest2014
  (``test-full.tgz``, 3003 sentences) as test. As fairseq's prepare-wmt14en2de.sh: the
  training text through Moses punctuation normalisation, non-printing character removal
  and tokenisation (sacremoses, aggressive hyphen splitting), valid/test only ’ -> ' and
  the tokeniser; clean-corpus-n filters on the training pairs (1-250 tokens, length ratio
  <= 1.5), a joined 32K BPE (sentencepiece, model_type=bpe) and
  ``fairseq-preprocess --joined-dictionary``. Every step leaves a marker, so a rerun
  skips what is finished.
* ``train MODEL [fairseq flags]``: ``fwp_transformer_wmt_en_de_big`` with the paper's
  batch (3 GPUs x 3584 tokens x 16 accumulation steps, on any GPU count), 45 epochs,
  fp16, validation BLEU every epoch, best checkpoint by validation BLEU. The same
  command after a kill resumes from ``checkpoint_last.pt``.
* ``evaluate MODEL``: beam 4, length penalty 0.6 on valid and test; tokenised BLEU with
  compound splitting in two named conventions (tensor2tensor's, fairseq's script taken
  literally) and detokenised sacreBLEU; a row of ``results/wmt14.md``.
* ``smoke``: the three commands end to end on generated archives, tiny models, CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from fairseq_fwp import presets

from . import common
from .common import RecipeError

SRC, TGT = "en", "de"
OUT = common.REPO / "outputs" / "wmt14_en_de"
DEFAULT_DATA = OUT / "data"
DEFAULT_CHECKPOINTS = OUT / "checkpoints"
DEFAULT_RESULTS = common.REPO / "results" / "wmt14.md"

# ---------------------------------------------------------------- the paper's settings
D_KEY = 64  # big model: 1024 / 16 heads (Appendix E: "d_key = 64 in all our translation models")
PAPER_GPUS, PAPER_TOKENS_PER_GPU, PAPER_UPDATE_FREQ = 3, 3584, 16  # Appendix E
PAPER_TOKENS_PER_UPDATE = PAPER_GPUS * PAPER_TOKENS_PER_GPU * PAPER_UPDATE_FREQ  # 172,032
PAPER_EPOCHS = 45
BEAM, LENPEN = 4, 0.6  # scaling_nmt's evaluation (Ott et al. 2018)
BPE_SIZE = 32000  # "32 K byte-pair encoding sub-word units" (Appendix E)
CLEAN_MIN, CLEAN_MAX, CLEAN_RATIO = 1, 250, 1.5  # fairseq's prepare-wmt14en2de.sh (clean-corpus-n)
EXPECTED_SEGMENTS = {"valid": 3000, "test": 3003}  # newstest2013, newstest2014 (full)

# fairseq examples/scaling_nmt (Ott et al. 2018); lr 1e-3 is scaling_nmt's advice for
# big (accumulated) batches -- the paper does not state its learning rate.
TRAIN_FLAGS = [
    "--task", "translation", "--source-lang", SRC, "--target-lang", TGT,
    "--arch", "fwp_transformer_wmt_en_de_big", "--share-all-embeddings",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0",
    "--lr", "0.001", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000", "--warmup-init-lr", "1e-07",
    "--dropout", "0.3", "--weight-decay", "0.0",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--max-tokens", str(PAPER_TOKENS_PER_GPU), "--max-epoch", str(PAPER_EPOCHS),
    # validation BLEU every epoch on detokenised output; keep the best by it; no averaging
    "--eval-bleu", "--eval-bleu-args", json.dumps({"beam": BEAM, "lenpen": LENPEN}),
    "--eval-bleu-detok", "moses", "--eval-bleu-detok-args", json.dumps({"target_lang": TGT}),
    "--eval-bleu-remove-bpe", "sentencepiece",
    "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
    "--no-epoch-checkpoints", "--seed", "1", "--log-format", "simple", "--log-interval", "100",
    # fairseq 0.12.3 drops a last batch smaller than this multiple (default 8): validation
    # would skip up to 7 of the longest newstest2013 sentences
    "--required-batch-size-multiple", "1",
]

@dataclass(frozen=True)
class Model:
    """One row of Table 1 (or one of our two delta-rule rows). The sum-rule rows are the
    Linear Transformer form (``fairseq_fwp.presets``: Eq. 17-19, attention normalisation),
    the delta rows Delta Net (Eq. 20-25 with sum normalisation, Eq. 29)."""

    name: str
    column: str  # Table 1 column: Standard, Linear, Performer, DPFP
    d_dot: int
    rule: str
    flags: Tuple[str, ...]
    paper_valid: Optional[float] = None  # Table 1, BLEU on newstest2013
    paper_test: Optional[float] = None  # Table 1, BLEU on newstest2014


def _performer(d_dot, valid, test):
    m = d_dot // 2  # Table 6: d_dot = 2m
    return Model(f"performer-{d_dot}", "Performer", d_dot, "sum", tuple(presets.flags("favor", "sum", m=m)),
                 valid, test)


def _dpfp(d_dot, rule, valid=None, test=None):
    nu = d_dot // (2 * D_KEY)  # Table 6: d_dot = 2 nu d_key
    suffix = "-delta" if rule == "delta" else ""
    return Model(f"dpfp-{d_dot}{suffix}", "DPFP" if rule == "sum" else "DPFP + delta rule", d_dot, rule,
                 tuple(presets.flags("dpfp", rule, nu=nu)), valid, test)


# Every fast weight model replaces all three attentions (encoder self, decoder self,
# encoder-decoder: --fwp-replace's default), as the Linear Transformer and Performer do.
MODELS: Dict[str, Model] = {m.name: m for m in [
    Model("transformer", "Standard", D_KEY, "softmax", tuple(presets.preset("softmax")), 26.6, 27.7),
    Model("linear", "Linear", D_KEY, "sum", tuple(presets.preset("linear")), 25.5, 26.8),
    _performer(64, 24.2, 24.4),
    _performer(256, 24.9, 25.3),
    _performer(512, 26.7, 27.7),
    _dpfp(256, "sum", 26.2, 26.9),
    _dpfp(512, "sum", 26.2, 27.1),
    # beyond Table 1 (the paper used only the sum rule for translation)
    Model("delta", "Delta Net (linear)", D_KEY, "delta", tuple(presets.preset("delta"))),
    _dpfp(256, "delta"),
]}


def get_model(name: str) -> Model:
    common.check_choice("MODEL", name, MODELS)
    return MODELS[name]


def update_freq(workers: int) -> int:
    """--update-freq giving the paper's 3 x 16 x 3584 tokens per update on ``workers`` GPUs."""
    return common.update_freq_for_tokens(PAPER_TOKENS_PER_UPDATE, workers, PAPER_TOKENS_PER_GPU)


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
            common.test_archive(path)
        except RecipeError as e:
            raise RecipeError(f"{e} (from {archive.urls[0]})") from None
        with common.reading_archive(path), tarfile.open(path) as t:
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
                print(f"[wmt14] verifying {path}", file=sys.stderr, flush=True)
                common.verify_file(path, check=_check_members(a))
                if a.md5 and common._digest(path, "md5") != a.md5:
                    print(f"[wmt14] note: {a.file} is readable and has the expected files, but it is not the "
                          f"official archive (md5 differs from {a.md5}); results will not be comparable",
                          file=sys.stderr)
                steps.mark(f"verify-{a.file}", _archive_key(path), [path])
        else:
            path = data / "orig" / a.file
            if not (path.is_file() and steps.done(f"verify-{a.file}", _archive_key(path), [path])):
                common.download(list(a.urls), path, md5=a.md5, check=_check_members(a))
                steps.mark(f"verify-{a.file}", _archive_key(path), [path])
        paths[a.file] = path
    return paths


def extract_members(archive: Archive, path: Path, dest: Path) -> Dict[str, Path]:
    """Extract the members the recipe reads from one archive into ``dest/<member>``
    (each written as ``.part`` and renamed when complete); {role: path}."""
    targets = {role: dest / member for role, member in archive.members.items()}
    with common.reading_archive(path), tarfile.open(path) as t:
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
            print(f"[wmt14] extracting {', '.join(a.members.values())} from {a.file}", file=sys.stderr, flush=True)
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


# ----------------------------------------------------------- normalise and tokenise
_MOSES: Dict[str, tuple] = {}


def moses_tokenize(line: str, lang: str, normalise: bool = True) -> str:
    """One line through Moses (sacremoses) as fairseq's ``prepare-wmt14en2de.sh`` does.

    Training text (``normalise=True``): normalize-punctuation.perl, remove-non-printing-char.perl
    and tokenizer.perl -a. Valid/test text (``normalise=False``): only ’ replaced by ' and
    tokenizer.perl -a -- that script normalises nothing else in newstest2014 (no
    „“ » « – … rewriting, no removal of non-printing characters), and the tokenised
    references BLEU is scored against must be built the same way.

    Escaping is on (Moses' default: ``&apos;``, ``&quot;``, ...); hyphens inside words
    become ``@-@`` (aggressive splitting, ``-a``)."""
    if lang not in _MOSES:
        from sacremoses import MosesPunctNormalizer, MosesTokenizer

        _MOSES[lang] = (MosesPunctNormalizer(lang, post_remove_control_chars=True), MosesTokenizer(lang))
    norm, tok = _MOSES[lang]
    line = norm.normalize(line.strip()) if normalise else line.strip().replace("\u2019", "'")
    text = tok.tokenize(line, aggressive_dash_splits=True, escape=True, return_str=True)
    return " ".join(text.split())  # no stray line separators (\u2028, \x85) can break the alignment


def moses_detokenize(line: str, lang: str) -> str:
    key = "detok-" + lang
    if key not in _MOSES:
        from sacremoses import MosesDetokenizer

        _MOSES[key] = MosesDetokenizer(lang)
    return _MOSES[key].detokenize(line.split())


def _tokenize_chunk(job):
    (lang, normalise), lines = job
    return [moses_tokenize(line, lang, normalise) for line in lines]


def _chunks(lines: Iterable[str], lang, size: int = 20000) -> Iterator[tuple]:
    buf = []
    for line in lines:
        buf.append(line.rstrip("\n"))
        if len(buf) == size:
            yield lang, buf
            buf = []
    if buf:
        yield lang, buf


def tokenize_lines(lines: Iterable[str], lang: str, out: Path, workers: int, normalise: bool = True) -> int:
    """Tokenise ``lines`` into ``out`` (written as ``out.part``, renamed when complete);
    ``normalise``: training text (see :func:`moses_tokenize`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        if workers <= 1:
            results = map(_tokenize_chunk, _chunks(lines, (lang, normalise)))
            for res in results:
                f.write("".join(r + "\n" for r in res))
                n += len(res)
        else:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(workers) as pool:
                for res in pool.imap(_tokenize_chunk, _chunks(lines, (lang, normalise))):
                    f.write("".join(r + "\n" for r in res))
                    n += len(res)
    tmp.replace(out)
    return n


def _read_lines(paths: Sequence[Path]) -> Iterator[str]:
    for p in paths:
        with open(p, encoding="utf-8", errors="replace", newline="\n") as f:
            yield from f


def build_eval_sets(files: Dict[str, Path], ref: Path, tok: Path, expect: Dict[str, int]) -> None:
    """newstest2013 (valid) and newstest2014 (test) from their .sgm files (``files``:
    ``valid.en``, ``valid.de``, ``test.en``, ``test.de``): ``ref/SPLIT.LANG`` the raw
    segments (what sacreBLEU scores against), ``tok/SPLIT.LANG`` = ``ref/SPLIT.tok.LANG`` the
    text as fairseq's prepare-wmt14en2de.sh builds its test set: ’ -> ' and tokenizer.perl
    -a, without the training text's punctuation normalisation and non-printing removal."""
    for split in ("valid", "test"):
        for lang in (SRC, TGT):
            segs = read_sgm(files[f"{split}.{lang}"])
            if len(segs) != expect[split]:
                raise RecipeError(
                    f"{files[f'{split}.{lang}']}: {len(segs)} segments, expected {expect[split]} "
                    f"({'newstest2013' if split == 'valid' else 'newstest2014, the full test set'}); "
                    f"check the archive (or --expect VALID,TEST for other data)")
            ref.mkdir(parents=True, exist_ok=True)
            (ref / f"{split}.{lang}").write_text("".join(x + "\n" for x in segs), encoding="utf-8")
            tokenize_lines(segs, lang, tok / f"{split}.{lang}", 1, normalise=False)
            shutil.copyfile(tok / f"{split}.{lang}", ref / f"{split}.tok.{lang}")


def clean_pair(src: str, tgt: str, min_len: int = CLEAN_MIN, max_len: int = CLEAN_MAX,
               ratio: float = CLEAN_RATIO) -> bool:
    """clean-corpus-n.perl: keep a pair when both sides have min..max tokens and neither
    side is more than ``ratio`` times longer than the other."""
    ns, nt = len(src.split()), len(tgt.split())
    if not (min_len <= ns <= max_len and min_len <= nt <= max_len):
        return False
    return ns <= ratio * nt and nt <= ratio * ns


# ------------------------------------------------------------------------------ BPE
def learn_bpe(files: Sequence[Path], prefix: Path, vocab_size: int, sample: int, workers: int) -> Path:
    """Joined BPE (sentencepiece, model_type=bpe) on the tokenised training text of both languages.

    identity normalisation (the text is already Moses-normalised: BPE only segments),
    words never merged across spaces (split_by_whitespace), characters covering 99.99%
    of the text (the rest are <unk>, e.g. stray CJK in CommonCrawl)."""
    import sentencepiece as spm

    prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            input=",".join(str(f) for f in files), model_prefix=str(prefix), vocab_size=vocab_size,
            model_type="bpe", character_coverage=0.9999, normalization_rule_name="identity",
            input_sentence_size=sample, shuffle_input_sentence=True, num_threads=max(1, workers),
            bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2,
        )
    except RuntimeError as e:  # e.g. a vocabulary larger than the corpus allows
        raise RecipeError(f"sentencepiece could not learn a {vocab_size} BPE (--bpe-size): {e}")
    return prefix.with_suffix(".model")


def apply_bpe(model: Path, src: Path, out: Path, workers: int) -> int:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    tmp = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(src, encoding="utf-8", newline="\n") as fin, open(tmp, "w", encoding="utf-8") as fout:
        for _, lines in _chunks(fin, ""):
            pieces = sp.encode(lines, out_type=str, num_threads=max(1, workers))
            fout.write("".join(" ".join(p) + "\n" for p in pieces))
            n += len(lines)
    tmp.replace(out)
    return n


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
            print(f"[wmt14] normalising and tokenising the {lang} training text ({sum(counts.values())} lines)",
                  file=sys.stderr, flush=True)
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
        print(f"[wmt14] cleaning kept {kept} of {kept + dropped} training pairs", file=sys.stderr)
        steps.mark("clean", ckey, outs)

    # 4. joined BPE, learnt on the cleaned training text of both languages, applied to all splits
    spm_prefix = data / "bpe" / "spm"
    bkey = common.key_of(ckey, a.bpe_size, a.bpe_sample)
    outs = [spm_prefix.with_suffix(".model"), spm_prefix.with_suffix(".vocab")]
    if not steps.done("learn-bpe", bkey, outs):
        print(f"[wmt14] learning a joined {a.bpe_size} BPE (sentencepiece)", file=sys.stderr, flush=True)
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
    print(f"[wmt14] data ready in {data / 'bin'} ({time.time() - t0:.0f}s): {json.dumps(summary)}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- train
def _paths_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    p.add_argument("model", metavar="MODEL", help="one of: " + ", ".join(MODELS))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"prepared data [{DEFAULT_DATA}]")
    p.add_argument("--save-dir", type=Path, help=f"checkpoints [{DEFAULT_CHECKPOINTS}/MODEL]")
    return p


def save_dir_of(a) -> Path:
    return (a.save_dir or DEFAULT_CHECKPOINTS / a.model).resolve()


def train_command(model: str, data: Path, save_dir: Path, extra: Sequence[str] = (),
                  precision: str = "fp16", workers: Optional[int] = None) -> List[str]:
    """The fairseq-train command of MODEL; ``extra`` comes last, so it overrides any default."""
    m = get_model(model)
    workers = common.world_size() if workers is None else workers
    cmd = common.fairseq_cmd("train", data / "bin", "--user-dir", common.USER_DIR, *TRAIN_FLAGS, *m.flags,
                             "--update-freq", update_freq(workers), "--save-dir", save_dir)
    cmd += common.precision_flags(precision) if workers > 0 else ["--cpu"]
    cmd += distributed_flags(workers)
    cmd += common.tensorboard_flags(save_dir / "tensorboard")
    return cmd + [str(x) for x in extra]


def distributed_flags(workers: int) -> List[str]:
    """fairseq's own distributed training: one node spawns a process per GPU itself; under
    torchrun it reads RANK/WORLD_SIZE/MASTER_*; under srun (one task per GPU) it builds a
    tcp:// address from the SLURM node list and needs a port. The world size is always
    passed, also for one GPU: --update-freq is computed for ``workers`` processes, and
    without the flag fairseq 0.12 trains on every visible GPU (FWP_NUM_GPUS=1 on an
    8-GPU machine would give 8 times the paper's tokens per update), and a task that sees
    only its own GPU would train alone."""
    if workers < 1:
        return []
    flags = ["--distributed-world-size", str(workers)]
    torchrun = all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"))
    if workers > 1 and "SLURM_JOB_ID" in os.environ and not torchrun:
        port = os.environ.get("FWP_DISTRIBUTED_PORT") or str(10000 + int(os.environ["SLURM_JOB_ID"]) % 20000)
        flags += ["--distributed-port", port]
    return flags


def train(argv: Sequence[str]) -> int:
    p = _paths_parser("train.sh", "Train one Table 1 model on WMT14 En-De; other flags go to fairseq-train.")
    p.add_argument("--precision", default="fp16", choices=common.PRECISIONS,
                   help="fp16 as the paper (V100); bf16 on Ampere/Hopper; ignored on CPU [fp16]")
    p.add_argument("--dry-run", action="store_true", help="print the fairseq-train command and stop")
    a, extra = common.parse_known_args(p, argv)
    get_model(a.model)
    data = a.data.resolve()
    save = save_dir_of(a)
    cmd = train_command(a.model, data, save, extra, a.precision)
    workers = common.world_size()
    freq = update_freq(workers)
    print(f"[wmt14] {a.model}: {'CPU' if workers == 0 else f'{workers} GPU process(es)'} x "
          f"{PAPER_TOKENS_PER_GPU} tokens x update-freq {freq} = {max(1, workers) * PAPER_TOKENS_PER_GPU * freq:,} "
          f"tokens per update (paper: {PAPER_TOKENS_PER_UPDATE:,})", file=sys.stderr)
    if a.dry_run:  # the command even before the data exists: check the GPU arithmetic first
        import shlex

        try:
            check_prepared(data)
        except RecipeError as e:
            print(f"[wmt14] note: the data is missing: {e}", file=sys.stderr)
        print(shlex.join(cmd))
        return 0
    check_prepared(data)
    save.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)  # one launcher per rank
    if rank == 0:
        (save / "recipe.json").write_text(json.dumps({"model": a.model, "data": str(data), "command": cmd}, indent=1))
        if (save / "checkpoint_last.pt").is_file():
            print(f"[wmt14] resuming from {save / 'checkpoint_last.pt'}", file=sys.stderr)
    common.run(cmd, log=save / ("train.log" if rank == 0 else f"train.rank{rank}.log"))
    return 0


# ------------------------------------------------------------------------- evaluate
_COMPOUND = re.compile(r"(\S)-(\S)")  # perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'


def compound_split(line: str) -> str:
    """The compound splitting of tensor2tensor's ``get_ende_bleu.sh`` (and of fairseq's
    ``compound_split_bleu.sh``): every ``a-b`` becomes ``a ##AT##-##AT## b`` (non-overlapping
    matches from the left, as perl's ``s///g``: ``1-2-3`` -> ``1 ##AT##-##AT## 2-3``)."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def compound_split_t2t(line: str) -> str:
    """The "t2t" column: our ``-a`` tokens ``@-@`` joined back into the word (the
    conventional Moses tokenisation tensor2tensor's ``get_ende_bleu.sh`` starts from),
    then :func:`compound_split`: ``E @-@ Mail`` -> ``E ##AT##-##AT## Mail``."""
    return compound_split(line.replace(" @-@ ", "-"))


def read_generate(generate_txt: Path, n: int, kind: str = "H") -> List[str]:
    """The ``H`` (hypothesis) or ``T`` (target) lines of fairseq-generate's output (BPE
    removed), in sentence-id order; the text is the last tab field of an H line (after
    its score) and everything after the id of a T line (as ``compound_split_bleu.sh``)."""
    lines: Dict[int, str] = {}
    with open(generate_txt, encoding="utf-8") as f:
        for line in f:
            if line.startswith(kind + "-"):
                fields = line.rstrip("\n").split("\t")
                text = (fields[-1] if len(fields) > 2 else "") if kind == "H" else "\t".join(fields[1:])
                lines[int(fields[0][2:])] = text
    if sorted(lines) != list(range(n)):
        what = "hypotheses" if kind == "H" else "targets"
        raise RecipeError(f"{generate_txt}: {len(lines)} {what} for {n} references; generation incomplete?")
    return [lines[i] for i in range(n)]


def bleu_scores(hyps_tok: List[str], refs_tok: List[str], refs_raw: List[str],
                targets: Optional[List[str]] = None) -> dict:
    """Three BLEU figures of the same hypotheses (the README names each protocol):

    * ``tok_bleu_t2t``: hypotheses against the tokenised reference text (built as fairseq's
      prepare-wmt14en2de.sh builds newstest2014), ``@-@`` joined back, compound split
      (tensor2tensor get_ende_bleu.sh), multi-bleu (sacreBLEU ``tokenize="none"``);
    * ``tok_bleu_fairseq``: fairseq's ``scripts/compound_split_bleu.sh`` taken literally
      on fairseq-generate's H and T lines (``targets``): the regex applied to the ``-a``
      text, so ``@-@`` becomes ``@ ##AT##-##AT## @``, T lines as fairseq prints them;
    * ``sacrebleu``: Moses-detokenised hypotheses against the raw SGML references."""
    from sacrebleu.metrics import BLEU

    def multi_bleu(hyps, refs):
        return BLEU(tokenize="none", force=True).corpus_score(hyps, [refs])

    t2t = multi_bleu([compound_split_t2t(h) for h in hyps_tok], [compound_split_t2t(r) for r in refs_tok])
    out = {"tok_bleu_t2t": round(t2t.score, 2), "tok_t2t_detail": str(t2t)}
    if targets is not None:
        fs = multi_bleu([compound_split(h) for h in hyps_tok], [compound_split(t) for t in targets])
        out.update({"tok_bleu_fairseq": round(fs.score, 2), "tok_fairseq_detail": str(fs)})
    detok_hyps = [moses_detokenize(h, TGT) for h in hyps_tok]
    metric = BLEU()
    sacre = metric.corpus_score(detok_hyps, [refs_raw])
    return {**out, "sacrebleu": round(sacre.score, 2), "sacrebleu_detail": str(sacre),
            "signature": str(metric.get_signature()), "detok": detok_hyps}


RESULTS_HEADER = ["MODEL", "Table 1 column", "d_dot", "update rule", "valid: paper", "valid: ours (t2t / fairseq / sacre)",
                  "test: paper", "test: ours (t2t / fairseq / sacre)", "checkpoint", "sacreBLEU signature"]
RESULTS_PREAMBLE = """# WMT14 En-De (paper Table 1)

BLEU with beam 4 and length penalty 0.6 (`recipes/wmt14_en_de/evaluate.sh MODEL`); valid is
newstest2013, test newstest2014 (full, 3003 sentences). Three figures per cell, protocols in
recipes/wmt14_en_de/README.md ("BLEU protocols"): "t2t" = tokenised BLEU with compound
splitting as tensor2tensor's get_ende_bleu.sh (Moses `@-@` joined back, then `a-b` ->
`a ##AT##-##AT## b`), "fairseq" = fairseq's scripts/compound_split_bleu.sh run literally on the
fairseq-generate output (`@-@` -> `@ ##AT##-##AT## @`), "sacre" = detokenised sacreBLEU (signature
in the last column). The references are tokenised as fairseq's prepare-wmt14en2de.sh does
(no punctuation normalisation). The paper's Table 1 gives one BLEU figure per cell; it does
not say which protocol. The best checkpoint by validation BLEU, no averaging. `-`: not in the paper."""


def evaluate(argv: Sequence[str]) -> int:
    p = _paths_parser("evaluate.sh", "Beam search on valid and test, BLEU, and a row of results/wmt14.md.")
    p.add_argument("--checkpoint", type=Path, help="[SAVE_DIR/checkpoint_best.pt]")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"results table [{DEFAULT_RESULTS}]")
    p.add_argument("--max-tokens", type=int, default=8000, help="fairseq-generate batch size in tokens [8000]")
    p.add_argument("--splits", default="valid,test", help="[valid,test]")
    a, extra = common.parse_known_args(p, argv)
    m = get_model(a.model)
    data = a.data.resolve()
    check_prepared(data)
    save = save_dir_of(a)
    ckpt = (a.checkpoint or save / "checkpoint_best.pt").resolve()
    if not ckpt.is_file() and a.checkpoint is None and (save / "checkpoint_last.pt").is_file():
        raise RecipeError(f"no {ckpt.name} in {save}, but a checkpoint_last.pt: training has not validated "
                          f"yet (see {save / 'train.log'}); evaluate that one with --checkpoint "
                          f"{save / 'checkpoint_last.pt'}, or train longer")
    if not ckpt.is_file():
        raise RecipeError(f"no checkpoint {ckpt}; train first: recipes/wmt14_en_de/train.sh {a.model}"
                          + (f" --save-dir {a.save_dir}" if a.save_dir else ""))
    splits = [s for s in a.splits.split(",") if s]
    for s in splits:
        common.check_choice("split", s, ("valid", "test"))
    out_dir = save / "eval"
    scores = {}
    for split in splits:
        results_path = out_dir / split
        cmd = common.fairseq_cmd(
            "generate", data / "bin", "--user-dir", common.USER_DIR, "--task", "translation",
            "--source-lang", SRC, "--target-lang", TGT, "--path", ckpt, "--gen-subset", split,
            "--beam", BEAM, "--lenpen", LENPEN, "--remove-bpe", "sentencepiece", "--max-tokens", a.max_tokens,
            # fairseq 0.12.3's batch_by_size drops a last batch smaller than this multiple
            # (default 8): up to 7 test sentences would go untranslated
            "--required-batch-size-multiple", "1",
            "--results-path", results_path, *(["--cpu"] if common.world_size() == 0 else []), *extra)
        common.run(cmd, log=out_dir / "generate.log")
        refs_raw = (data / "ref" / f"{split}.{TGT}").read_text(encoding="utf-8").splitlines()
        refs_tok = (data / "ref" / f"{split}.tok.{TGT}").read_text(encoding="utf-8").splitlines()
        gen = results_path / f"generate-{split}.txt"
        hyps = read_generate(gen, len(refs_raw), "H")
        s = bleu_scores(hyps, refs_tok, refs_raw, targets=read_generate(gen, len(refs_raw), "T"))
        (results_path / f"hyp.detok.{TGT}").write_text("".join(h + "\n" for h in s.pop("detok")), encoding="utf-8")
        scores[split] = s
        print(f"[wmt14] {a.model} {split}: tokenised BLEU with compound splitting {s['tok_bleu_t2t']:.2f} "
              f"(t2t get_ende_bleu.sh), {s['tok_bleu_fairseq']:.2f} (fairseq compound_split_bleu.sh); "
              f"sacreBLEU {s['sacrebleu']:.2f} ({s['signature']})", flush=True)
    (out_dir / "bleu.json").write_text(json.dumps({"model": a.model, "checkpoint": str(ckpt), **scores}, indent=1))

    def ours(split):
        if split not in scores:
            return "-"
        x = scores[split]
        return f"{x['tok_bleu_t2t']:.1f} / {x['tok_bleu_fairseq']:.1f} / {x['sacrebleu']:.1f}"

    def paper(x):
        return "-" if x is None else f"{x:.1f}"

    sig = next(iter(scores.values()))["signature"].replace("|", "\\|") if scores else "-"  # Markdown cell
    row = [m.name, m.column, m.d_dot, "-" if m.rule == "softmax" else m.rule, paper(m.paper_valid), ours("valid"), paper(m.paper_test), ours("test"),
           os.path.relpath(ckpt, common.REPO) if str(ckpt).startswith(str(common.REPO)) else str(ckpt), sig]
    common.results_table(a.results, RESULTS_HEADER, (m.name,), row, preamble=RESULTS_PREAMBLE)
    print(f"[wmt14] row for {m.name} written to {a.results}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ generated archives
def _sgm(segs: Sequence[str], kind: str, lang: str, setid: str) -> str:
    """A WMT-style .sgm file: <srcset>/<refset>, documents of 10 segments."""
    if kind == "src":
        out, doc = [f'<srcset setid="{setid}" srclang="any">'], '<doc docid="doc{}" genre="news" origlang="en">'
    else:
        out = [f'<refset setid="{setid}" srclang="any" trglang="{lang}">']
        doc = '<doc sysid="ref" docid="doc{}" genre="news" origlang="en">'
    for d in range(0, len(segs), 10):
        out.append(doc.format(d // 10))
        for i, s in enumerate(segs[d:d + 10], 1):
            out.append(f'<seg id="{i}">{s}</seg>')
        out.append("</doc>")
    out.append("</srcset>" if kind == "src" else "</refset>")
    return "\n".join(out) + "\n"


def _add(t: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    t.addfile(info, io.BytesIO(data))


# toy lexicon for the generated archives: toy_data's source word j is TOY_EN[j]; its
# translation, target word (7j+3) % 16, is TOY_DE[(7j+3) % 16] (the same word in German)
TOY_EN = ("house", "tree", "water", "e-mail", "green", "small", "city", "river",
          "dog", "book", "night", "day", "friend", "school", "world", "car")
_TOY_DE = ("haus", "baum", "wasser", "e-mail", "grün", "klein", "stadt", "fluss",
           "hund", "buch", "nacht", "tag", "freund", "schule", "welt", "auto")
TOY_DE = tuple(_TOY_DE[[(7 * j + 3) % 16 for j in range(16)].index(k)] for k in range(16))


def write_fake_archives(out: Path, train_pairs: int = 3000, valid: int = 100, test: int = 103,
                        task: str = "copy", max_len: int = 8, seed: int = 1) -> Dict[str, int]:
    """The five archives with the real names and inner layout (tgz, .sgm for the test sets),
    filled with ``fairseq_fwp.toy_data`` pairs written as sentences through a 16-word
    lexicon ("E-mail friend day." -> "E-mail freund tag."): capitals, punctuation, a
    hyphenated word (Moses' ``@-@``, compound splitting) and a non-ASCII letter.

    The training text also holds pairs that cleaning must drop (an empty side, a length
    ratio above 1.5); Europarl, CommonCrawl and News Commentary share the pairs.
    Returns the counts a prepare run must find."""
    from fairseq_fwp.toy_data import translation_pairs

    def sentence(words: str, lexicon) -> str:
        w = [lexicon[int(x[1:])] for x in words.split()]
        return " ".join([w[0].capitalize(), *w[1:]]) + "."

    def make(n, k):
        return [(sentence(s, TOY_EN), sentence(t, TOY_DE))
                for s, t in translation_pairs(n, task, len(TOY_EN), 3, max_len, seed=seed * 1000 + k)]

    out.mkdir(parents=True, exist_ok=True)
    train = make(train_pairs, 0)
    bad = [("", "Baum haus."), ("House tree water dog book night day car.", "Haus."), ("Tree.", "")]
    train = train[:10] + bad + train[10:]
    thirds = [train[i::3] for i in range(3)]
    sets = {"valid": make(valid, 1), "test": make(test, 2)}
    texts = dict(zip(CORPORA, thirds))
    for a in ARCHIVES:
        with tarfile.open(out / a.file, "w:gz") as t:
            for role, member in a.members.items():
                name, lang = role.rsplit(".", 1)
                side = 0 if lang == SRC else 1
                if name in ("valid", "test"):
                    segs = [p[side] for p in sets[name]]
                    setid = "newstest2013" if name == "valid" else "newstest2014"
                    _add(t, member, _sgm(segs, "src" if lang == SRC else "ref", lang, setid))
                else:
                    lines = [p[side] for p in texts[name]]
                    _add(t, member, "".join(x + "\n" for x in lines))
            if a.file == "training-parallel-europarl-v7.tgz":  # the real archive holds other pairs too
                _add(t, "training/europarl-v7.fr-en.fr", "Bonjour.\n")
    return {"train": len(train), "dropped": len(bad), "valid": valid, "test": test}


# ---------------------------------------------------------------------------- smoke
SMOKE_ARCH = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64",
              "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
              "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--dropout", "0.0"]
SMOKE_OPT = ["--max-tokens", "1000", "--update-freq", "1", "--lr", "3e-3", "--warmup-updates", "100",
             "--clip-norm", "1.0", "--log-interval", "20", "--num-workers", "0",
             # fairseq's --eval-bleu logs no "bleu" while every hypothesis is empty (an
             # untrained model) and validate() then fails with KeyError: 'bleu'
             "--validate-after-updates", "100"]


def smoke(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="smoke.sh", description="prepare -> train -> evaluate on generated data, CPU.",
                                allow_abbrev=False)
    p.add_argument("--out", type=Path, default=OUT / "smoke", help=f"everything goes here [{OUT / 'smoke'}]")
    p.add_argument("--models", default="transformer,linear,delta", help="[transformer,linear,delta]")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-pairs", type=int, default=2000)
    p.add_argument("--jobs", type=int, default=0, help="models trained at once [one per CPU core]")
    a = common.parse_args(p, argv)
    models = [x for x in a.models.split(",") if x]
    for x in models:
        get_model(x)
    out = a.out.resolve()
    t0 = time.time()
    counts = write_fake_archives(out / "raw", train_pairs=a.train_pairs)
    data = out / "data"
    prepare(["--raw", str(out / "raw"), "--data", str(data), "--workers", "1", "--bpe-size", "120",
             "--expect", f"{counts['valid']},{counts['test']}"])
    results = out / "results.md"
    os.environ.setdefault("FWP_NUM_GPUS", "0")  # CPU, whatever the machine has
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread each is fastest
    def train_one(x):
        train([x, "--data", str(data), "--save-dir", str(out / "checkpoints" / x), *SMOKE_ARCH, *SMOKE_OPT,
               "--max-epoch", str(a.epochs)])

    jobs = max(1, min(a.jobs or os.cpu_count() or 1, len(models)))
    if jobs == 1:
        for x in models:
            train_one(x)
    else:  # single-threaded CPU runs: one per core (their logs interleave on the terminal)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(jobs) as pool:
            for f in [pool.submit(train_one, x) for x in models]:
                f.result()
    for x in models:
        evaluate([x, "--data", str(data), "--save-dir", str(out / "checkpoints" / x), "--results", str(results)])
    print(results.read_text())
    for x in models:
        b = json.loads((out / "checkpoints" / x / "eval" / "bleu.json").read_text())
        t = b["test"]
        print(f"smoke BLEU {x}: test t2t {t['tok_bleu_t2t']:.2f} fairseq {t['tok_bleu_fairseq']:.2f} "
              f"sacre {t['sacrebleu']:.2f}")
    print(f"smoke done in {time.time() - t0:.0f}s; outputs in {out}")
    return 0


COMMANDS = {"prepare": prepare, "train": train, "evaluate": evaluate, "smoke": smoke}


def main(command: str, argv: Sequence[str]) -> int:
    return COMMANDS[command](argv)
