"""fairseq 0.12 in today's environment, end to end through the CLI (as tests/test_cli.py):

* numpy 2 (``fairseq_fwp.compat.numpy_compat``): ``--sample-break-mode eos`` in LM training,
  fairseq-eval-lm and fairseq-generate, LM fairseq-interactive, ``--num-batch-buckets``;
* ``--tensorboard-logdir`` writes event files (tensorboardX from the ``tensorboard`` extra);
* a bad ``--fwp-*`` setting ends fairseq-train / -eval-lm / -generate with one short line
  (``fairseq_fwp.compat.cli_errors``), while other errors keep their traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fairseq_fwp  # noqa: F401  (installs the compatibility layer)
from fairseq_fwp.compat import numpy_compat
from fairseq_fwp.data import toy_data
from test_cli import DELTA, ENV, ROOT, USER_DIR, fairseq

NUMPY2 = int(np.__version__.split(".")[0]) >= 2

LM_ARCH = ["--arch", "fwp_lm", "--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
           "--decoder-attention-heads", "2", "--tokens-per-sample", "32", "--share-decoder-input-output-embed"]
LM_OPT = ["--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "512", "--cpu", "--seed", "1", "--num-workers", "0",
          "--log-format", "simple", "--log-interval", "1"]


def run(module_or_script, *args, env=ENV, stdin=None):
    """A fairseq command with stdout and stderr apart: ``module`` runs as ``python -m fairseq_cli.module``,
    a name with a dash as the console script next to the interpreter (``fairseq-train``)."""
    if "-" in module_or_script:
        cmd = [str(Path(sys.executable).parent / module_or_script)]
    else:
        cmd = [sys.executable, "-m", f"fairseq_cli.{module_or_script}"]
    cmd += list(map(str, args))
    return subprocess.run(cmd, env=env, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=600)


def tokens_with_eos(path):
    with open(path) as f:
        return sum(len(line.split()) + 1 for line in f)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny LM trained with --sample-break-mode eos and --tensorboard-logdir (one epoch)."""
    d = tmp_path_factory.mktemp("lm_compat")
    toy_data.write_lm_corpus(d / "raw", sizes=(400, 40, 40), seed=3)
    fairseq("preprocess", "--only-source", "--trainpref", d / "raw/train.txt", "--validpref", d / "raw/valid.txt",
            "--testpref", d / "raw/test.txt", "--destdir", d / "bin", "--workers", "1")
    log = fairseq("train", d / "bin", "--user-dir", USER_DIR, "--task", "language_modeling", *LM_ARCH, *DELTA,
                  *LM_OPT, "--sample-break-mode", "eos", "--max-tokens-valid", "4096", "--max-epoch", "1", "--save-dir", d / "ck",
                  "--no-epoch-checkpoints", "--tensorboard-logdir", d / "tb")
    return d, log


# ---------------------------------------------------------------------------- numpy 2


def test_numpy_itself_is_left_alone():
    """The restored names are visible to the fairseq modules that use them, not in numpy."""
    from fairseq.data import data_utils, language_pair_dataset, token_block_dataset

    assert token_block_dataset.np.compat.long is int and language_pair_dataset.np.compat.long is int
    assert data_utils.np.ndarray is np.ndarray and token_block_dataset.np.arange is np.arange
    sizes = np.array([3, 9, 4, 7, 7, 1, 12, 5])
    expect = np.unique(np.percentile(sizes, np.linspace(0, 100, 4), method="lower")[1:])
    assert (data_utils.get_buckets(sizes, 3) == expect).all()
    restored = numpy_compat.install()
    if NUMPY2:
        assert restored["fairseq.data.token_block_dataset"] == ("compat",)
        assert not hasattr(np, "compat") and not hasattr(np, "int")  # numpy itself unchanged
        if "percentile(interpolation=)" in restored["fairseq.data.data_utils"]:  # numpy >= 2.4
            with pytest.raises(TypeError, match="interpolation"):
                np.percentile(sizes, 50, interpolation="lower")
    else:  # numpy 1 has every name fairseq uses: nothing to restore
        assert restored == {}


def test_lm_training_with_sample_break_mode_eos(lm):
    d, log = lm
    assert "done training" in log
    # --sample-break-mode eos: one sample per sentence, so validation is one batch of the 40
    # sentences (blocks of --tokens-per-sample 32 tokens would be about a third as many)
    (valid,) = [line for line in log.splitlines() if "valid on 'valid' subset" in line]
    assert "| bsz 40 |" in valid, valid
    assert (d / "ck" / "checkpoint_last.pt").is_file()


def test_tensorboard_logdir_writes_event_files(lm):
    d, _ = lm
    for split in ("train", "valid"):
        events = list((d / "tb" / split).glob("events.out.tfevents.*"))
        assert events, f"no event file in {d / 'tb' / split}"
        assert b"loss" in b"".join(e.read_bytes() for e in events)  # the scalars fairseq logs


