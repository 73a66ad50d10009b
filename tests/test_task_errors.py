"""Errors of ``--task fwp_language_modeling`` that fairseq meets outside model building
(issue 17, items 5, 6 and 13): each is one line naming the flag or split and what to do,
in the command a user runs, and options that would do nothing are refused.

Command lines run as subprocesses on a tiny binarised corpus; one carried-state checkpoint
is trained once for the module (a few seconds)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fairseq.data.indexed_dataset import MMapIndexedDataset

from fairseq_fwp.compat import cli_errors
from test_lm_state import DELTA, TINY, USER_DIR, write_lm_data

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
NOPOS = ["--no-token-positional-embeddings"]


def fairseq(module, *args, stdin=None):
    p = subprocess.run([sys.executable, "-m", f"fairseq_cli.{module}", *map(str, args)], cwd=ROOT, env=ENV,
                       input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    return p.returncode, p.stdout + p.stderr


def one_line_error(rc: int, log: str) -> str:
    """The message of the plugin's one-line error; fails on a traceback."""
    assert rc == 1 and "Traceback" not in log, log[-4000:]
    lines = log.strip().splitlines()
    assert lines[-2] == cli_errors.HINT and lines[-1].startswith("fairseq-fwp: error: "), log[-4000:]
    return lines[-1][len("fairseq-fwp: error: "):]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train 60 lines, valid/test 12 lines, 'empty' = no lines (an empty .bin)."""
    return write_lm_data(tmp_path_factory.mktemp("errors") / "bin",
                         {"train": 60, "valid": 12, "test": 12, "empty": 0})


def train_args(data, save, *extra):
    return (data, "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--arch", "fwp_lm", *DELTA, *TINY,
            "--tokens-per-sample", "8", "--optimizer", "adam", "--lr", "3e-3", "--max-epoch", "1",
            "--save-dir", save, "--no-epoch-checkpoints", "--cpu", "--num-workers", "0", "--seed", "1",
            "--log-format", "simple", *extra)


@pytest.fixture(scope="module")
def carried_checkpoint(data, tmp_path_factory):
    save = tmp_path_factory.mktemp("carried")
    rc, log = fairseq("train", *train_args(data, save, "--fwp-carry-state", "--batch-size", "4", *NOPOS))
    assert rc == 0, log[-4000:]
    return save / "checkpoint_last.pt"


def eval_lm(data, ck, *extra):
    return fairseq("eval_lm", data, "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--path", ck,
                   "--gen-subset", "test", "--tokens-per-sample", "8", "--cpu", "--num-workers", "0", *extra)


# ----------------------------------------------------------------------------- training


def test_carried_state_batching_errors_name_the_flag_of_their_split(data, tmp_path):
    rc, log = fairseq("train", *train_args(data, tmp_path, "--fwp-carry-state", "--batch-size", "4", "--max-tokens", "20"))
    assert one_line_error(rc, log) == (
        "--max-tokens 20 would split the train batches of --batch-size 4 streams x --tokens-per-sample 8 tokens "
        "(the batch size would change between batches); drop it or set it >= 32")
    rc, log = fairseq("train", *train_args(data, tmp_path, "--fwp-carry-state", "--batch-size", "4",
                                           "--max-tokens-valid", "20"))
    assert one_line_error(rc, log).startswith(
        "--max-tokens-valid (default: --max-tokens) 20 would split the valid batches of --batch-size-valid "
        "(default: --batch-size) 4 streams")
    # a validation split too short for its streams names --batch-size-valid, not --batch-size
    short = write_lm_data(tmp_path / "short", {"train": 60, "valid": 1, "test": 1}, seed=3)
    valid = MMapIndexedDataset(str(short / "valid"))  # (keep it: its sizes live in its mmap)
    n_valid = int(valid.sizes.sum())
    assert n_valid < 16
    rc, log = fairseq("train", *train_args(short, tmp_path, "--fwp-carry-state", "--batch-size", "16"))
    assert one_line_error(rc, log) == (
        f"the valid split has {n_valid} tokens, too few for 16 streams (--batch-size-valid (default: --batch-size) "
        f"16 x 1 ranks); use --batch-size-valid (default: --batch-size) {n_valid} or less")


def test_eval_mode_is_refused_where_it_would_do_nothing(data, tmp_path, carried_checkpoint):
    rc, log = fairseq("train", *train_args(data, tmp_path, "--fwp-eval-mode", "full", "--batch-size", "4"))
    assert one_line_error(rc, log) == (
        "--fwp-eval-mode full is an option of fairseq-eval-lm (how it scores a split); fairseq-train does not use "
        "it; drop it")
    rc, log = fairseq("generate", data, "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--path",
                      carried_checkpoint, "--gen-subset", "test", "--tokens-per-sample", "8", "--fwp-eval-mode", "full",
                      "--batch-size", "2", "--cpu", "--num-workers", "0")
    assert one_line_error(rc, log) == (
        "--fwp-eval-mode full is an option of fairseq-eval-lm (how it scores a split); fairseq-generate does not "
        "use it; drop it")


def test_carry_state_in_decoding_commands_is_refused_without_mentioning_max_tokens(data, carried_checkpoint):
    rc, log = fairseq("interactive", data, "--user-dir", USER_DIR, "--task", "fwp_language_modeling",
                      "--fwp-carry-state", "--path", carried_checkpoint, "--cpu", stdin="w3 w4 w5\n")
    msg = one_line_error(rc, log)
    assert msg == ("--fwp-carry-state is a training option (fairseq-train, fairseq-validate); fairseq-interactive "
                   "carries the fast weight state from token to token anyway (incremental decoding); drop it")
    assert "--max-tokens" not in msg


def test_validate_on_a_carried_state_checkpoint_says_what_it_computes(data, carried_checkpoint):
    """fairseq-validate takes the task from the checkpoint: it carries the state over
    --batch-size streams, logs it, and its loss depends on the batch size (documented)."""
    losses = {}
    for B in (2, 3):
        rc, log = fairseq("validate", data, "--user-dir", USER_DIR, "--task", "fwp_language_modeling",
                          "--path", carried_checkpoint, "--batch-size", B, "--cpu", "--num-workers", "0")
        assert rc == 0, log[-4000:]
        assert (f"--fwp-carry-state: valid is scored as {B} streams (--batch-size {B} x 1 ranks), the fast weight "
                "state carried from each segment to the next") in log, log[-4000:]
        losses[B] = float(re.search(r"valid on 'valid' subset \| loss ([0-9.]+)", log).group(1))
    assert losses[2] != losses[3]
    rc, log = fairseq("validate", data, "--user-dir", USER_DIR, "--task", "fwp_language_modeling",
                      "--path", carried_checkpoint, "--max-tokens", "64", "--cpu", "--num-workers", "0")
    assert one_line_error(rc, log) == (
        "--fwp-carry-state needs a fixed --batch-size for the valid split: B streams per rank, batch i = segment i "
        "of every stream")


# ----------------------------------------------------------------------------- fairseq-eval-lm


def test_eval_lm_errors_are_one_line(data, carried_checkpoint):
    rc, log = eval_lm(data, carried_checkpoint, "--fwp-eval-mode", "sliding", "--context-window", "4")
    assert one_line_error(rc, log) == (
        "--fwp-eval-mode sliding sets the context itself (windows of --tokens-per-sample tokens, or the whole "
        "split); drop --context-window")
    rc, log = eval_lm(data, carried_checkpoint, "--fwp-carry-state")
    assert one_line_error(rc, log) == (
        "--fwp-carry-state is a training option; fairseq-eval-lm evaluates with --fwp-eval-mode full (the state "
        "carried through the split) or --fwp-eval-mode sliding")
    rc, log = eval_lm(data, carried_checkpoint, "--fwp-eval-mode", "sliding", "--max-tokens", "4")
    assert one_line_error(rc, log) == (
        "--fwp-eval-mode sliding batches windows of up to --tokens-per-sample 8 tokens by --max-tokens, counted in "
        "window input tokens (not in scored tokens as with --context-window): --max-tokens 4 holds no window; set "
        "--max-tokens 8 or more")
    # fairseq's --max-tokens 8 (= L) works
    rc, log = eval_lm(data, carried_checkpoint, "--fwp-eval-mode", "sliding", "--max-tokens", "8")
    assert rc == 0 and "Perplexity" in log, log[-4000:]


@pytest.mark.parametrize("mode", ["full", "sliding"])
def test_empty_split_is_named(data, carried_checkpoint, mode):
    rc, log = eval_lm(data, carried_checkpoint, "--fwp-eval-mode", mode, "--gen-subset", "empty")
    assert one_line_error(rc, log) == (
        f"the empty split has no tokens ({data / 'empty.bin'}); there is nothing to score or train on: choose a "
        "split with tokens (--gen-subset, --valid-subset, --train-subset) or binarise it again")


def test_spawned_worker_config_errors_are_one_line():
    """fairseq's multi-GPU call_main re-raises a worker's exception in the parent as text."""
    from torch.multiprocessing.spawn import ProcessRaisedException

    text = ("Traceback (most recent call last):\n"
            f'  File "{cli_errors.PACKAGE_DIR}/tasks/fwp_language_modeling.py", line 1, in get_batch_iterator\n'
            "    raise FwpConfigError(\n"
            "fairseq_fwp.compat.cli_errors.FwpConfigError: --max-tokens 20 would split the train batches\n")
    spawned = ProcessRaisedException("\n\n-- Process 0 terminated with the following error:\n" + text, 0, 4242)
    assert cli_errors.fwp_error_message(spawned) == "--max-tokens 20 would split the train batches"
    try:
        raise cli_errors.FwpConfigError("in-process")
    except ValueError as e:  # raised in this test file, not the package: a programming error
        assert cli_errors.fwp_error_message(e) is None
