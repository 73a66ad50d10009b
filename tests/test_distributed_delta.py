"""fairseq's distributed training with a delta-rule model: 2 CPU processes (gloo) with
--update-freq 1 take the same steps as 1 process with --update-freq 2.

fairseq shards the shuffled batches round-robin over ranks (rank r gets batches r, r+2, ...)
and groups --update-freq consecutive batches of a shard into one update, so both runs
see batches (0, 1), (2, 3), ... in each update; gradients are summed over the batches
and normalised by the total sample size in both. With dropout 0 the only difference is
the order of float32 sums, so losses and parameters agree to float32 rounding. The run
uses ``--ddp-backend legacy_ddp`` (fairseq's gradient all-reduce; ``pytorch_ddp`` needs
a device on CPU, see docs) over gloo, one process per rank (reference.md section 3).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fairseq_fwp
from fairseq_fwp.data import toy_data

ROOT = Path(__file__).resolve().parents[1]
USER_DIR = str(Path(fairseq_fwp.__file__).resolve().parent)
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
UPDATES = 6

TRAIN = [
    "--user-dir", USER_DIR, "--task", "translation", "--arch", "fwp_transformer",
    "--fwp-feature-map", "linear", "--fwp-update-rule", "delta", "--fwp-sum-norm",
    "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings",
    "--dropout", "0.0", "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt",
    "--warmup-updates", "2", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--max-tokens", "150", "--max-update", str(UPDATES), "--disable-validation", "--no-epoch-checkpoints",
    "--cpu", "--seed", "3", "--num-workers", "0", "--log-format", "simple", "--log-interval", "1",
]

LOSS = re.compile(r"train_inner \| epoch \d+: .*?loss=([0-9.]+), nll_loss=([0-9.]+).*?num_updates=(\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GLOO_FLAGS = ("--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp", "--distributed-world-size", "2",
              "--distributed-no-spawn")


def train_two_gloo_ranks(cmd_for_rank) -> list:
    """Run ``cmd_for_rank(extra_flags)`` as 2 fairseq training ranks on CPU (gloo, one process per
    rank: what works on CPU, see reference.md section 3); returns their outputs, rank 0 first."""
    port, procs = _free_port(), []
    for rank in range(2):
        flags = [*GLOO_FLAGS, "--distributed-rank", str(rank), "--distributed-init-method", f"tcp://127.0.0.1:{port}"]
        procs.append(subprocess.Popen(cmd_for_rank(flags), env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def assert_same_parameters(a: dict, b: dict) -> float:
    """Every floating-point tensor of state dicts ``a`` and ``b`` equal to rtol 1e-4 / atol 1e-5
    (float32 sums in a different order, amplified a little by Adam); returns the largest difference."""
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
            worst = max(worst, float((a[k].double() - b[k].double()).abs().max()))
    return worst


def _train_cmd(data, save, *extra):
    return [sys.executable, "-m", "fairseq_cli.train", str(data), *TRAIN, "--save-dir", str(save), *extra]


def _losses(log: str):
    got = {int(u): (float(l), float(n)) for l, n, u in LOSS.findall(log)}
    assert sorted(got) == list(range(1, UPDATES + 1)), log[-3000:]
    return got


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    toy_data.write_translation_corpus(d / "raw", task="reverse", sizes=(300, 20, 20), max_len=8, seed=2)
    subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", "src", "--target-lang", "tgt",
                    "--joined-dictionary", "--trainpref", d / "raw/train", "--validpref", d / "raw/valid",
                    "--destdir", d / "bin", "--workers", "1"], env=ENV, check=True, capture_output=True)
    return d / "bin"


def test_two_gloo_ranks_equal_one_process_with_twice_the_accumulation(data, tmp_path):
    one = subprocess.run(_train_cmd(data, tmp_path / "one", "--update-freq", "2"), env=ENV, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert one.returncode == 0, one.stdout[-4000:]

    outs = train_two_gloo_ranks(lambda flags: _train_cmd(data, tmp_path / "two", "--update-freq", "1", *flags))
    assert "initialized host" in outs[1] and "as rank 1" in outs[1], outs[1][-3000:]

    # the same loss at every update (fairseq logs 3 decimals; aggregated over ranks)
    l1, l2 = _losses(one.stdout), _losses(outs[0])
    for u in l1:
        assert l1[u] == pytest.approx(l2[u], abs=1.5e-3), f"update {u}: 1 process {l1[u]}, 2 ranks {l2[u]}"
    assert l1[1] != l1[UPDATES], "training did not move"

    # the same parameters after the last update (rank 0 saved them)
    a = torch.load(tmp_path / "one" / "checkpoint_last.pt", map_location="cpu")["model"]
    b = torch.load(tmp_path / "two" / "checkpoint_last.pt", map_location="cpu")["model"]
    assert a.keys() == b.keys()
    history = torch.load(tmp_path / "two" / "checkpoint_last.pt", map_location="cpu")["optimizer_history"]
    assert history[-1]["num_updates"] == UPDATES
    print(f"largest parameter difference: {assert_same_parameters(a, b):.2e}")
