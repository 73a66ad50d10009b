"""WMT14 English-German big translation recipe (paper Sec. 6.2, Table 1, Appendix E).

Commands (``recipes/wmt14_en_de/{prepare,train,evaluate,smoke}.sh`` -> ``COMMANDS``):

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

The package, by what changes together: ``paper`` (the paper's settings, the model table
and its BLEU), ``archives`` and ``text`` (download, SGML, Moses, cleaning, BPE),
``prepare``, ``stages`` (train, evaluate, smoke), ``results`` (BLEU protocols, the
results table) and ``toy`` (generated archives).
"""

from .archives import ARCHIVES, count_lines, extract_members, fetch_archives, read_sgm
from .paper import D_KEY, MODELS, Model, get_model, update_freq
from .prepare import BIN_FILES, prepare
from .results import bleu_scores, compound_split, compound_split_t2t
from .stages import SMOKE_ARCH, SMOKE_OPT, evaluate, smoke, train, train_command
from .text import build_eval_sets, clean_pair, moses_detokenize, moses_tokenize
from .toy import write_fake_archives

__all__ = ["ARCHIVES", "BIN_FILES", "COMMANDS", "D_KEY", "MODELS", "Model", "SMOKE_ARCH", "SMOKE_OPT",
           "bleu_scores", "build_eval_sets", "clean_pair", "compound_split", "compound_split_t2t", "count_lines",
           "evaluate", "extract_members", "fetch_archives", "get_model", "moses_detokenize",
           "moses_tokenize", "prepare", "read_sgm", "smoke", "train", "train_command", "update_freq",
           "write_fake_archives"]

COMMANDS = {"prepare": prepare, "train": train, "evaluate": evaluate, "smoke": smoke}