def test_eval_lm_with_sample_break_mode_eos(lm):
    d, _ = lm
    out = fairseq("eval_lm", d / "bin", "--user-dir", USER_DIR, "--path", d / "ck/checkpoint_last.pt",
                  "--gen-subset", "test", "--sample-break-mode", "eos", "--tokens-per-sample", "32",
                  "--max-tokens", "512", "--cpu")
    assert f"Evaluated {tokens_with_eos(d / 'raw/test.txt')} tokens" in out, out[-3000:]
    assert "Perplexity: " in out and "Perplexity: nan" not in out and "Perplexity: inf" not in out


def test_generate_and_interactive_with_a_language_model(lm):
    d, _ = lm
    out = fairseq("generate", d / "bin", "--user-dir", USER_DIR, "--task", "language_modeling",
                  "--path", d / "ck/checkpoint_last.pt", "--gen-subset", "valid", "--sample-break-mode", "eos",
                  "--tokens-per-sample", "32", "--batch-size", "40", "--beam", "2", "--max-len-b", "3", "--cpu")
    assert sum(line.startswith("H-") for line in out.splitlines()) == 40, out[-3000:]
    prompts = ["the small dog", "two robots see"]
    p = run("interactive", d / "bin", "--user-dir", USER_DIR, "--task", "language_modeling",
            "--path", d / "ck/checkpoint_last.pt", "--beam", "2", "--max-len-b", "4", "--cpu", stdin="\n".join(prompts) + "\n")
    assert p.returncode == 0, p.stderr[-3000:]
    sources = [line.split("\t", 1)[1] for line in p.stdout.splitlines() if line.startswith("S-")]
    hypotheses = [line for line in p.stdout.splitlines() if line.startswith("H-")]
    assert sources == prompts and len(hypotheses) == 2, p.stdout[-3000:]


def test_translation_with_num_batch_buckets(tmp_path):
    toy_data.write_translation_corpus(tmp_path / "raw", task="reverse", sizes=(300, 30, 30), max_len=8, seed=2)
    fairseq("preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
            "--trainpref", tmp_path / "raw/train", "--validpref", tmp_path / "raw/valid",
            "--destdir", tmp_path / "bin", "--workers", "1")
    log = fairseq("train", tmp_path / "bin", "--user-dir", USER_DIR, "--task", "translation",
                  "--arch", "fwp_transformer", "--encoder-layers", "1", "--decoder-layers", "1",
                  "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "16",
                  "--decoder-ffn-embed-dim", "16", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
                  "--share-all-embeddings", *DELTA, "--num-batch-buckets", "4", "--optimizer", "adam", "--lr", "1e-3",
                  "--max-tokens", "400", "--max-epoch", "1", "--cpu", "--num-workers", "0", "--no-save")
    assert "done training" in log and "num_updates" in log


# ---------------------------------------------------------------------------- short errors


@pytest.mark.parametrize("command", ["fairseq-train", "eval_lm", "generate"])
def test_bad_fwp_setting_ends_with_one_short_line(lm, command):
    d, _ = lm
    if command == "fairseq-train":  # the console script, with the example
        args = [d / "bin", "--user-dir", USER_DIR, "--task", "language_modeling", *LM_ARCH, *LM_OPT,
                "--fwp-replace", "", "--max-update", "1", "--save-dir", d / "never"]
        message = "fairseq-fwp: error: --fwp-replace is empty: "
    else:  # the checkpoint's model rebuilt with a setting it cannot have
        args = [d / "bin", "--user-dir", USER_DIR, "--path", d / "ck/checkpoint_last.pt", "--cpu",
                "--model-overrides", "{'fwp_replace': 'cross'}", "--gen-subset", "test", "--tokens-per-sample", "32"]
        if command == "generate":
            args += ["--task", "language_modeling"]
        message = "fairseq-fwp: error: --fwp-replace cross: this model has no cross attention; it has decoder_self"
    p = run(command, *args)
    assert p.returncode == 1
    lines = p.stderr.rstrip("\n").splitlines()
    assert lines[-1].startswith(message), p.stderr[-3000:]
    assert lines[-2] == "fairseq-fwp: invalid configuration (FWP_TRACEBACK=1 shows the traceback)"
    assert "Traceback" not in p.stderr and "raise ValueError" not in p.stderr


def test_fwp_traceback_and_other_errors_keep_the_traceback(lm):
    """FWP_TRACEBACK=1 shows our traceback; other errors always have theirs (tests/test_flags.py
    checks the hook's choice in-process)."""
    d, _ = lm
    p = run("eval_lm", d / "bin", "--user-dir", USER_DIR, "--path", d / "ck/checkpoint_last.pt", "--cpu",
            "--model-overrides", "{'fwp_dpfp_nu': 20, 'fwp_feature_map': 'dpfp'}", env=dict(ENV, FWP_TRACEBACK="1"))
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr, p.stderr[-3000:]
    assert p.stderr.rstrip().splitlines()[-1].startswith("ValueError: --fwp-dpfp-nu 20 is too large for head size d_key 16")
    p = run("eval_lm", d / "bin", "--user-dir", USER_DIR, "--path", d / "ck/missing.pt", "--cpu")
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr, p.stderr[-3000:]
    assert "fairseq-fwp: error" not in p.stderr
