"""scripts/average_checkpoints.py on synthetic fairseq-style checkpoints (fast; the
end-to-end check that an averaged checkpoint loads in fairseq-generate is in test_cli.py)."""

from __future__ import annotations

import argparse
import collections
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "average_checkpoints.py"

_spec = importlib.util.spec_from_file_location("average_checkpoints", SCRIPT)
avg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(avg)


def fake_checkpoint(path, scale, epoch=1, updates=10, extra_key=None, shape=(3, 2)):
    """The layout fairseq-train writes, with the non-tensor types it pickles."""
    model = collections.OrderedDict(
        [
            ("encoder.w", torch.full(shape, float(scale))),
            ("encoder.half", torch.full((2,), float(scale), dtype=torch.float16)),
            ("decoder.layers.0.self_attn.feature_map.features", torch.full((4, 2), float(scale))),
            ("decoder.layers.0.self_attn.feature_map.draws", torch.tensor(scale, dtype=torch.long)),
            ("decoder.version", torch.tensor([3.0])),
        ]
    )
    if extra_key:
        model[extra_key] = torch.zeros(1)
    state = {
        "args": None,
        "cfg": {"model": argparse.Namespace(arch="fwp_transformer"), "common": {"seed": 1}},
        "model": model,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "x", "optimizer_name": "Adam", "lr_scheduler_state": {},
                               "num_updates": updates}],
        "task_state": {},
        "extra_state": {
            "metrics": collections.OrderedDict(valid=[(10, "_bleu_counts", "AverageMeter",
                                                       {"val": np.array([1, 2]), "sum": np.array([3, 4])})]),
            "train_iterator": {"version": 2, "epoch": epoch, "iterations_in_epoch": 0, "shuffle": True},
            "best": np.float64(1.5),
        },
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.ones(2)}}},
    }
    torch.save(state, path)
    return path


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys):
    """Call the script's main() in-process (fairseq is imported once); capture its output."""

    def _run(*args):
        capsys.readouterr()
        rc = avg.main([str(a) for a in args])
        out = capsys.readouterr()
        return Result(rc, out.out, out.err)

    return _run


