"""Cost of ``--fwp-eval-mode sliding`` without adaptive softmax (issue 17, item 8).

Each window scores one token; the output projection over the vocabulary runs on that
position only (``lm_streams.score_last_positions``), not on all L positions. With a
267K-word vocabulary (WikiText-103) the projection of L positions would be most of the
work of a window. Run as a script to measure CPU seconds per 1K tokens::

    python tests/test_sliding_cost.py --tokens 512 --threads 2

(a random fwp_lm with the body of fwp_lm_wt103_small: 16 layers, d_model 128, 8 heads,
FFN 2048, Delta Net; a full softmax over --vocab 267744 symbols tied to the input
embedding; L = 256). The test runs the same measurement at toy size and checks that the
projection sees one row per scored token.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli.eval_lm import eval_lm

import fairseq_fwp

ROOT = Path(__file__).resolve().parents[1]
USER_DIR = str(Path(fairseq_fwp.__file__).resolve().parent)
WT103_VOCAB = 267_744  # 267,735 words + fairseq's 4 symbols, padded to a multiple of 8
SMALL_BODY = ["--decoder-layers", "16", "--decoder-embed-dim", "128", "--decoder-attention-heads", "8",
              "--decoder-ffn-embed-dim", "2048"]


def write_split(path: Path, tokens: int, vocab: int):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from bench_lm_eval import write_split as write  # the kernel-owner's benchmark corpus writer
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    write(path, tokens, vocab)


def time_sliding(tokens: int, vocab: int, L: int, max_tokens: int, body=SMALL_BODY):
    """(CPU seconds, wall seconds) of the sliding evaluation of a ``tokens``-token split, and the
    input shapes the output projection saw."""
    with tempfile.TemporaryDirectory() as tmp:
        write_split(Path(tmp), tokens, vocab)
        argv = [tmp, "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--arch", "fwp_lm", *body,
                "--fwp-feature-map", "linear", "--fwp-update-rule", "delta", "--fwp-sum-norm",
                "--share-decoder-input-output-embed", "--tokens-per-sample", str(L), "--fwp-eval-mode", "sliding"]
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
        task = tasks.setup_task(cfg.task)
        torch.manual_seed(0)
        model = task.build_model(cfg.model).eval()
        task.load_dataset("test")
        shapes = []
        hook = model.decoder.output_projection.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
        itr = task.eval_lm_dataloader(task.dataset("test"), max_tokens=max_tokens, num_workers=0)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        eval_lm([model], task.source_dictionary, itr, target_dictionary=task.target_dictionary)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        hook.remove()
    return cpu, wall, shapes


def test_sliding_cost_measurement_projects_one_row_per_window():
    cpu, _, shapes = time_sliding(tokens=40, vocab=50, L=8, max_tokens=32,
                                   body=["--decoder-layers", "1", "--decoder-embed-dim", "16",
                                         "--decoder-attention-heads", "2", "--decoder-ffn-embed-dim", "32"])
    assert cpu > 0 and all(s[1] == 1 for s in shapes) and sum(s[0] for s in shapes) == 40  # one row per token


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=512, help="length of the evaluated split")
    p.add_argument("--vocab", type=int, default=WT103_VOCAB)
    p.add_argument("--tokens-per-sample", type=int, default=256, help="L")
    p.add_argument("--max-tokens", type=int, default=1024, help="window input tokens per batch")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.disable(logging.INFO)
    cpu, wall, shapes = time_sliding(a.tokens, a.vocab, a.tokens_per_sample, a.max_tokens)
    rows = sum(s[0] * s[1] for s in shapes)
    print(f"sliding, {a.vocab} words (full softmax), L = {a.tokens_per_sample}, {a.tokens} tokens, --max-tokens "
          f"{a.max_tokens}, threads {torch.get_num_threads()}: CPU time {cpu:.1f} s = {1000 * cpu / a.tokens:.0f} s "
          f"per 1K tokens (wall {wall:.1f} s = {1000 * wall / a.tokens:.0f} s per 1K); output projection on "
          f"{rows} positions")


if __name__ == "__main__":
    main()
