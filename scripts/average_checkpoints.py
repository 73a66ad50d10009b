#!/usr/bin/env python
"""Average the model parameters of several fairseq checkpoints into one checkpoint.

    # explicit files (the last one given is the "base" whose cfg/extra state is kept)
    python scripts/average_checkpoints.py --inputs ck/checkpoint3.pt ck/checkpoint4.pt \
        --output ck/averaged.pt
    # the last N epoch checkpoints (checkpointE.pt) or update checkpoints
    # (checkpoint_E_U.pt) of a save dir
    python scripts/average_checkpoints.py --inputs ck --num-epoch-checkpoints 5 --output ck/avg5.pt
    python scripts/average_checkpoints.py --inputs ck --num-update-checkpoints 5 --output ck/avg5.pt

The output is a normal fairseq checkpoint: load it with
``fairseq-generate ... --user-dir fairseq_fwp --path ck/avg5.pt``.

What is averaged: every floating-point tensor of ``state["model"]`` (accumulated in
float64, written back in the base checkpoint's dtype). Copied from the base
checkpoint instead: integer/bool tensors (counters such as FAVOR+'s ``draws``), and
tensors whose key matches ``--copy-from-base`` (default: FAVOR+'s random feature
buffers ``feature_map.features`` -- averaging independent random draws would not give
a valid set of random features). Everything else (``cfg``/``args``, ``extra_state``,
...) comes from the base checkpoint; the optimizer state is dropped (pass
``--keep-optimizer-state`` to keep the base's) and ``extra_state["averaged_from"]``
lists the inputs.

Errors (missing files, too few checkpoints in a dir, mismatched keys or shapes) are
reported with the offending file and keys, and nothing is written.

Loads with torch's safe ``weights_only`` unpickler plus the allowlist of
``fairseq_fwp.compat.checkpoint_compat`` (needed for torch >= 2.6).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

import torch

DEFAULT_COPY_FROM_BASE = r"(^|\.)feature_map\.features$"


class AverageError(Exception):
    """A user-facing error (bad inputs); printed without a traceback."""


def _allow_fairseq_checkpoints() -> None:
    try:
        from fairseq_fwp.compat.checkpoint_compat import allow_fairseq_checkpoints
    except ImportError:  # running from a checkout without installing
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        from fairseq_fwp.compat.checkpoint_compat import allow_fairseq_checkpoints
    allow_fairseq_checkpoints()


def find_checkpoints(
    directory: str, n: int, kind: str, upper_bound: Optional[int] = None
) -> List[str]:
    """The ``n`` newest epoch (``checkpointE.pt``) or update (``checkpoint_E_U.pt``)
    checkpoints in ``directory``, oldest first."""
    if kind == "epoch":
        pattern = re.compile(r"^checkpoint(\d+)\.pt$")
    elif kind == "update":
        pattern = re.compile(r"^checkpoint_\d+_(\d+)\.pt$")
    else:
        raise ValueError(kind)
    if not os.path.isdir(directory):
        raise AverageError(f"not a directory: {directory}")
    found = []
    for name in os.listdir(directory):
        m = pattern.match(name)
        if m:
            step = int(m.group(1))
            if upper_bound is None or step <= upper_bound:
                found.append((step, os.path.join(directory, name)))
    found.sort()
    if len(found) < n:
        what = "checkpointE.pt" if kind == "epoch" else "checkpoint_E_U.pt"
        bound = f" at or below {upper_bound}" if upper_bound is not None else ""
        raise AverageError(
            f"asked for {n} {kind} checkpoints but {directory} holds {len(found)} "
            f"({what}{bound}): {[os.path.basename(p) for _, p in found]}"
        )
    return [p for _, p in found[-n:]]


def _load(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            state = torch.load(f, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - report which file failed and why
        raise AverageError(f"cannot load {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise AverageError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    return state


def average_checkpoints(
    paths: Sequence[str],
    copy_from_base: str = DEFAULT_COPY_FROM_BASE,
    keep_optimizer_state: bool = False,
) -> dict:
    """Average ``paths`` (the last one is the base) and return the new checkpoint dict."""
    if not paths:
        raise AverageError("no input checkpoints")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise AverageError(f"missing checkpoint file(s): {', '.join(missing)}")
    if len(set(os.path.abspath(p) for p in paths)) != len(paths):
        raise AverageError(f"the same checkpoint is listed twice: {list(paths)}")
    copy_re = re.compile(copy_from_base) if copy_from_base else None

    base_path = paths[-1]
    base = _load(base_path)
    base_model: Dict[str, torch.Tensor] = base["model"]
    keys = list(base_model.keys())
    key_set = set(keys)
    sums: Dict[str, torch.Tensor] = {}
    differing_copied = set()

    def averaged(key: str, t: torch.Tensor) -> bool:
        return t.is_floating_point() and not (copy_re and copy_re.search(key))

    for path in paths:
        state = base if path == base_path else _load(path)
        model = state["model"]
        other = set(model.keys())
        if other != key_set:
            only_here = sorted(other - key_set)
            only_base = sorted(key_set - other)
            raise AverageError(
                f"{path} and {base_path} hold different parameters: "
                f"only in {os.path.basename(path)}: {only_here[:10]}{' ...' if len(only_here) > 10 else ''}; "
                f"only in {os.path.basename(base_path)}: {only_base[:10]}{' ...' if len(only_base) > 10 else ''} "
                "(were they trained with the same --arch and flags?)"
            )
        for k in keys:
            t, b = model[k], base_model[k]
            if not isinstance(t, torch.Tensor):
                continue
            if t.shape != b.shape:
                raise AverageError(
                    f"parameter {k} has shape {tuple(t.shape)} in {path} but {tuple(b.shape)} in {base_path}"
                )
            if averaged(k, b):
                if k in sums:
                    sums[k] += t.to(torch.float64)
                else:
                    sums[k] = t.to(torch.float64).clone()
            elif path != base_path and not torch.equal(t, b):
                differing_copied.add(k)
        del state

    new_model = collections.OrderedDict()
    for k in keys:
        b = base_model[k]
        if k in sums:
            new_model[k] = (sums[k] / len(paths)).to(b.dtype)
        else:
            new_model[k] = b
    if differing_copied:
        shown = sorted(differing_copied)
        print(
            f"note: {len(shown)} non-averaged tensor(s) differ between inputs; taken from "
            f"{base_path}: {shown[:5]}{' ...' if len(shown) > 5 else ''}",
            file=sys.stderr,
        )

    out = dict(base)
    out["model"] = new_model
    if not keep_optimizer_state:
        out["last_optimizer_state"] = None
    extra = dict(out.get("extra_state") or {})
    extra["averaged_from"] = [os.path.abspath(p) for p in paths]
    out["extra_state"] = extra
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Average the parameters of fairseq checkpoints (fairseq-fwp).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--inputs", required=True, nargs="+",
        help="checkpoint files, or one directory together with --num-epoch-checkpoints/--num-update-checkpoints",
    )
    p.add_argument("--output", required=True, help="where to write the averaged checkpoint")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num-epoch-checkpoints", type=int, help="average the last N checkpointE.pt of the directory")
    g.add_argument("--num-update-checkpoints", type=int, help="average the last N checkpoint_E_U.pt of the directory")
    p.add_argument("--checkpoint-upper-bound", type=int, help="ignore checkpoints after this epoch/update")
    p.add_argument(
        "--copy-from-base", default=DEFAULT_COPY_FROM_BASE,
        help="regex of floating-point model keys to copy from the base (last) checkpoint instead of averaging; '' averages all",
    )
    p.add_argument("--keep-optimizer-state", action="store_true", help="keep the base checkpoint's optimizer state")
    a = p.parse_args(argv)

    try:
        n = a.num_epoch_checkpoints or a.num_update_checkpoints
        if n is not None:
            if n < 1:
                raise AverageError("--num-epoch-checkpoints/--num-update-checkpoints must be >= 1")
            if len(a.inputs) != 1:
                raise AverageError("with --num-*-checkpoints, --inputs takes exactly one directory")
            kind = "epoch" if a.num_epoch_checkpoints else "update"
            paths = find_checkpoints(a.inputs[0], n, kind, a.checkpoint_upper_bound)
        else:
            if a.checkpoint_upper_bound is not None:
                raise AverageError("--checkpoint-upper-bound needs --num-epoch-checkpoints or --num-update-checkpoints")
            if len(a.inputs) == 1 and os.path.isdir(a.inputs[0]):
                raise AverageError(
                    f"{a.inputs[0]} is a directory: add --num-epoch-checkpoints N or --num-update-checkpoints N"
                )
            paths = list(a.inputs)
        out_abs = os.path.abspath(a.output)
        if out_abs in (os.path.abspath(x) for x in paths):
            raise AverageError(f"--output {a.output} would overwrite one of the inputs")

        _allow_fairseq_checkpoints()
        print(f"averaging {len(paths)} checkpoint(s):", file=sys.stderr)
        for x in paths:
            print(f"  {x}", file=sys.stderr)
        state = average_checkpoints(paths, a.copy_from_base, a.keep_optimizer_state)
        os.makedirs(os.path.dirname(out_abs) or ".", exist_ok=True)
        tmp = out_abs + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, out_abs)
        print(f"wrote {a.output}", file=sys.stderr)
        return 0
    except AverageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
