"""Sweeps of the synthetic associative retrieval task (paper Sec. 6.1, Fig. 2, 3 and 5).

    python recipes/launch.py synthetic capacity      [--quick] [--jobs N] [--out DIR] ...
    python recipes/launch.py synthetic update_rules  [--quick] [--jobs N] [--out DIR] ...

(``recipes/synthetic/{capacity,update_rules,quick}.sh`` call these and draw the figures.)

Every run is one ``fairseq-train`` (``python -m fairseq_cli.train``) of
``--task associative_retrieval --arch fwp_retrieval --criterion retrieval_mse`` with the
authors' optimisation: Adam lr 1e-3, batch 32, evaluation every 100 updates on 20 fixed
sequences x all queries, stop at eval loss <= 0.001 or after 10 evaluations without a
new best, at most 100k updates. Layout under ``--out`` (default ``outputs/synthetic``, git-ignored)::

    <setting>/<model>/S<S>/history.csv   one row per evaluation (written by the task)
    <setting>/<model>/S<S>/train.log     fairseq-train's output
    <setting>/<model>/S<S>/final.csv     the run's result (marked done in .steps/, as every recipe step)
    <setting>/results.csv                all final rows of the setting (rewritten at the end)

Finished runs are skipped, so an interrupted sweep resumes where it stopped (``--force``
reruns). Runs go ``--jobs`` at a time (env ``JOBS``). A CUDA GPU is used when present
(no ``--cpu``); on CPU every job gets cores/jobs threads.
"""

import argparse
import csv
import math
import os
import shutil
import sys
import time
from typing import Dict, List, NamedTuple, Optional

from fairseq_fwp import presets

from . import common

REPO = str(common.REPO)
STOP_LOSS = 0.001
FINAL_FIELDS = [
    "setting", "model", "num_keys", "seq_len", "d_key", "final_loss", "best_loss", "final_accuracy",
    "num_updates", "evaluations", "status", "seconds", "device",
]


def phi(name: str) -> List[str]:
    """``softmax``, ``linear``, ``favor<m>`` or ``dpfp<nu>`` as ``--fwp-feature-map`` flags."""
    for fm, size in (("favor", "m"), ("dpfp", "nu")):
        if name.startswith(fm):
            return presets.feature_map_flags(fm, **{size: int(name[len(fm):])})
    if name in ("softmax", "linear"):
        return presets.feature_map_flags(name)
    raise ValueError(f"unknown feature map {name!r}")


def capacity_models(maps: List[str]) -> Dict[str, List[str]]:
    """The sum rule read attention-normalised, as the authors' code (softmax: the baseline)."""
    return {m: phi(m) + ([] if m == "softmax" else list(presets.RULES["sum"].flags)) for m in maps}


