"""WikiText-103 language modelling: the paper's Sec. 6.3, Tables 2-5 (Appendix D.3, F).

One model table, the paper's hyperparameters and the four commands behind
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
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shlex
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq_fwp import presets

from . import common
from .common import RecipeError

# ------------------------------------------------------------------------------ data

ZIP_NAME = "wikitext-103-v1.zip"
ZIP_DIR = "wikitext-103"  # the folder inside the zip
SPLITS = ("train", "valid", "test")
TOKEN_FILES = {s: f"wiki.{s}.tokens" for s in SPLITS}
# The original address (answers 403 since 2024), then the dataset author's own host
# (Stephen Merity; threads such as pytorch/text#2255 and IST-DASLab/Quartet#11 report it
# serving the same zip). --mirror URL puts more addresses in front.
URLS = (
    "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip",
    "https://wikitext.smerity.com/wikitext-103-v1.zip",
)
# md5 of wikitext-103-v1.zip as published with torchtext's WikiText103 loader (the S3
# object's ETag); a download that differs is refused, a --raw archive only noted.
ZIP_MD5 = "9ddaacaf6af0710eda8c456decff7832"
LAYOUT = (
    f"either {ZIP_NAME} (members {ZIP_DIR}/wiki.train.tokens, {ZIP_DIR}/wiki.valid.tokens, "
    f"{ZIP_DIR}/wiki.test.tokens) or the three files wiki.train.tokens, wiki.valid.tokens, "
    f"wiki.test.tokens (in DIR or DIR/{ZIP_DIR})"
)

DEFAULT_WORKDIR = common.REPO / "outputs" / "wikitext103"
DEFAULT_RESULTS = common.REPO / "results" / "wikitext103.md"


def _log(msg: str) -> None:
    print(f"[wikitext103] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the model table


@dataclass(frozen=True)
class Config:
    """A model size of the paper (Sec. 6.3, Appendix F) and its training schedule."""

    arch: str
    tokens_per_sample: int  # L: training context = backpropagation span = evaluation window
    batch: int  # sequences of L tokens per update (the paper's batch size)
    max_per_gpu: int  # sequences one GPU holds (the authors: 2 x 16 GB V100 per run)
    max_update: int  # cosine schedule length
    favor_m: int  # Performer m giving d_dot = d_head (the Linear Transformer's capacity, Table 2)
    lr: float = 2.5e-4
    warmup: int = 2000
    save_interval_updates: int = 2000
    log_interval: int = 100
    eval_batch: int = 64  # sliding-window windows per evaluation batch
    arch_flags: Tuple[str, ...] = ()  # size overrides (only the CPU-scale "tiny" config)
    paper_epochs: Optional[int] = None
    note: str = ""


CONFIGS: Dict[str, Config] = {
    # 96 x 256 = 24,576 tokens per update; 500k updates ~ 119 epochs of the 103M-token
    # train set (the paper: ~120; the authors' small script: --max_step 500000).
    "small": Config("fwp_lm_wt103_small", 256, 96, 48, 500_000, favor_m=8, paper_epochs=120,
                    note="D = 128, 8 heads x 16, L = 256 (Table 2/5 'small', 40M parameters)"),
    # 56 x 384 = 21,504 tokens per update; 340k updates ~ 70 epochs (the paper: ~70).
    "medium": Config("fwp_lm_wt103_medium", 384, 56, 28, 340_000, favor_m=16, paper_epochs=70,
                     note="D = 256, 8 heads x 32, L = 384 (Table 2/3/4 'medium', 90M parameters)"),
    # Not a paper size: the smoke test's CPU scale (2 layers, D = 32, 4 heads x 8, L = 32,
    # adaptive cutoffs for a ~50-word vocabulary), same recipe path otherwise.
    "tiny": Config("fwp_lm_wt103_small", 32, 8, 8, 300, favor_m=4, lr=3e-3, warmup=30,
                   save_interval_updates=100, log_interval=50, eval_batch=64,
                   arch_flags=("--decoder-layers", "2", "--decoder-embed-dim", "32",
                               "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "4",
                               "--adaptive-softmax-cutoff", "10,25", "--adaptive-input-cutoff", "10,25"),
                   note="CPU smoke scale, not a paper setting"),
}


@dataclass(frozen=True)
class Model:
    """A row of Tables 2-5: feature map phi and update rule, in the setting of the authors'
    code (``fairseq_fwp.presets.lmtool_flags``): every fast weight model sum-normalises
    phi(k) and phi(q) (Eq. 29); the sum-rule layers also divide by z.phi(q) (Eq. 18-19),
    the delta-rule layers do not (Table 3's best setting, used in Table 2)."""

    feature_map: str
    update_rule: str = "sum"
    label: str = ""

    @property
    def attn_norm(self) -> bool:
        return self.feature_map != "softmax" and self.update_rule == "sum"


MODELS: Dict[str, Model] = {
    "transformer": Model("softmax", label="Transformer"),
    "linear": Model("linear", "sum", "Linear Transformer"),
    "delta": Model("linear", "delta", "Delta Network"),
    "performer": Model("favor", "sum", "Performer"),
    "performer-delta": Model("favor", "delta", "Performer + delta"),
    "dpfp": Model("dpfp", "sum", "DPFP"),
    "dpfp-delta": Model("dpfp", "delta", "DPFP + delta"),
}


@dataclass(frozen=True)
class Setting:
    """One run: CONFIG x MODEL x the ablation switches of Tables 3-5."""

    config: str
    model: str
    pos: bool = True  # absolute positional embeddings (Table 3)
    attn_norm: Optional[bool] = None  # None: the model's default (Table 3 switches it)
    carry: bool = False  # Table 4: fast weights carried across training segments
    favor_m: Optional[int] = None  # None: the config's m (Table 2); 16 at small = Table 5
    dpfp_nu: Optional[int] = None  # None: 1 (Table 5)

    @property
    def cfg(self) -> Config:
        return CONFIGS[self.config]

    @property
    def spec(self) -> Model:
        return MODELS[self.model]

    @property
    def fast_weights(self) -> bool:
        return self.spec.feature_map != "softmax"

    @property
    def m(self) -> Optional[int]:
        return (self.favor_m or self.cfg.favor_m) if self.spec.feature_map == "favor" else None

    @property
    def nu(self) -> Optional[int]:
        return (self.dpfp_nu or 1) if self.spec.feature_map == "dpfp" else None

    @property
    def default_attn_norm(self) -> bool:
        """Without --attn-norm: the model's own setting; with --carry, off for the delta
        rule (Table 4's Delta Net: "neither positional encoding nor attention
        normalisation") and kept for the sum rule (Table 4's Linear Transformer row; the
        paper reports > 1600 perplexity without it)."""
        if self.carry and self.spec.update_rule == "delta":
            return False
        return self.spec.attn_norm

    @property
    def effective_attn_norm(self) -> bool:
        return self.default_attn_norm if self.attn_norm is None else self.attn_norm

    @property
    def default_pos(self) -> bool:
        return not self.carry  # Table 4 trains without positional encoding

    @property
    def name(self) -> str:
        """Run name (checkpoint folder): CONFIG-MODEL plus every non-default switch."""
        parts = [self.config, self.model]
        if self.spec.feature_map == "favor" and self.m != self.cfg.favor_m:
            parts.append(f"m{self.m}")
        if self.spec.feature_map == "dpfp" and self.nu != 1:
            parts.append(f"nu{self.nu}")
        if self.pos != self.default_pos:
            parts.append("pos" if self.pos else "nopos")
        if self.fast_weights and self.effective_attn_norm != self.default_attn_norm:
            parts.append("attnnorm" if self.effective_attn_norm else "noattnnorm")
        if self.carry:
            parts.append("carry")
        return "-".join(parts)

    def validate(self) -> "Setting":
        common.check_choice("CONFIG", self.config, CONFIGS)
        common.check_choice("MODEL", self.model, MODELS)
        fm = self.spec.feature_map
        if not self.fast_weights:
            for flag, given in (("--attn-norm", self.attn_norm is not None), ("--carry", self.carry)):
                if given:
                    raise RecipeError(f"{flag} needs a fast weight model (the transformer has no fast weights); "
                                      f"valid models: {', '.join(m for m in MODELS if m != 'transformer')}")
        if self.carry and fm == "favor":
            raise RecipeError("--carry does not work with performer / performer-delta: FAVOR+ redraws its random "
                              "features at every training forward, so a carried fast weight would be read with other "
                              "features than it was written with (the paper's Table 4 has linear and delta only)")
        if self.favor_m is not None and (fm != "favor" or self.favor_m < 1):
            raise RecipeError(f"--favor-features M (an integer >= 1) is for performer / performer-delta, "
                              f"not {self.model} (got {self.favor_m})")
        if self.dpfp_nu is not None and (fm != "dpfp" or self.dpfp_nu < 1):
            raise RecipeError(f"--dpfp-nu N (an integer >= 1) is for dpfp / dpfp-delta, not {self.model} "
                              f"(got {self.dpfp_nu})")
        return self

    def model_flags(self) -> List[str]:
        """The fairseq flags of the architecture and the fast weight attention."""
        flags = ["--arch", self.cfg.arch, *self.cfg.arch_flags,
                 *presets.lmtool_flags(self.spec.feature_map, self.spec.update_rule,
                                       attn_norm=self.effective_attn_norm, m=self.m, nu=self.nu)]
        if not self.pos:
            flags.append("--no-token-positional-embeddings")
        return flags


# The paper's perplexities (valid, test). Table 2: limited context (sliding window), pos
# enc on, each model's own normalisation, Performer m = 8 (small) / 16 (medium).
PAPER_TABLE2 = {
    ("small", "transformer"): (33.0, 34.1), ("medium", "transformer"): (27.9, 29.6),
    ("small", "linear"): (37.1, 38.3), ("medium", "linear"): (31.1, 33.0),
    ("small", "delta"): (34.1, 35.5), ("medium", "delta"): (29.7, 31.5),
    ("small", "performer"): (39.0, 39.6), ("medium", "performer"): (32.2, 33.8),
    ("small", "performer-delta"): (36.1, 37.2), ("medium", "performer-delta"): (30.0, 31.8),
}
# Table 3: Delta Net, medium; (positional encoding, attention normalisation).
PAPER_TABLE3 = {(True, True): (30.4, 32.1), (False, True): (29.2, 31.2),
                (True, False): (29.7, 31.5), (False, False): (28.1, 31.1)}
# Table 4: medium, trained and evaluated with the state carried (params M, state M, valid, test).
PAPER_TABLE4 = {"linear": ("89.8", "0.13", ">260", ">260"), "delta": ("89.9", "0.13", "27.8", "29.4")}
PAPER_TABLE4_TXL = (("Transformer-XL", "90.9", "0.13", "65.7", "65.5"),
                    ("Transformer-XL", "90.9", "1.05", "29.3", "30.1"),
                    ("Transformer-XL", "90.9", "2.10", "26.4", "27.4"),
                    ("Transformer-XL", "90.9", "6.29", "24.6", "25.5"))
# Table 5 (Appendix D.3): small, Performer m = 16, DPFP nu = 1 (d_dot = 256 over 8 heads).
PAPER_TABLE5 = {"transformer": (33.0, 34.1), "performer": (38.0, 38.8), "performer-delta": (36.0, 37.0),
                "dpfp": (37.7, 38.8), "dpfp-delta": (33.9, 35.0)}


# One command per row of Tables 2-5 (arguments of train.sh / evaluate.sh), for the README
# and the tests: (table, row, arguments).
PAPER_COMMANDS = [
    *[(2, f"{c} {MODELS[m].label}", [c, m]) for c in ("small", "medium")
      for m in ("transformer", "linear", "delta", "performer", "performer-delta")],
    (3, "pos. enc. yes, attn. norm. yes", ["medium", "delta", "--attn-norm", "on"]),
    (3, "pos. enc. no, attn. norm. yes", ["medium", "delta", "--pos", "off", "--attn-norm", "on"]),
    (3, "pos. enc. yes, attn. norm. no", ["medium", "delta"]),
    (3, "pos. enc. no, attn. norm. no", ["medium", "delta", "--pos", "off"]),
    (4, "Linear Transformer", ["medium", "linear", "--carry"]),
    (4, "Delta Network", ["medium", "delta", "--carry"]),
    (5, "Transformer", ["small", "transformer"]),
    (5, "Performer (m = 16), sum", ["small", "performer", "--favor-features", "16"]),
    (5, "Performer (m = 16), delta", ["small", "performer-delta", "--favor-features", "16"]),
    (5, "DPFP (nu = 1), sum", ["small", "dpfp"]),
    (5, "DPFP (nu = 1), delta", ["small", "dpfp-delta"]),
]


def paper_rows(s: Setting) -> List[Tuple[int, Tuple]]:
    """[(table, paper numbers)] for every table of the paper that has this run as a row."""
    rows = []
    if s.carry:
        if s.config == "medium" and s.model in PAPER_TABLE4 and not s.pos and s.effective_attn_norm == s.default_attn_norm \
                and s.m is None and s.nu is None:
            rows.append((4, PAPER_TABLE4[s.model]))
        return rows
    own_norm = s.effective_attn_norm == s.spec.attn_norm if s.fast_weights else True
    if (s.config, s.model) in PAPER_TABLE2 and s.pos and own_norm and s.m == (s.cfg.favor_m if s.m else None):
        rows.append((2, PAPER_TABLE2[(s.config, s.model)]))
    if s.config == "medium" and s.model == "delta":
        rows.append((3, PAPER_TABLE3[(s.pos, s.effective_attn_norm)]))
    if s.config == "small" and s.model in PAPER_TABLE5 and s.pos and own_norm \
            and s.m in (None, 16) and s.nu in (None, 1):
        rows.append((5, PAPER_TABLE5[s.model]))
    return rows


# ---------------------------------------------------------------------- arguments


def _setting_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help=f"one of {', '.join(CONFIGS)}")
    p.add_argument("model", metavar="MODEL", help=f"one of {', '.join(MODELS)}")
    onoff = {"on": True, "off": False}
    p.add_argument("--pos", choices=onoff, help="absolute positional embeddings (Table 3); default on, off with --carry")
    p.add_argument("--attn-norm", choices=onoff,
                   help="attention normalisation (Table 3); default: on for the sum rule, off for the delta rule")
    p.add_argument("--carry", action="store_true",
                   help="Table 4: carry the fast weights across training segments (no positional encoding; "
                        "no attention normalisation for the delta rule); evaluate with the state carried")
    p.add_argument("--favor-features", type=int, metavar="M",
                   help="Performer m (default: 8 small / 16 medium, Table 2; 16 at small = Table 5)")
    p.add_argument("--dpfp-nu", type=int, metavar="N", help="DPFP nu (default 1, Table 5)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help=f"data and checkpoints (default {DEFAULT_WORKDIR.relative_to(common.REPO)})")
    p.add_argument("--data", type=Path, help="binarised data (default WORKDIR/data-bin)")
    p.add_argument("--save-dir", type=Path, help="checkpoints (default WORKDIR/checkpoints/RUN)")


def _setting_from(a) -> Setting:
    onoff = {"on": True, "off": False, None: None}
    s = Setting(a.config, a.model, carry=a.carry, attn_norm=onoff[a.attn_norm],
                favor_m=a.favor_features, dpfp_nu=a.dpfp_nu)
    common.check_choice("CONFIG", s.config, CONFIGS)
    common.check_choice("MODEL", s.model, MODELS)
    pos = onoff[a.pos]
    return replace(s, pos=s.default_pos if pos is None else pos).validate()


def parse_setting(argv: Sequence[str]) -> Setting:
    """The :class:`Setting` named by train.sh / evaluate.sh arguments (CONFIG MODEL [switches])."""
    p = _parser("setting", "")
    _setting_args(p)
    return _setting_from(common.parse_args(p, argv))


def _paths(a, s: Setting) -> Tuple[Path, Path]:
    workdir = a.workdir.resolve()
    data = (a.data or workdir / "data-bin").resolve()
    save_dir = (a.save_dir or workdir / "checkpoints" / s.name).resolve()
    return data, save_dir


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


# ------------------------------------------------------------------------ prepare


def _zip_members(path: Path) -> Dict[str, str]:
    """{split: member name} of the three token files inside a WikiText-103 zip."""
    with common.reading_archive(path), zipfile.ZipFile(path) as z:
        names = z.namelist()
    found = {}
    for split, fname in TOKEN_FILES.items():
        hits = [n for n in names if n == f"{ZIP_DIR}/{fname}"] or [n for n in names if n.rsplit("/", 1)[-1] == fname]
        if not hits:
            shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise RecipeError(f"{path}: no {ZIP_DIR}/{fname} inside (members: {shown}); expected {LAYOUT}")
        found[split] = hits[0]
    return found


def _check_zip(path: Path) -> None:
    common.test_archive(path)
    _zip_members(path)


def _find_raw(raw: Path):
    """('zip', path) or ('files', {split: path}) for --raw PATH; a clear error otherwise."""
    raw = raw.expanduser().resolve()
    if not raw.exists():
        raise RecipeError(f"--raw {raw}: no such file or folder; expected {LAYOUT}")
    if raw.is_file():
        if not zipfile.is_zipfile(raw):
            raise RecipeError(f"--raw {raw}: not a zip archive; expected {LAYOUT}")
        return "zip", raw
    for folder in (raw, raw / ZIP_DIR):
        files = {s: folder / f for s, f in TOKEN_FILES.items()}
        present = [s for s, p in files.items() if p.is_file()]
        if len(present) == 3:
            return "files", files
        if present:
            missing = ", ".join(TOKEN_FILES[s] for s in SPLITS if s not in present)
            raise RecipeError(f"--raw {raw}: {missing} missing in {folder} (found "
                              f"{', '.join(TOKEN_FILES[s] for s in present)}); expected {LAYOUT}")
    if (raw / ZIP_NAME).is_file():
        return "zip", raw / ZIP_NAME
    raise RecipeError(f"--raw {raw}: found neither {ZIP_NAME} nor wiki.train.tokens, wiki.valid.tokens, "
                      f"wiki.test.tokens there; expected {LAYOUT}")


def _stamp(path: Path) -> Tuple[str, int, int]:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def _extract(zip_path: Path, out: Path, steps: common.Steps) -> Dict[str, Path]:
    files = {s: out / f for s, f in TOKEN_FILES.items()}
    key = common.key_of(_stamp(zip_path))
    if steps.done("extract", key, files.values()):
        _log(f"extract: done earlier ({out}), skipping")
        return files
    members = _zip_members(zip_path)
    out.mkdir(parents=True, exist_ok=True)
    with common.reading_archive(zip_path), zipfile.ZipFile(zip_path) as z:
        for split, member in members.items():
            tmp = files[split].with_name(files[split].name + ".tmp")
            with z.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)  # the member's CRC-32 is checked at its end
            tmp.replace(files[split])
    steps.mark("extract", key, files.values())
    _log(f"extract: {', '.join(TOKEN_FILES.values())} -> {out}")
    return files


