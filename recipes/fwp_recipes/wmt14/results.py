"""BLEU in the three named protocols and the row of ``results/wmt14.md``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

from ..common import RecipeError
from .paper import TGT
from .text import moses_detokenize

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
