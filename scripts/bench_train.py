#!/usr/bin/env python
"""Training throughput (words/s) and peak memory of the WikiText-103 small config
(paper Sec. 6.3, "Complexity, wall clock time, memory"), with the paper's V100 figures.

Models: transformer, linear, delta, performer, dpfp — the settings of
``recipes/wikitext103`` (``fairseq_fwp.presets.lmtool_flags``, the authors' language-model
setting): Linear Transformer and Delta Net as in Table 2, Performer m = 16 and DPFP nu = 1 as in Table 5
(the paper times these two "for Table 5 with a larger d_dot"). Architecture
``fwp_lm_wt103_small``: 16 layers, D = 128, 8 heads x 16, FFN 2048, L = 256, tied
adaptive input/softmax over a 267,744-word dictionary (WikiText-103's after
fairseq-preprocess), cutoffs 20k/40k/200k.

Each model runs in its own process through fairseq's own ``Trainer.train_step`` (the
path of fairseq-train: criterion ``adaptive_loss``, Adam, clip 0.25, fp16/bf16 as
fairseq does them) on random batches of ``--batch`` sequences of L tokens whose ids follow
a Zipf(1) law over the dictionary (about WikiText-103's frequency profile, so the
adaptive softmax tails see a realistic share of targets). words/s = tokens trained per
second over ``--steps`` updates after ``--warmup`` (wall clock on CUDA; on CPU per
second of the process's CPU time, robust on a machine shared with other jobs); peak memory on CUDA =
``torch.cuda.max_memory_allocated`` (weights, Adam state, activations), on CPU the growth
of the peak resident set during the timed steps (approximate).

The paper's claim checked at the end: the delta rule costs at most 10% of the Linear
Transformer's throughput (V100: 63K vs 66K words/s, 14 vs 13 GB; softmax 33K, 17 GB;
DPFP 63K and Performer 57K words/s).

  python scripts/bench_train.py                      # GPU: batch 48 per GPU (the authors' 2 x V100 runs), fp16
  python scripts/bench_train.py --cpu-small          # CPU: batch 2 x 256 tokens, fp32 (docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fairseq_fwp.presets import lmtool_flags

REPO = Path(__file__).resolve().parents[1]
ARCH, L = "fwp_lm_wt103_small", 256  # the recipe's "small" config
# name -> (the recipe's run name, flags, paper words/s on V100, paper memory GB)
MODELS = {
    "transformer": ("small-transformer", lmtool_flags("softmax", attn_norm=False), "33K", "17"),
    "linear": ("small-linear", lmtool_flags("linear", "sum", attn_norm=True), "66K", "13"),
    "delta": ("small-delta", lmtool_flags("linear", "delta", attn_norm=False), "63K", "14"),
    "performer": ("small-performer-m16", lmtool_flags("favor", "sum", attn_norm=True, m=16), "57K", "—"),
    "dpfp": ("small-dpfp", lmtool_flags("dpfp", "sum", attn_norm=True, nu=1), "63K", "—"),
}
VOCAB = 267_744  # WikiText-103: 267,735 words + 4 specials, padded to a multiple of 8 by fairseq-preprocess


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(name: str, a) -> dict:
    """Build the model with fairseq, time ``a.steps`` train steps; returns the measurements."""
    import torch
    from fairseq import options, tasks, utils
    import fairseq.dataclass.utils as du
    from fairseq.trainer import Trainer

    run, flags = MODELS[name][:2]
    cuda = a.device == "cuda"
    with tempfile.TemporaryDirectory() as data:
        with open(os.path.join(data, "dict.txt"), "w") as f:
            for i in range(a.vocab - 4):
                f.write(f"w{i} {a.vocab - i}\n")
        argv = [data, "--user-dir", str(REPO / "fairseq_fwp"), "--task", "language_modeling",
                "--arch", ARCH, *flags, "--tokens-per-sample", str(L), "--batch-size", str(a.batch),
                "--criterion", "adaptive_loss", "--ddp-backend", "legacy_ddp", "--optimizer", "adam",
                "--lr", "2.5e-4", "--lr-scheduler", "fixed", "--clip-norm", "0.25", "--seed", "1",
                "--max-update", "1000000"]
        if not cuda:
            argv.append("--cpu")
        elif a.precision != "fp32":
            argv.append(f"--{a.precision}")
        args = options.parse_args_and_arch(options.get_training_parser(), argv)
        cfg = du.convert_namespace_to_omegaconf(args)  # looked up after the plugin's import (bf16_compat)
        utils.import_user_module(cfg.common)
        task = tasks.setup_task(cfg.task)
        model = task.build_model(cfg.model)
        criterion = task.build_criterion(cfg.criterion)
        params = sum(p.numel() for p in model.parameters())
        trainer = Trainer(cfg, task, model, criterion)

    g = torch.Generator().manual_seed(0)
    zipf = 1.0 / torch.arange(1, a.vocab - 4 + 1, dtype=torch.float64)
    n = a.warmup + a.steps

    def batch(i):
        ids = torch.multinomial(zipf, a.batch * (L + 1), replacement=True, generator=g).view(a.batch, L + 1) + 4
        return {"id": torch.arange(a.batch), "nsentences": a.batch, "ntokens": a.batch * L,
                "net_input": {"src_tokens": ids[:, :L].contiguous(), "src_lengths": torch.full((a.batch,), L)},
                "target": ids[:, 1:].contiguous()}

    samples = [batch(i) for i in range(n)]
    for s in samples[: a.warmup]:
        trainer.train_step([s])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    for s in samples[a.warmup:]:
        trainer.train_step([s])
    if cuda:
        torch.cuda.synchronize()
    dt, cpu_dt = time.perf_counter() - t0, time.process_time() - c0
    if cuda:
        mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        mem = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0) / 1024
    words = a.steps * a.batch * L
    # CPU: words per CPU-second of this process (all its threads), which a machine shared
    # with other jobs does not distort the way it distorts wall-clock time
    return {"model": name, "run": run, "params": params, "words_per_s": words / (dt if cuda else cpu_dt),
            "step_s": dt / a.steps, "cpu_step_s": cpu_dt / a.steps, "mem_gb": mem, "L": L}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default=None,
                   help="GPU precision (default fp16, as measured in docs/benchmarks.md; bf16 needs the "
                        "plugin's bf16_compat, since fairseq 0.12 alone turns --bf16 into --tpu); CPU is fp32")
    p.add_argument("--batch", type=int, default=None, help="sequences of 256 tokens per step (GPU 48, CPU 2)")
    p.add_argument("--steps", type=int, default=None, help="timed updates (GPU 20, CPU 6)")
    p.add_argument("--warmup", type=int, default=None, help="untimed updates first (GPU 5, CPU 2)")
    p.add_argument("--vocab", type=int, default=VOCAB, help="dictionary size incl. specials")
    p.add_argument("--cpu-small", action="store_true", help="the reduced CPU run of docs/benchmarks.md")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device == "auto":
        import torch

        a.device = "cuda" if torch.cuda.is_available() and not a.cpu_small else "cpu"
    gpu = a.device == "cuda"
    a.precision = (a.precision or "fp16") if gpu else "fp32"
    a.batch = a.batch or (48 if gpu else 2)
    a.steps = a.steps or (20 if gpu else 6)
    a.warmup = a.warmup if a.warmup is not None else (5 if gpu else 2)
    if a.one:
        print("JSON " + json.dumps(run_one(a.one, a)), flush=True)
        return 0

    names = [m for m in a.models.split(",") if m]
    for m in names:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; valid: {', '.join(MODELS)}")
    import torch

    dev = torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})"
    print(f"# device: {dev}, precision {a.precision}; torch {torch.__version__}, python {platform.python_version()}")
    print(f"# small config (16 layers, D 128, 8 heads x 16, FFN 2048, adaptive softmax over {a.vocab:,} words), "
          f"batch {a.batch} x L 256 = {a.batch * 256:,} tokens per step, {a.warmup} warm-up + {a.steps} timed steps")
    print(f"# command: python scripts/bench_train.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    rows, failed = [], []
    for m in names:
        cmd = [sys.executable, __file__, "--one", m, "--device", a.device, "--precision", a.precision,
               "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup), "--vocab", str(a.vocab)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in r.stdout.splitlines() if l.startswith("JSON ")), None)
        if r.returncode != 0 or line is None:
            failed.append(m)
            print(f"# {m}: FAILED (exit {r.returncode})\n" + "\n".join("#   " + l for l in r.stderr.splitlines()[-15:]))
            continue
        rows.append(json.loads(line[5:]))
    mem_col = "peak mem (GB, max allocated)" if gpu else "peak RSS growth (GB, approx.)"
    wps_col = "words/s" if gpu else "words per CPU-second"
    print()
    print(f"| model | run (recipe setting) | params (M) | {wps_col} | wall s/step | CPU s/step | {mem_col} | "
          f"paper words/s (V100) | paper mem (GB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        pw, pm = MODELS[r["model"]][2:]
        print(f"| {r['model']} | {r['run']} | {r['params'] / 1e6:.1f} | {r['words_per_s']:,.0f} | {r['step_s']:.3f} | "
              f"{r['cpu_step_s']:.3f} | {r['mem_gb']:.2f} | {pw} | {pm} |")
    by = {r["model"]: r for r in rows}
    print()
    if "linear" in by and "delta" in by:
        ratio = by["delta"]["words_per_s"] / by["linear"]["words_per_s"]
        verdict = "holds" if ratio >= 0.9 else "does NOT hold"
        print(f"delta / linear throughput: {ratio:.3f} (paper 63K / 66K = {63 / 66:.3f}); "
              f"the paper's claim 'delta within 10% of linear' {verdict} here")
    if "transformer" in by and "linear" in by:
        print(f"linear / softmax throughput: {by['linear']['words_per_s'] / by['transformer']['words_per_s']:.2f} "
              f"(paper 66K / 33K = 2.00)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
