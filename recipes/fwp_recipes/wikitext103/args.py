"""The switches ``train`` and ``evaluate`` share: CONFIG MODEL [--pos] [--attn-norm] [--carry] ... -> a Setting."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Sequence, Tuple

from .. import common
from .paper import CONFIGS, MODELS, Setting

DEFAULT_WORKDIR = common.REPO / "outputs" / "wikitext103"
DEFAULT_RESULTS = common.REPO / "results" / "wikitext103.md"


def log_msg(msg: str) -> None:
    common.log("wikitext103", msg)

# ---------------------------------------------------------------------- arguments


def add_setting_args(p: argparse.ArgumentParser) -> None:
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


def setting_from_args(a) -> Setting:
    onoff = {"on": True, "off": False, None: None}
    s = Setting(a.config, a.model, carry=a.carry, attn_norm=onoff[a.attn_norm],
                favor_m=a.favor_features, dpfp_nu=a.dpfp_nu)
    common.check_choice("CONFIG", s.config, CONFIGS)
    common.check_choice("MODEL", s.model, MODELS)
    pos = onoff[a.pos]
    return replace(s, pos=s.default_pos if pos is None else pos).validate()


def parse_setting(argv: Sequence[str]) -> Setting:
    """The :class:`Setting` named by train.sh / evaluate.sh arguments (CONFIG MODEL [switches])."""
    p = make_parser("setting", "")
    add_setting_args(p)
    return setting_from_args(common.parse_args(p, argv))


def run_paths(a, s: Setting) -> Tuple[Path, Path]:
    workdir = a.workdir.resolve()
    data = (a.data or workdir / "data-bin").resolve()
    save_dir = (a.save_dir or workdir / "checkpoints" / s.name).resolve()
    return data, save_dir


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
