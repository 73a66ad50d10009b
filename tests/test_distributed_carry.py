"""``--task fwp_language_modeling --fwp-carry-state`` under fairseq's distributed training
(issue 10: "every rank takes its own streams and carries its own state"): 2 CPU processes
(gloo, ``--ddp-backend legacy_ddp``, one process per rank, reference.md section 3) with
``--batch-size B`` take the same steps as 1 process with ``--batch-size 2B``.

Why the two runs must agree: the task cuts the split into B x world-size = 2B streams in
both runs; rank r takes streams r*B ... r*B+B-1 as its rows, so the single process sees
the same 2B streams, rank 0's as rows 0..B-1 and rank 1's as rows B..2B-1, segment i in
batch i of both. Each rank carries the state of its own B rows; the single process
carries all 2B. legacy_ddp averages the summed gradients over the ranks and fairseq
multiplies by world size / (sample size summed over ranks), i.e. both runs step with
(sum of all 2B rows' gradients) / (total target tokens). With dropout 0 and one seed the
only difference is the order of float32 sums (rtol 1e-4 on the parameters, as in
test_distributed_delta.py; fairseq logs losses to 3 decimals).

What fails it (each mutation of the task run once, by hand): both ranks taking rank 0's
streams (update 1 loss 5.215 vs 5.185: streams 2..3 are never seen); the ranks resetting
their state every segment (update 2: 4.825 vs 4.877); the state reset every segment in
both runs alike (the equivalence holds, but the control at the end, a run with the state
cleared before every segment, then equals the carried run: loss gap 0 instead of ~0.07).
The run crosses an epoch boundary (the state resets there in both runs) and validates
twice with ``--batch-size-valid`` B resp. 2B, sharded and carried like training (valid
over 2 streams instead of 4 moves the valid loss by ~0.03). That carrying is right in one
process (carried state == one long forward) is test_lm_state.py's job.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distributed_delta import ENV, ROOT, USER_DIR, assert_same_parameters, train_two_gloo_ranks  # noqa: E402
from test_lm_state import write_lm_data  # noqa: E402

B, L, UPDATES = 2, 16, 14

TRAIN = [
    "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--fwp-carry-state",
    "--tokens-per-sample", str(L), "--sample-break-mode", "none",
    "--arch", "fwp_lm", "--fwp-feature-map", "linear", "--fwp-update-rule", "delta", "--fwp-sum-norm",
    "--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
    "--decoder-attention-heads", "4", "--no-token-positional-embeddings", "--dropout", "0",
    "--optimizer", "adam", "--lr", "3e-3", "--max-update", str(UPDATES), "--no-epoch-checkpoints",
    "--cpu", "--seed", "3", "--num-workers", "0", "--log-format", "simple", "--log-interval", "1",
]

TRAIN_LOSS = re.compile(r"train_inner(?: \| |:)epoch (\d+):.*?loss=([0-9.]+),.*?num_updates=(\d+)")
VALID_LOSS = re.compile(r"valid on 'valid' subset \| loss ([0-9.]+) .*?\| num_updates (\d+)")


def _cmd(data, save, batch_size, *extra):
    return [sys.executable, "-m", "fairseq_cli.train", str(data), *TRAIN, "--batch-size", str(batch_size),
            "--batch-size-valid", str(batch_size),
            "--save-dir", str(save), *extra]


# The control: fairseq-train with the task's state cleared before every segment (a
# carry that does nothing), everything else unchanged.
RESET_EVERY_SEGMENT = """
from fairseq_fwp.tasks.fwp_language_modeling import FwpLanguageModelingTask as Task
carried = Task._state_for
def reset(self, kind, sample):
    state = carried(self, kind, sample)
    state.clear()
    return state
Task._state_for = reset
from fairseq_cli.train import cli_main
cli_main()
"""


def _one_process(data, save, reset_every_segment=False):
    cmd = _cmd(data, save, 2 * B)
    if reset_every_segment:
        cmd[1:3] = ["-c", RESET_EVERY_SEGMENT]
    p = subprocess.run(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:]
    return p.stdout


def _two_ranks(data, save):
    return train_two_gloo_ranks(lambda flags: _cmd(data, save, B, *flags))


def _logged(log):
    train = {int(u): (int(e), float(x)) for e, x, u in TRAIN_LOSS.findall(log)}
    assert sorted(train) == list(range(1, UPDATES + 1)), log[-3000:]
    valid = {int(u): float(x) for x, u in VALID_LOSS.findall(log)}
    return train, valid


def _params(save):
    return torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_lm_data(tmp_path_factory.mktemp("ddp_carry") / "bin", {"train": 80, "valid": 24})


def test_two_ranks_carrying_their_own_streams_equal_one_process_with_all_streams(data, tmp_path):
    one = _one_process(data, tmp_path / "one")
    outs = _two_ranks(data, tmp_path / "two")
    assert "as rank 1" in outs[1], outs[1][-3000:]
    t1, v1 = _logged(one)
    t2, v2 = _logged(outs[0])
    epochs = {e for e, _ in t1.values()}
    assert epochs == {1, 2}, "the run must cross an epoch boundary (state reset)"
    for u in t1:
        assert t1[u][0] == t2[u][0], f"update {u}: epoch {t1[u][0]} (1 process) vs {t2[u][0]} (2 ranks)"
        assert t1[u][1] == pytest.approx(t2[u][1], abs=1.5e-3), f"update {u}: 1 process {t1[u]}, 2 ranks {t2[u]}"
    assert len(v1) == 2 and v1.keys() == v2.keys(), (v1, v2)
    for u in v1:
        assert v1[u] == pytest.approx(v2[u], abs=1.5e-3), f"valid after update {u}: {v1[u]} vs {v2[u]}"

    a, b = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert a.keys() == b.keys()
    print(f"largest parameter difference, 2 ranks vs 1 process: {assert_same_parameters(a, b):.2e}")

    # Control: without the carry (state reset every segment) the same run ends elsewhere,
    # far outside the tolerance above; so a carry lost in both runs alike fails here.
    t0, v0 = _logged(_one_process(data, tmp_path / "reset", reset_every_segment=True))
    assert t0[1][1] == pytest.approx(t1[1][1], abs=1.5e-3)  # segment 0 starts from zero anyway
    gap = max(abs(t0[u][1] - t1[u][1]) for u in t1)
    c = _params(tmp_path / "reset")
    far = [k for k in a if a[k].is_floating_point() and not torch.allclose(c[k], a[k], rtol=1e-4, atol=1e-5)]
    big = max(float((c[k] - a[k]).abs().max()) for k in a if a[k].is_floating_point())
    print(f"carry vs reset every segment: largest loss gap {gap:.3f}, largest parameter gap {big:.2e}, "
          f"{len(far)}/{len(a)} tensors outside the tolerance")
    assert gap > 0.01 and len(far) > len(a) // 2, "carrying the state made no visible difference: the check is vacuous"
