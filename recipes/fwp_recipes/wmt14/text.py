"""Moses normalisation and tokenisation, cleaning and the joined BPE, as fairseq's prepare-wmt14en2de.sh."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Iterable, Iterator, Sequence

from ..common import RecipeError
from .archives import read_sgm
from .paper import CLEAN_MAX, CLEAN_MIN, CLEAN_RATIO, SRC, TGT

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