def binarized_files(dest: Path) -> List[Path]:
    """What fairseq-preprocess --only-source writes (and training/evaluation read)."""
    return [dest / "dict.txt"] + [dest / f"{s}.{ext}" for s in SPLITS for ext in ("bin", "idx")]


def _binarize(files: Dict[str, Path], dest: Path, workers: int, steps: common.Steps, log: Path) -> None:
    key = common.key_of([_stamp(files[s]) for s in SPLITS], str(dest))
    outputs = binarized_files(dest)
    if steps.done("binarize", key, outputs):
        _log(f"binarize: done earlier ({dest}), skipping")
        return
    if dest.exists():
        shutil.rmtree(dest)  # a half-written folder from a killed run
    common.run(common.fairseq_cmd(
        "preprocess", "--only-source",
        "--trainpref", files["train"], "--validpref", files["valid"], "--testpref", files["test"],
        "--destdir", dest, "--workers", workers), log=log)
    steps.mark("binarize", key, outputs)


def data_info(data: Path) -> dict:
    """Vocabulary size (with fairseq's 4 special symbols) of a binarised folder."""
    d = Path(data) / "dict.txt"
    if not d.is_file():
        raise RecipeError(f"{data}: no dict.txt; run recipes/wikitext103/prepare.sh first (or pass --data)")
    with open(d) as f:
        words = sum(1 for _ in f)
    return {"vocab": words + 4, "dict_words": words}