def update_rule_models(rules_per_map: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """{feature map: [rules]} -> {"<map>-<rule>": flags}; rules: ``fairseq_fwp.presets.RULES``
    (sum, delta = ours with sum normalisation, delta-nosn, fwm = Schlag et al. 2021's FWM)."""
    return {f"{m}-{r}": phi(m) + list(presets.RULES[r].flags) for m, rules in rules_per_map.items() for r in rules}


# setting -> scale -> configuration
SETTINGS = {
    "capacity": {  # setting 1, Fig. 2: no replacement, L = S, sum rule
        "full": dict(
            d_key=64, replace=False, sizes=list(range(20, 601, 20)), max_update=100_000,
            models=capacity_models(["softmax", "linear", "favor64", "favor128", "favor512",
                                    "dpfp1", "dpfp2", "dpfp3"]),
        ),
        "quick": dict(  # d_key 16: linear holds ~16 pairs, DPFP-1/2/3 ~32/64/96
            d_key=16, replace=False, sizes=[8, 16, 32, 48, 64], max_update=2000,
            models=capacity_models(["softmax", "linear", "favor32", "dpfp1", "dpfp2", "dpfp3"]),
        ),
    },
    "update_rules": {  # setting 2, Fig. 3 and 5: with replacement, L = 2S
        "full": dict(
            d_key=64, replace=True, sizes=list(range(20, 201, 20)), max_update=100_000,
            models=update_rule_models({
                "dpfp1": ["sum", "delta", "delta-nosn", "fwm"],
                "linear": ["sum", "delta", "delta-nosn", "fwm"],
                "favor64": ["sum", "delta", "delta-nosn"],
            }),
        ),
        "quick": dict(
            d_key=16, replace=True, sizes=[8, 16, 32], max_update=2000,
            models=update_rule_models({
                "dpfp1": ["sum", "delta", "delta-nosn", "fwm"],
                "linear": ["sum", "delta"],
            }),
        ),
    },
}


class Job(NamedTuple):
    setting: str
    model: str
    flags: List[str]
    num_keys: int
    d_key: int
    replace: bool
    max_update: int
    run_dir: str


def fairseq_command(job: Job, device: str, seed: int) -> List[str]:
    cmd = [
        *common.fairseq_cmd("train"), "--user-dir", common.USER_DIR,
        "--task", "associative_retrieval", "--num-keys", str(job.num_keys), "--d-key", str(job.d_key),
        "--eval-sequences", "20", "--results-csv", os.path.join(job.run_dir, "history.csv"),
        "--arch", "fwp_retrieval", *job.flags,
        "--criterion", "retrieval_mse",
        "--optimizer", "adam", "--lr", "1e-3",
        "--lr-scheduler", "stop_at_loss", "--stop-at-loss", str(STOP_LOSS), "--stop-min-lr", "0",
        "--batch-size", "32", "--batch-size-valid", "256",
        "--validate-interval-updates", "100", "--patience", "10", "--max-update", str(job.max_update),
        "--seed", str(seed), "--no-save", "--num-workers", "0",
        "--log-format", "simple", "--log-interval", "100",
    ]
    if job.replace:
        cmd.append("--with-replacement")
    if device == "cpu":
        cmd.append("--cpu")
    return cmd


def read_history(path: str) -> List[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summarize(job: Job, rc: int, log_text: str, seconds: float, device: str) -> Optional[dict]:
    """The run's final row, or None when it failed for a reason other than divergence."""
    hist = read_history(os.path.join(job.run_dir, "history.csv"))
    losses = [float(h["loss"]) for h in hist]
    diverged = "FloatingPointError" in log_text or any(math.isnan(x) for x in losses)
    if rc != 0 and not diverged:
        return None
    final = losses[-1] if losses else float("nan")
    updates = int(hist[-1]["num_updates"]) if hist else 0
    if diverged:
        status, final = "diverged", float("nan")
    elif final <= STOP_LOSS:
        status = "converged"
    elif updates >= job.max_update:
        status = "max_update"
    else:
        status = "patience"
    L = 2 * job.num_keys if job.replace else job.num_keys
    return {
        "setting": job.setting, "model": job.model, "num_keys": job.num_keys, "seq_len": L,
        "d_key": job.d_key, "final_loss": final, "best_loss": min(losses) if losses else float("nan"),
        "final_accuracy": float(hist[-1]["accuracy"]) if hist and not diverged else float("nan"),
        "num_updates": updates, "evaluations": len(hist), "status": status,
        "seconds": round(seconds, 1), "device": device,
    }


def write_rows(path: str, rows: List[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FINAL_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def run_job(job: Job, device: str, threads: int, seed: int, force: bool) -> str:
    cmd = fairseq_command(job, device, seed)
    steps = common.Steps(job.run_dir)
    final_path = os.path.join(job.run_dir, "final.csv")
    key = common.key_of(cmd)
    if steps.done("final", key, [final_path]) and not force:
        return f"skip  {job.model} S={job.num_keys} (done)"
    if os.path.isdir(job.run_dir):
        shutil.rmtree(job.run_dir)  # a half-finished run starts over
    os.makedirs(job.run_dir)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if device == "cpu" else None
    start = time.time()
    log_path = os.path.join(job.run_dir, "train.log")
    rc, text = common.execute(cmd, log=log_path, env=env, cwd=REPO, echo=False)
    row = summarize(job, rc, text, time.time() - start, device)
    if row is None:
        tail = "\n".join(text.splitlines()[-15:])
        return f"FAIL  {job.model} S={job.num_keys} (rc={rc}, see {log_path}):\n{tail}"
    write_rows(final_path, [row])
    steps.mark("final", key, [final_path])
    return (f"done  {job.model:18s} S={job.num_keys:4d} loss={row['final_loss']:.6f} "
            f"acc={row['final_accuracy']:.1f} updates={row['num_updates']} {row['status']} ({row['seconds']}s)")


def collect(out_dir: str, setting: str) -> List[dict]:
    rows = []
    base = os.path.join(out_dir, setting)
    if not os.path.isdir(base):
        return rows
    for model in sorted(os.listdir(base)):
        mdir = os.path.join(base, model)
        if not os.path.isdir(mdir):
            continue
        for run in os.listdir(mdir):
            rows += read_history(os.path.join(mdir, run, "final.csv"))
    rows.sort(key=lambda r: (r["model"], int(r["num_keys"])))
    return rows


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="launch.py synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", choices=sorted(SETTINGS), help="capacity = setting 1 (Fig. 2); update_rules = setting 2 (Fig. 3, 5)")
    p.add_argument("--quick", action="store_true", help="CPU scale: d_key 16, S <= 64, <= 2000 updates per run")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "1")), help="parallel runs (env JOBS)")
    p.add_argument("--out", default=os.environ.get("OUT", os.path.join(REPO, "outputs", "synthetic")),
                   help="output folder (env OUT)")
    p.add_argument("--models", help="comma-separated subset of the setting's models")
    p.add_argument("--sizes", help="comma-separated S values (default: the setting's)")
    p.add_argument("--max-update", type=int, help="override the maximum number of updates per run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--list", action="store_true", help="print the runs and their commands, run nothing")
    args = common.parse_args(p, argv)

    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    scale = "quick" if args.quick else "full"
    conf = SETTINGS[args.setting][scale]
    models = conf["models"]
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        bad = [m for m in wanted if m not in models]
        if bad:
            p.error(f"--models: unknown model(s) {', '.join(bad)} for {args.setting} ({scale}); valid: {', '.join(models)}")
        models = {m: models[m] for m in wanted}
    try:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else conf["sizes"]
    except ValueError:
        p.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if any(s < 2 for s in sizes):
        p.error(f"--sizes: every S must be >= 2, got {sizes}")
    max_update = args.max_update or conf["max_update"]

    import torch  # noqa: E402  (only for the device choice)

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    try:
        import fwp_kernels  # noqa: F401
    except ImportError:
        p.error("fwp_kernels is not importable: pip install the package (pip install -e .) or put it on PYTHONPATH")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    out_dir = os.path.abspath(args.out)
    jobs = [
        Job(args.setting, name, flags, S, conf["d_key"], conf["replace"], max_update,
            os.path.join(out_dir, args.setting, name, f"S{S}"))
        for S in sorted(sizes, reverse=True) for name, flags in models.items()
    ]
    if args.list:
        for j in jobs:
            print(" ".join(fairseq_command(j, device, args.seed)))
        return 0
    print(f"{args.setting} ({scale}): {len(jobs)} runs, {args.jobs} at a time on {device}, results in {out_dir}",
          flush=True)
    messages = []

    def one(job):
        messages.append(run_job(job, device, threads, args.seed, args.force))
        print(messages[-1], flush=True)

    common.run_all(one, jobs, args.jobs)
    failures = sum(m.startswith("FAIL") for m in messages)
    rows = collect(out_dir, args.setting)
    results = os.path.join(out_dir, args.setting, "results.csv")
    write_rows(results, rows)
    print(f"{len(rows)} finished runs -> {results}")
    if failures:
        print(f"{failures} run(s) failed; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


COMMANDS = {setting: (lambda argv, setting=setting: main([setting, *argv])) for setting in SETTINGS}