def test_command_line(tmp_path):
    paths = [fake_checkpoint(tmp_path / f"checkpoint{i}.pt", scale=i) for i in (1, 2)]
    p = subprocess.run([sys.executable, str(SCRIPT), "--inputs", *map(str, paths), "--output",
                        str(tmp_path / "avg.pt")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stderr
    assert torch.allclose(load(tmp_path / "avg.pt")["model"]["encoder.w"], torch.full((3, 2), 1.5))


def load(path):
    from fairseq_fwp.compat.checkpoint_compat import allow_fairseq_checkpoints

    allow_fairseq_checkpoints()
    return torch.load(path, map_location="cpu")  # weights_only (torch's default) + allowlist


def test_mean_of_floats_base_for_the_rest(tmp_path, run):
    paths = [fake_checkpoint(tmp_path / f"checkpoint{i}.pt", scale=i, epoch=i) for i in (1, 2, 3, 6)]
    out = tmp_path / "avg.pt"
    p = run("--inputs", *paths, "--output", out)
    assert p.returncode == 0, p.stderr
    s = load(out)
    m = s["model"]
    assert list(m) == list(load(paths[0])["model"])  # key order kept
    assert torch.allclose(m["encoder.w"], torch.full((3, 2), 3.0))
    assert m["encoder.half"].dtype == torch.float16 and torch.allclose(m["encoder.half"].float(), torch.full((2,), 3.0))
    assert torch.equal(m["decoder.version"], torch.tensor([3.0]))
    # random features and integer counters come from the base (last) checkpoint, not averaged
    assert torch.equal(m["decoder.layers.0.self_attn.feature_map.features"], torch.full((4, 2), 6.0))
    assert int(m["decoder.layers.0.self_attn.feature_map.draws"]) == 6
    assert s["extra_state"]["train_iterator"]["epoch"] == 6
    assert s["last_optimizer_state"] is None
    assert [Path(x).name for x in s["extra_state"]["averaged_from"]] == [Path(x).name for x in paths]
    assert isinstance(s["cfg"]["model"], argparse.Namespace)


def test_copy_from_base_can_be_disabled_and_optimizer_kept(tmp_path, run):
    paths = [fake_checkpoint(tmp_path / f"c{i}.pt", scale=i) for i in (1, 3)]
    out = tmp_path / "avg.pt"
    assert run("--inputs", *paths, "--output", out, "--copy-from-base", "", "--keep-optimizer-state").returncode == 0
    s = load(out)
    assert torch.allclose(s["model"]["decoder.layers.0.self_attn.feature_map.features"], torch.full((4, 2), 2.0))
    assert s["last_optimizer_state"] is not None


def test_directory_selection_epoch_and_update(tmp_path, run):
    for e in (1, 2, 3, 10):
        fake_checkpoint(tmp_path / f"checkpoint{e}.pt", scale=e, epoch=e)
    for e, u in ((1, 100), (2, 200), (3, 300)):
        fake_checkpoint(tmp_path / f"checkpoint_{e}_{u}.pt", scale=u, epoch=e, updates=u)
    fake_checkpoint(tmp_path / "checkpoint_last.pt", scale=99)
    fake_checkpoint(tmp_path / "checkpoint_best.pt", scale=98)

    assert [Path(p).name for p in avg.find_checkpoints(str(tmp_path), 2, "epoch")] == ["checkpoint3.pt", "checkpoint10.pt"]
    assert [Path(p).name for p in avg.find_checkpoints(str(tmp_path), 2, "epoch", upper_bound=3)] == [
        "checkpoint2.pt", "checkpoint3.pt"]
    assert [Path(p).name for p in avg.find_checkpoints(str(tmp_path), 2, "update")] == [
        "checkpoint_2_200.pt", "checkpoint_3_300.pt"]

    out = tmp_path / "out" / "avg.pt"
    p = run("--inputs", tmp_path, "--num-epoch-checkpoints", "2", "--output", out)
    assert p.returncode == 0, p.stderr
    assert torch.allclose(load(out)["model"]["encoder.w"], torch.full((3, 2), 6.5))
    p = run("--inputs", tmp_path, "--num-update-checkpoints", "3", "--output", out)
    assert p.returncode == 0, p.stderr
    assert torch.allclose(load(out)["model"]["encoder.w"], torch.full((3, 2), 200.0))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "missing checkpoint file"),
        ("keys", "hold different parameters"),
        ("shape", "has shape"),
        ("too_few", "asked for 5 epoch checkpoints"),
        ("dir_without_n", "is a directory"),
        ("overwrite", "would overwrite"),
        ("not_checkpoint", "not a fairseq checkpoint"),
    ],
)
def test_clear_errors(tmp_path, run, case, message):
    a = fake_checkpoint(tmp_path / "checkpoint1.pt", scale=1)
    out = tmp_path / "avg.pt"
    if case == "missing":
        args = ["--inputs", a, tmp_path / "nope.pt", "--output", out]
    elif case == "keys":
        b = fake_checkpoint(tmp_path / "checkpoint2.pt", scale=2, extra_key="decoder.extra")
        args = ["--inputs", a, b, "--output", out]
    elif case == "shape":
        b = fake_checkpoint(tmp_path / "checkpoint2.pt", scale=2, shape=(2, 2))
        args = ["--inputs", a, b, "--output", out]
    elif case == "too_few":
        args = ["--inputs", tmp_path, "--num-epoch-checkpoints", "5", "--output", out]
    elif case == "dir_without_n":
        args = ["--inputs", tmp_path, "--output", out]
    elif case == "overwrite":
        args = ["--inputs", a, "--output", a]
    else:
        torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
        args = ["--inputs", a, tmp_path / "other.pt", "--output", out]
    p = run(*args)
    assert p.returncode == 2
    assert message in p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()


def test_unsafe_pickles_are_still_refused(tmp_path, run):
    """The allowlist is narrow: a checkpoint smuggling another global is not loaded."""

    class Evil:
        def __reduce__(self):
            return (print, ("should not run",))

    path = tmp_path / "evil.pt"
    state = torch.load(fake_checkpoint(tmp_path / "c.pt", 1), weights_only=False)
    state["extra_state"]["payload"] = Evil()
    torch.save(state, path)
    p = run("--inputs", path, fake_checkpoint(tmp_path / "c2.pt", 2), "--output", tmp_path / "avg.pt")
    assert p.returncode == 2
    assert "cannot load" in p.stderr and "should not run" not in p.stdout
