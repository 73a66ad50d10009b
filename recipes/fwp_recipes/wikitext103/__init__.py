"""WikiText-103 language modelling: the paper's Sec. 6.3, Tables 2-5 (Appendix D.3, F).

The paper's settings and the commands behind
``recipes/wikitext103/{prepare,train,evaluate,smoke}.sh``:

* ``prepare``  download (or take ``--raw``) the word-level WikiText-103 archive and
  binarise it with ``fairseq-preprocess --only-source`` (full 267K vocabulary);
* ``train CONFIG MODEL [switches] [fairseq flags]``  one run of Tables 2-5;
* ``evaluate CONFIG MODEL [switches]``  valid/test perplexity with the sliding window
  (Tables 2, 3, 5) and with the state carried through the whole split (Table 4), rows
  appended to ``results/wikitext103.md`` beside the paper's numbers;
* ``smoke``  every stage on a generated corpus at a tiny size (CPU, minutes).

The run settings (CONFIG, MODEL and the ablation switches) are one :class:`Setting`:
``train`` and ``evaluate`` parse the same switches, so the same words name the same run.

The package, by what changes together: ``paper`` (sizes, the model table, :class:`Setting`,
the paper's perplexities), ``args`` (the shared switches), ``data`` (``prepare``),
``train``, ``evaluate``, ``results`` (the results file) and ``toy`` (generated corpus, ``smoke``).
"""

from .args import parse_setting
from .data import SPLITS, TOKEN_FILES, URLS, ZIP_DIR, ZIP_NAME, data_info, prepare
from .evaluate import eval_command, evaluate, model_stats, parse_eval
from .paper import (CONFIGS, MODELS, PAPER_COMMANDS, PAPER_TABLE2, PAPER_TABLE3, PAPER_TABLE4, PAPER_TABLE5,
                    Config, Model, Setting, paper_rows)
from .results import SECTIONS, result_rows
from .toy import smoke, toy, write_toy_raw
from .train import carry_streams, train, train_command

__all__ = ["COMMANDS", "CONFIGS", "Config", "MODELS", "Model", "PAPER_COMMANDS", "PAPER_TABLE2", "PAPER_TABLE3",
           "PAPER_TABLE4", "PAPER_TABLE5", "SECTIONS", "SPLITS", "Setting", "TOKEN_FILES", "URLS", "ZIP_DIR",
           "ZIP_NAME", "carry_streams", "data_info", "eval_command", "evaluate", "model_stats", "paper_rows",
           "parse_eval", "parse_setting", "prepare", "result_rows", "smoke", "toy", "train",
           "train_command", "write_toy_raw"]

COMMANDS = {"prepare": prepare, "train": train, "evaluate": evaluate, "smoke": smoke, "toy": toy}
