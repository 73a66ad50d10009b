"""``train``: one run's fairseq-train command (the paper's batch on any GPU count, the carried-state
streams of Table 4) and its resumption."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .. import common
from ..common import RecipeError
from .args import add_setting_args, log_msg, make_parser, run_paths, setting_from_args
from .data import data_info

# -------------------------------------------------------------------------- train


def train_command(s: Setting, data: Path, save_dir: Path, *, workers: int, precision: Optional[str] = None,
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
        cmd += common.precision_flags(precision) + common.distributed_flags(workers)
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


def train(argv: Sequence[str]) -> int:
    p = make_parser("train.sh", "Train one WikiText-103 model of Tables 2-5; other arguments go to fairseq-train.\n"
                "Run it again after a kill: it continues from SAVE_DIR/checkpoint_last.pt.")
    add_setting_args(p)
    p.add_argument("--precision", choices=common.PRECISIONS, help="GPU precision (default bf16 if supported, else fp16)")
    p.add_argument("--max-per-gpu", type=int, metavar="N",
                   help="most sequences per GPU per step (default 48 small / 28 medium, as on 16 GB V100s); "
                        "--update-freq makes up the rest of the paper's batch")
    p.add_argument("--dry-run", action="store_true", help="print the fairseq-train command and stop")
    p.add_argument("--fresh", action="store_true", help="delete this run's checkpoints and start over")
    a, extra = common.parse_known_args(p, argv)
    s = setting_from_args(a)
    data, save_dir = run_paths(a, s)
    workers = common.world_size()
    precision = a.precision or common.default_precision()
    cmd, info = train_command(s, data, save_dir, workers=workers, precision=precision,
                              max_per_gpu=a.max_per_gpu, extra=extra)
    where = "CPU" if workers == 0 else f"{workers} GPU process(es), {precision}"
    log_msg(f"run {s.name}: {s.cfg.note}; {where}; {info['per_gpu']} sequences x {info['processes']} process(es) x "
         f"update-freq {info['update_freq']} = {s.cfg.batch} x {s.cfg.tokens_per_sample} = "
         f"{info['tokens_per_update']:,} tokens per update")
    if a.dry_run:
        return common.dry_run(cmd, lambda: data_info(data), "wikitext103")
    data_info(data)
    common.train_once(cmd, save_dir, common.key_of(s, [str(x) for x in extra]), name=s.name, tag="wikitext103",
                      fresh=a.fresh, before_run=lambda: check_carry_resume(save_dir, cmd))
    return 0