def prepare(argv: Sequence[str]) -> int:
    p = _parser("prepare.sh", "Download (or take --raw) WikiText-103 and binarise it with fairseq-preprocess.")
    p.add_argument("--raw", type=Path, metavar="PATH",
                   help=f"use files already here instead of downloading: {LAYOUT}")
    p.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="another address of wikitext-103-v1.zip, tried first (repeatable)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="fairseq-preprocess workers")
    a = common.parse_args(p, argv)
    workdir = a.workdir.resolve()
    steps = common.Steps(workdir)
    log = workdir / "prepare.log"
    if a.raw is not None:
        kind, found = _find_raw(a.raw)
        if kind == "zip":
            _check_zip(found)
            try:
                common.verify_file(found, md5=ZIP_MD5)
                _log(f"--raw {found}: the published archive (md5 {ZIP_MD5})")
            except RecipeError:
                _log(f"--raw {found}: a valid WikiText-103 layout, but not the published archive's md5 "
                     f"{ZIP_MD5} (fine for a locally built corpus; the paper's numbers need the original)")
            files = _extract(found, workdir / "raw", steps)
        else:
            files = found
            _log(f"--raw: using {found['train'].parent} directly")
    else:
        zip_path = common.download([*a.mirror, *URLS], workdir / "download" / ZIP_NAME, md5=ZIP_MD5, check=_check_zip)
        files = _extract(zip_path, workdir / "raw", steps)
    dest = workdir / "data-bin"
    _binarize(files, dest, a.workers, steps, log)
    info = data_info(dest)
    _log(f"ready: {dest} (vocabulary {info['vocab']:,} incl. 4 special symbols)")
    print(f"data: {dest}")
    print(f"vocabulary: {info['vocab']}")
    return 0


