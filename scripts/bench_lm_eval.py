"""Time fairseq-eval-lm's two evaluation modes of ``--task fwp_language_modeling``.

Builds a randomly initialised LM (default ``fwp_lm_wt103_small`` with a small vocabulary
and adaptive softmax cutoffs scaled to it), writes a random token stream of ``--tokens``
tokens as a binarised split, and runs the task's ``eval_lm_dataloader`` + fairseq's
``eval_lm`` loop (the code fairseq-eval-lm runs) in ``sliding`` and ``full`` mode.
Prints one row per mode: tokens, seconds, tokens/s, seconds per 1K tokens.

    python scripts/bench_lm_eval.py                       # CPU, wt103_small, L = 256
    python scripts/bench_lm_eval.py --device cuda --tokens 20000 --max-tokens 65536
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fairseq import options, tasks
from fairseq.data import Dictionary, indexed_dataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli.eval_lm import eval_lm

import fairseq_fwp

USER_DIR = str(Path(fairseq_fwp.__file__).resolve().parent)


def write_split(path: Path, n_tokens: int, vocab: int, seed: int = 0):
    d = Dictionary()
    for i in range(vocab):
        d.add_symbol(f"w{i}", n=vocab - i)
    d.save(str(path / "dict.txt"))
    rng = np.random.default_rng(seed)
    b = indexed_dataset.make_builder(str(path / "test.bin"), "mmap", vocab_size=len(d))
    left = n_tokens
    while left > 0:
        n = min(left, int(rng.integers(10, 40)))
        ids = rng.integers(d.nspecial, len(d), size=n - 1).tolist() + [d.eos()]
        b.add_item(torch.tensor(ids, dtype=torch.int64))
        left -= n
    b.finalize(str(path / "test.idx"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="fwp_lm_wt103_small")
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--tokens", type=int, default=2000, help="length of the evaluated split")
    p.add_argument("--tokens-per-sample", type=int, default=256, help="L")
    p.add_argument("--max-tokens", type=int, default=16384, help="sliding: window tokens per batch")
    p.add_argument("--modes", default="sliding,full")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.disable(logging.INFO)
    cut = f"{a.vocab // 10},{a.vocab // 2}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_split(Path(tmp), a.tokens, a.vocab)
        for mode in a.modes.split(","):
            argv = [tmp, "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--arch", a.arch,
                    "--fwp-feature-map", "linear", "--fwp-update-rule", "delta", "--fwp-sum-norm",
                    "--adaptive-softmax-cutoff", cut, "--adaptive-input-cutoff", cut,
                    "--tokens-per-sample", str(a.tokens_per_sample), "--fwp-eval-mode", mode,
                    "--criterion", "adaptive_loss", "--ddp-backend", "legacy_ddp"]
            cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
            task = tasks.setup_task(cfg.task)
            model = task.build_model(cfg.model).to(a.device).eval()
            task.load_dataset("test")
            itr = task.eval_lm_dataloader(task.dataset("test"), max_tokens=a.max_tokens, num_workers=0)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            eval_lm([model], task.source_dictionary, itr, target_dictionary=task.target_dictionary,
                    device=torch.device(a.device))
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            rows.append((mode, a.tokens, dt))
    print(f"{a.arch}, vocab {a.vocab}, L = {a.tokens_per_sample}, device {a.device}, "
          f"threads {torch.get_num_threads()}, sliding --max-tokens {a.max_tokens}")
    print(f"| mode | tokens | seconds | tokens/s | s per 1K tokens |\n|---|---|---|---|---|")
    for mode, n, dt in rows:
        print(f"| {mode} | {n} | {dt:.1f} | {n / dt:.0f} | {1000 * dt / n:.2f} |")


if __name__ == "__main__":
    main()