# -------------------------------------------------------------------------- train

# Precision: bf16 where the GPU has it (Ampere and newer): float32's exponent range, so
# no loss-scale overflows in the fast weight sums (up to L = 384 outer products per
# segment, unbounded with --carry), FAVOR+'s exp features or the 267K-way adaptive
# softmax; fp16 (fairseq's dynamic loss scaling) on older GPUs such as the paper's V100;
# fp32 is the authors' own setting (their CUDA kernels were fp32 only).


def default_precision() -> str:
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
    except ImportError:
        pass
    return "fp16"


def train_command(s: Setting, data: Path, save_dir: Path, *, workers: int, precision: str,
                  max_per_gpu: Optional[int] = None, extra: Sequence[str] = ()) -> Tuple[List[str], dict]:
    """The fairseq-train command of one run and its batch arithmetic.

    ``workers`` = training processes (0 = CPU). The update holds the paper's batch of
    ``cfg.batch`` sequences of L tokens whatever the process count: per-process
    --batch-size x processes x --update-freq = cfg.batch (fairseq multiplies by the world
    size itself)."""
    cfg = s.cfg
    if s.carry:
        per_gpu, update_freq = carry_streams(s, workers, max_per_gpu or cfg.max_per_gpu, extra)
    else:
        per_gpu, update_freq = common.split_batch(cfg.batch, max(1, workers), max_per_gpu or cfg.max_per_gpu)
    cmd = common.fairseq_cmd(
        "train", data, "--user-dir", common.USER_DIR, "--task", "fwp_language_modeling",
        *s.model_flags(),
        "--tokens-per-sample", cfg.tokens_per_sample, "--sample-break-mode", "none",
        "--batch-size", per_gpu, "--update-freq", update_freq, "--required-batch-size-multiple", 1,
        "--criterion", "adaptive_loss", "--ddp-backend", "legacy_ddp",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.999)", "--weight-decay", 0, "--clip-norm", 0.25,
        "--lr", cfg.lr, "--lr-scheduler", "cosine", "--warmup-updates", cfg.warmup, "--min-lr", 0,
        "--max-update", cfg.max_update, "--dropout", 0.1,
        "--save-dir", save_dir, "--save-interval-updates", cfg.save_interval_updates,
        "--keep-interval-updates", 1, "--no-epoch-checkpoints",
        "--log-format", "simple", "--log-interval", cfg.log_interval, "--seed", 1,
    )
    if s.carry:
        cmd.append("--fwp-carry-state")
    if workers == 0:
        cmd.append("--cpu")
    else:
        # always, also for one GPU: --batch-size / --update-freq are computed for `workers`
        # processes, and without the flag fairseq 0.12 trains on every visible GPU
        cmd += common.precision_flags(precision) + ["--distributed-world-size", str(workers)]
    cmd += common.tensorboard_flags(save_dir / "tensorboard")
    cmd += [str(x) for x in extra]
    info = {"processes": max(1, workers), "per_gpu": per_gpu, "update_freq": update_freq,
            "tokens_per_update": per_gpu * max(1, workers) * update_freq * cfg.tokens_per_sample}
    return cmd, info


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def carry_streams(s: Setting, workers: int, max_per_gpu: int, extra: Sequence[str] = ()) -> Tuple[int, int]:
    """(per-GPU --batch-size, --update-freq 1) for ``--carry``.

    With the state carried, the sequences of a batch are the streams: the paper's 56
    (medium) / 96 (small) streams advance one segment per update. Splitting them into
    accumulation steps (--update-freq) would instead put consecutive segments of half as
    many streams into one update -- another experiment. So the streams are shared evenly
    by the processes, one segment each per step, and a process count that cannot hold
    them is refused with the counts (or --max-per-gpu) that can."""
    streams, L = s.cfg.batch, s.cfg.tokens_per_sample
    w = max(1, workers)
    freq = _last_value(extra, "--update-freq")
    if freq is not None and freq.strip() != "1":
        raise RecipeError(f"--update-freq {freq} with --carry: the carried streams are the batch; accumulation "
                          f"would make {streams} streams consecutive segments of fewer streams (drop --update-freq)")
    ok = ", ".join(str(d) for d in _divisors(streams) if streams // d <= max_per_gpu)
    if streams % w:
        raise RecipeError(f"--carry keeps the paper's {streams} streams in every update (one segment each), which "
                          f"{w} processes cannot share evenly; process counts that can: {ok} (set FWP_NUM_GPUS)")
    per = streams // w
    if per > max_per_gpu:
        raise RecipeError(f"--carry keeps the paper's {streams} streams in every update (one segment each, no "
                          f"--update-freq), so {w} process(es) must hold {per} sequences of {L} tokens each, above "
                          f"--max-per-gpu {max_per_gpu} (what a 16 GB V100 holds); use {ok} processes, or "
                          f"--max-per-gpu {per} if one GPU holds {per} x {L} tokens")
    return per, 1


def _last_value(cmd: Sequence[str], flag: str, default=None):
    """The value of the last ``flag`` in ``cmd`` (fairseq's argparse keeps the last one)."""
    value = default
    for i, x in enumerate(cmd):
        if x == flag and i + 1 < len(cmd):
            value = cmd[i + 1]
        elif x.startswith(flag + "="):
            value = x.split("=", 1)[1]
    return value


def carry_layout_of_command(cmd: Sequence[str]) -> dict:
    """Streams per process, processes and segment length of a ``--fwp-carry-state`` command."""
    return {"batch_size": int(_last_value(cmd, "--batch-size")),
            "world_size": int(_last_value(cmd, "--distributed-world-size", 1)),
            "tokens_per_sample": int(_last_value(cmd, "--tokens-per-sample"))}


def carry_layout_of_checkpoint(path: Path) -> dict:
    """The same three numbers from a fairseq checkpoint's saved configuration."""
    import torch

    import fairseq_fwp  # noqa: F401  (checkpoint globals for torch.load)

    cfg = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["cfg"]
    get = lambda group, key: (cfg[group].get(key) if isinstance(cfg[group], dict)  # noqa: E731
                              else getattr(cfg[group], key, None))
    return {"batch_size": get("dataset", "batch_size"),
            "world_size": get("distributed_training", "distributed_world_size"),
            "tokens_per_sample": get("task", "tokens_per_sample")}


def check_carry_resume(save_dir: Path, cmd: Sequence[str]) -> None:
    """Refuse to resume a carried-state run with another stream layout.

    The training text is cut into --batch-size x world-size streams and a resumed run
    continues "at segment N" of each; with another batch size or world size segment N
    of stream b is another slice of text, and the run would silently change."""
    last = save_dir / "checkpoint_last.pt"
    if "--fwp-carry-state" not in cmd or not last.is_file():
        return
    before, now = carry_layout_of_checkpoint(last), carry_layout_of_command(cmd)
    if before != now:
        show = lambda x: (f"--batch-size {x['batch_size']} x world size {x['world_size']} = "  # noqa: E731
                          f"{(x['batch_size'] or 0) * (x['world_size'] or 0)} streams of "
                          f"--tokens-per-sample {x['tokens_per_sample']}")
        raise RecipeError(f"{last} was trained with --carry over {show(before)}; this command has {show(now)}. "
                          f"Resuming would continue at the saved segment of other streams (other slices of the "
                          f"text), changing the experiment: use the same GPU count (FWP_NUM_GPUS="
                          f"{before['world_size']}) and --batch-size, or --fresh to start over")


def _is_rank0() -> bool:
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def train(argv: Sequence[str]) -> int:
    p = _parser("train.sh", "Train one WikiText-103 model of Tables 2-5; other arguments go to fairseq-train.\n"
                "Run it again after a kill: it continues from SAVE_DIR/checkpoint_last.pt.")
    _setting_args(p)
    p.add_argument("--precision", choices=common.PRECISIONS, help="GPU precision (default bf16 if supported, else fp16)")
    p.add_argument("--max-per-gpu", type=int, metavar="N",
                   help="most sequences per GPU per step (default 48 small / 28 medium, as on 16 GB V100s); "
                        "--update-freq makes up the rest of the paper's batch")
    p.add_argument("--dry-run", action="store_true", help="print the fairseq-train command and stop")
    p.add_argument("--fresh", action="store_true", help="delete this run's checkpoints and start over")
    a, extra = common.parse_known_args(p, argv)
    s = _setting_from(a)
    data, save_dir = _paths(a, s)
    workers = common.world_size()
    precision = a.precision or default_precision()
    cmd, info = train_command(s, data, save_dir, workers=workers, precision=precision,
                              max_per_gpu=a.max_per_gpu, extra=extra)
    where = "CPU" if workers == 0 else f"{workers} GPU process(es), {precision}"
    _log(f"run {s.name}: {s.cfg.note}; {where}; {info['per_gpu']} sequences x {info['processes']} process(es) x "
         f"update-freq {info['update_freq']} = {s.cfg.batch} x {s.cfg.tokens_per_sample} = "
         f"{info['tokens_per_update']:,} tokens per update")
    if a.dry_run:  # the command even before the data exists: check the GPU arithmetic first
        try:
            data_info(data)
        except RecipeError as e:
            _log(f"note: the data is missing: {e}")
        print(shlex.join(cmd))
        return 0
    data_info(data)
    steps = common.Steps(save_dir)
    key = common.key_of(s, [str(x) for x in extra])
    if a.fresh and save_dir.exists() and _is_rank0():
        _log(f"--fresh: removing {save_dir}")
        shutil.rmtree(save_dir)
    last = save_dir / "checkpoint_last.pt"
    if steps.done("train", key, [last]):
        _log(f"{s.name}: training finished earlier ({save_dir}/.steps/train); --fresh retrains")
        return 0
    if last.exists():
        check_carry_resume(save_dir, cmd)
        _log(f"{s.name}: continuing from {last}")
    save_dir.mkdir(parents=True, exist_ok=True)
    common.run(cmd, log=save_dir / "train.log")
    if _is_rank0():
        steps.mark("train", key, [last])
    _log(f"{s.name}: done; checkpoints in {save_dir}")
    return 0


# ----------------------------------------------------------------------- evaluate

MODES = ("sliding", "full")
_PPL = re.compile(r"Loss \(base 2\): ([0-9.]+|nan|inf), Perplexity: ([0-9.]+|nan|inf)")
_NTOK = re.compile(r"Evaluated ([0-9,]+) tokens")


def eval_command(s: Setting, data: Path, checkpoint: Path, mode: str, split: str, *, cpu: bool,
                 batch: Optional[int] = None) -> List[str]:
    """fairseq-eval-lm in the paper's two evaluation modes (see fairseq_fwp's
    fwp_language_modeling task): ``sliding`` scores every token with min(t, L-1) tokens
    of context (Tables 2, 3, 5), ``full`` carries the state through the split (Table 4)."""
    cmd = common.fairseq_cmd(
        "eval_lm", data, "--user-dir", common.USER_DIR, "--task", "fwp_language_modeling",
        "--path", checkpoint, "--gen-subset", split, "--tokens-per-sample", s.cfg.tokens_per_sample,
        "--fwp-eval-mode", mode, "--log-format", "simple",
    )
    if mode == "sliding":
        cmd += ["--batch-size", batch or s.cfg.eval_batch]
    else:
        cmd += ["--batch-size", 1]
    if cpu:
        cmd.append("--cpu")
    return [str(c) for c in cmd]


def parse_eval(output: str) -> Tuple[float, Optional[int]]:
    """(perplexity, scored tokens) from fairseq-eval-lm's output."""
    m = None
    for m in _PPL.finditer(output):
        pass
    if m is None:
        raise RecipeError("fairseq-eval-lm printed no 'Loss (base 2): X, Perplexity: Y' line")
    n = None
    for t in _NTOK.finditer(output):
        n = int(t.group(1).replace(",", ""))
    return float(m.group(2)), n


def model_stats(checkpoint: Path) -> dict:
    """Parameters and fast weight state size of a trained model, from its checkpoint:
    state size = layers x heads x d_dot x d_head (the paper's Table 4, Appendix F)."""
    import torch

    import fairseq_fwp  # noqa: F401  (checkpoint globals for torch.load)
    from fairseq_fwp.modules.feature_maps import build_feature_map

    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    seen, params = set(), 0
    for name, t in ck["model"].items():
        if not t.is_floating_point() or "_float_tensor" in name or name.endswith(".version"):
            continue
        if "feature_map" in name:  # FAVOR+'s random features: a buffer, not trained
            continue
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ptr in seen:
            continue
        seen.add(ptr)
        params += t.numel()
    m = ck["cfg"]["model"]
    get = (lambda k: getattr(m, k)) if not isinstance(m, dict) else m.get
    layers, heads, dim = int(get("decoder_layers")), int(get("decoder_attention_heads")), int(get("decoder_embed_dim"))
    fm = str(get("fwp_feature_map"))
    d_head = dim // heads
    if fm == "softmax":
        d_dot, state = None, None
    else:
        d_dot = build_feature_map(fm, d_head, dpfp_nu=int(get("fwp_dpfp_nu")),
                                  favor_features=int(get("fwp_favor_features"))).d_dot
        state = layers * heads * d_dot * d_head
    return {"params": params, "layers": layers, "heads": heads, "d_head": d_head, "d_dot": d_dot,
            "state": state, "num_updates": ck.get("optimizer_history", [{}])[-1].get("num_updates")}


def _m(x: Optional[float], digits: int = 2) -> str:
    return "—" if x is None else f"{x / 1e6:.{digits}f}"


def _p(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    return f"{x:.2f}" if x < 1000 else f"{x:.0f}"


RESULTS_PREAMBLE = """# WikiText-103 results (paper Sec. 6.3, Tables 2-5)

Written by `recipes/wikitext103/evaluate.sh`; one row per run, replaced when the run is
evaluated again. Perplexities: *sliding* = every token scored with min(t, L-1) tokens of
context (the paper's Tables 2, 3, 5), *full* = the state carried through the whole split
(Table 4). The paper's numbers are beside ours (valid / test). State size = layers x heads
x d_dot x d_head, computed from the checkpoint. Table 4's Transformer-XL rows (paper only):
state 0.13M: 65.7 / 65.5; 1.05M: 29.3 / 30.1; 2.10M: 26.4 / 27.4; 6.29M: 24.6 / 25.5.
"""

SECTIONS = {
    2: ("Table 2: update rule, limited context (sliding window)",
        ["run", "config", "model", "update rule", "params (M)", "updates", "valid", "test",
         "full valid", "full test", "paper valid", "paper test"]),
    3: ("Table 3: Delta Net ablations (medium, sliding window)",
        ["run", "pos. encoding", "attn. norm.", "updates", "valid", "test", "paper valid", "paper test"]),
    4: ("Table 4: without truncating context (medium, state carried)",
        ["run", "model", "params (M)", "state size (M)", "updates", "valid", "test",
         "paper params (M)", "paper state (M)", "paper valid", "paper test"]),
    5: ("Table 5: non-overcapacity regime (small, d_dot = 256)",
        ["run", "model", "update rule", "d_dot (all heads)", "updates", "valid", "test",
         "full valid", "full test", "paper valid", "paper test"]),
    0: ("Other runs (no paper row)",
        ["run", "config", "model", "pos. encoding", "attn. norm.", "carry", "params (M)", "state size (M)",
         "updates", "sliding valid", "sliding test", "full valid", "full test"]),
}


def section_table(path: Path, title: str, header: Sequence[str], row: Sequence, preamble: str = "") -> None:
    """Put ``row`` into the Markdown table under ``## title`` in ``path`` (several tables
    in one file): it replaces the row with the same first cell, else it is appended; a
    missing section is added at the end, a missing file starts with ``preamble``."""
    fmt = lambda values: "| " + " | ".join(str(v) for v in values) + " |"  # noqa: E731
    if len(row) != len(header):
        raise ValueError(f"row has {len(row)} cells, header {len(header)}")
    lines = path.read_text().splitlines() if path.exists() else preamble.rstrip().splitlines()
    head = f"## {title}"
    if head not in lines:
        lines += ["", head, "", fmt(header), fmt(["---"] * len(header))]
    start = lines.index(head)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = fmt(row)
    first = str(row[0])
    last_table = start
    for i in range(start + 1, end):
        if lines[i].startswith("|"):
            last_table = i
            if lines[i].strip("| ").split("|")[0].strip() == first:
                lines[i] = new
                break
    else:
        lines.insert(last_table + 1, new)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def result_rows(s: Setting, stats: dict, ppl: Dict[Tuple[str, str], Optional[float]]) -> List[Tuple[int, list]]:
    """(section, row) for each table the run belongs to ('Other runs' when none)."""
    get = lambda mode, split: _p(ppl.get((mode, split)))  # noqa: E731
    rule = s.spec.update_rule if s.fast_weights else "—"
    norm = ("on" if s.effective_attn_norm else "off") if s.fast_weights else "—"
    upd = stats.get("num_updates") or "—"
    rows = []
    for table, paper in paper_rows(s):
        if table == 2:
            rows.append((2, [s.name, s.config, s.spec.label, rule, _m(stats["params"], 1), upd,
                             get("sliding", "valid"), get("sliding", "test"), get("full", "valid"),
                             get("full", "test"), *map(str, paper)]))
        elif table == 3:
            rows.append((3, [s.name, "yes" if s.pos else "no", "yes" if s.effective_attn_norm else "no", upd,
                             get("sliding", "valid"), get("sliding", "test"), *map(str, paper)]))
        elif table == 4:
            rows.append((4, [s.name, s.spec.label, _m(stats["params"], 1), _m(stats["state"]), upd,
                             get("full", "valid"), get("full", "test"), *paper]))
        elif table == 5:
            d_dot = "—" if stats["d_dot"] is None else stats["d_dot"] * stats["heads"]
            rows.append((5, [s.name, s.spec.label, rule, d_dot, upd, get("sliding", "valid"),
                             get("sliding", "test"), get("full", "valid"), get("full", "test"), *map(str, paper)]))
    if not rows:
        rows.append((0, [s.name, s.config, s.spec.label, "yes" if s.pos else "no", norm, "yes" if s.carry else "no",
                         _m(stats["params"], 3), _m(stats["state"], 4), upd, get("sliding", "valid"),
                         get("sliding", "test"), get("full", "valid"), get("full", "test")]))
    return rows


def evaluate(argv: Sequence[str]) -> int:
    p = _parser("evaluate.sh", "Valid/test perplexity of a trained run in both modes; rows into the results file.")
    _setting_args(p)
    p.add_argument("--checkpoint", default="best", help="best, last or a path (default best)")
    p.add_argument("--modes", default="sliding,full", help="comma-separated subset of sliding, full")
    p.add_argument("--splits", default="valid,test", help="comma-separated subset of valid, test")
    p.add_argument("--batch-size", type=int, help="sliding-window windows per batch (default per config)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help=f"Markdown results file (default {DEFAULT_RESULTS.relative_to(common.REPO)})")
    a = common.parse_args(p, argv)
    s = _setting_from(a)
    data, save_dir = _paths(a, s)
    modes = [common.check_choice("--modes entry", m, MODES) for m in a.modes.split(",") if m]
    splits = [common.check_choice("--splits entry", x, ("valid", "test")) for x in a.splits.split(",") if x]
    ck = Path(a.checkpoint) if a.checkpoint not in ("best", "last") else save_dir / f"checkpoint_{a.checkpoint}.pt"
    if not ck.is_file():
        raise RecipeError(f"{ck}: no checkpoint; train first: recipes/wikitext103/train.sh {s.config} {s.model} ...")
    info = data_info(data)
    stats = model_stats(ck)
    cpu = common.world_size() == 0
    log = save_dir / "evaluate.log"
    ppl: Dict[Tuple[str, str], Optional[float]] = {}
    for mode in modes:
        if mode == "full" and not s.fast_weights:
            _log(f"{s.name}: no fast weight state to carry (softmax attention); full mode skipped")
            continue
        for split in splits:
            out = common.run(eval_command(s, data, ck, mode, split, cpu=cpu, batch=a.batch_size), log=log)
            value, ntok = parse_eval(out)
            ppl[(mode, split)] = value
            print(f"RESULT run={s.name} mode={mode} split={split} ppl={value:.4f} tokens={ntok} "
                  f"vocab={info['vocab']}", flush=True)
    for section, row in result_rows(s, stats, ppl):
        title, header = SECTIONS[section]
        section_table(a.results, title, header, row, RESULTS_PREAMBLE)
    _log(f"{s.name}: params {stats['params']:,}, state size "
         f"{'—' if stats['state'] is None else format(stats['state'], ',')}; rows in {a.results}")
    return 0


# -------------------------------------------------------------------- toy corpus


def toy_articles(n_articles: int, seed: int, sentences: Tuple[int, int] = (8, 30)) -> str:
    """Text laid out like WikiText-103's token files: ' = Title = ' headings, ' = = Section
    = = ' subheadings, paragraphs of sentences from fairseq_fwp.toy_data's grammar, blank
    lines between, every line starting with a space."""
    from fairseq_fwp.toy_data import lm_sentences

    rng = random.Random(seed)
    out = [" \n"]
    for a in range(n_articles):
        out += [f" = {rng.choice(['the', 'a'])} {rng.choice(['cat', 'dog', 'robot', 'bird'])} = \n", " \n"]
        for para in range(rng.randint(2, 4)):
            if para:
                out += [f" = = {rng.choice(['big', 'red', 'small'])} = = \n", " \n"]
            n = rng.randint(*sentences)
            out += [" " + " ".join(lm_sentences(n, seed=seed * 100_003 + a * 10 + para)) + " \n", " \n"]
    return "".join(out)


def write_toy_raw(out: Path, kind: str = "zip", articles=(60, 6, 6), seed: int = 1) -> Path:
    """A small generated corpus in WikiText-103's layout: ``out/wikitext-103-v1.zip``
    (kind 'zip', members wikitext-103/wiki.*.tokens) or ``out/wiki.*.tokens`` ('files')."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = {s: toy_articles(n, seed * 10 + k) for k, (s, n) in enumerate(zip(SPLITS, articles))}
    if kind == "files":
        for s, text in texts.items():
            (out / TOKEN_FILES[s]).write_text(text)
        return out
    path = out / ZIP_NAME
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for s, text in texts.items():
            z.writestr(f"{ZIP_DIR}/{TOKEN_FILES[s]}", text)
    return path


def toy(argv: Sequence[str]) -> int:
    p = _parser("launch.py wikitext103 toy", "Write a small generated corpus in WikiText-103's layout.")
    p.add_argument("out", type=Path)
    p.add_argument("--files", action="store_true", help="three loose wiki.*.tokens files instead of the zip")
    p.add_argument("--articles", default="60,6,6", help="TRAIN,VALID,TEST articles")
    p.add_argument("--seed", type=int, default=1)
    a = common.parse_args(p, argv)
    sizes = tuple(int(x) for x in a.articles.split(","))
    print(write_toy_raw(a.out, "files" if a.files else "zip", sizes, a.seed))
    return 0


# -------------------------------------------------------------------------- smoke

SMOKE_RUNS = (("transformer",), ("delta",), ("delta", "--carry"))


def smoke(argv: Sequence[str]) -> int:
    p = _parser("smoke.sh", "Every stage at CPU scale: generated --raw archive, prepare, train "
                "(transformer, delta, delta --carry; config 'tiny'), evaluate in both modes, results table.")
    p.add_argument("--out", type=Path, default=common.REPO / "outputs" / "wikitext103-smoke")
    p.add_argument("--max-update", type=int, default=None, help="updates per model (default: the tiny config's)")
    a = common.parse_args(p, argv)
    out = a.out.resolve()
    t0 = time.time()
    archive = write_toy_raw(out / "archive")
    os.environ.setdefault("FWP_NUM_GPUS", "0")  # CPU, whatever the machine has
    prepare(["--raw", str(archive), "--workdir", str(out), "--workers", "1"])
    results = out / "results.md"
    extra = [] if a.max_update is None else ["--max-update", str(a.max_update)]
    for run in SMOKE_RUNS:
        train(["tiny", *run, "--workdir", str(out), *extra])
        evaluate(["tiny", *run, "--workdir", str(out), "--results", str(results)])
    print(results.read_text())
    vocab = data_info(out / "data-bin")["vocab"]
    print(f"SMOKE done in {time.time() - t0:.0f} s; uniform-vocabulary perplexity {vocab}; results: {results}")
    return 0


COMMANDS = {"prepare": prepare, "train": train, "evaluate": evaluate, "smoke": smoke, "toy": toy}
