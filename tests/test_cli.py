"""End-to-end tests of the fairseq command lines with the plugin (``--user-dir fairseq_fwp``).

The fairseq CLIs run as subprocesses (``sys.executable -m fairseq_cli.train`` ...) on
tiny corpora from ``fairseq_fwp.data.toy_data`` written into tmp dirs. Each test takes
well under a minute or two on 2 CPU cores. They also cover checkpoint loading under
torch >= 2.6 (weights-only unpickling): generate, eval-lm, resuming and averaging all
read checkpoints written by fairseq-train.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fairseq_fwp
from fairseq_fwp.data import toy_data

ROOT = Path(__file__).resolve().parents[1]
USER_DIR = str(Path(fairseq_fwp.__file__).resolve().parent)
AVERAGE = str(ROOT / "scripts" / "average_checkpoints.py")

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")

MT_ARCH = [
    "--arch", "fwp_transformer",
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
    "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
    "--share-all-embeddings", "--dropout", "0.0",
]
MT_OPT = [
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "3e-3",
    "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--clip-norm", "1.0",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--max-tokens", "600", "--cpu", "--seed", "1", "--num-workers", "0",
    "--log-format", "simple", "--log-interval", "20",
]
LINEAR = ["--fwp-feature-map", "linear", "--fwp-update-rule", "sum", "--fwp-attn-norm"]
DELTA = ["--fwp-feature-map", "linear", "--fwp-update-rule", "delta", "--fwp-sum-norm"]

BLEU_THRESHOLD = 50.0  # the linear model reaches ~80 on this task in 15 epochs


def fairseq(module, *args, timeout=600, check=True):
    cmd = [sys.executable, "-m", f"fairseq_cli.{module}", *map(str, args)]
    p = subprocess.run(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\nexit {p.returncode}\n{p.stdout[-5000:]}")
    return p.stdout


def bleu_of(generate_output: str) -> float:
    m = re.search(r"BLEU4? = ([0-9.]+)", generate_output)
    assert m, generate_output[-3000:]
    return float(m.group(1))


def generate(data, checkpoint):
    return fairseq("generate", data, "--user-dir", USER_DIR, "--path", checkpoint, "--gen-subset", "test",
                   "--beam", "4", "--batch-size", "100", "--cpu")


@pytest.fixture(scope="module")
def mt_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("mt")
    toy_data.write_translation_corpus(d / "raw", task="reverse", sizes=(2000, 100, 100), max_len=8, seed=1)
    fairseq("preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
            "--trainpref", d / "raw/train", "--validpref", d / "raw/valid", "--testpref", d / "raw/test",
            "--destdir", d / "bin", "--workers", "1")
    return d


@pytest.fixture(scope="module")
def mt_trained(mt_data):
    """A Linear Transformer trained for 15 epochs, keeping the last 3 epoch checkpoints."""
    save = mt_data / "ck_linear"
    log = fairseq("train", mt_data / "bin", "--user-dir", USER_DIR, "--task", "translation", *MT_ARCH, *LINEAR,
                  *MT_OPT, "--max-epoch", "15", "--keep-last-epochs", "3", "--save-dir", save)
    assert "done training" in log
    return mt_data / "bin", save


# ---------------------------------------------------------------------------- packaging


def test_kernels_is_installed_as_fwp_kernels_only(tmp_path):
    """fwp_kernels (kernels/fwp_kernels/) is installed with its subpackages; nothing
    installs a top-level `kernels` (a PyPI package owns that name)."""
    code = ("import importlib.util as u, fwp_kernels; "
            "print(u.find_spec('kernels') is None, fwp_kernels.__name__, "
            "u.find_spec('fwp_kernels.triton') is not None)")
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "fwp_kernels", "True"]


# ---------------------------------------------------------------------------- translation


def test_train_then_generate_reaches_bleu(mt_trained):
    data, save = mt_trained
    out = generate(data, save / "checkpoint_best.pt")
    bleu = bleu_of(out)
    assert bleu >= BLEU_THRESHOLD, out[-2000:]


def test_averaged_checkpoint_loads_in_generate(mt_trained, tmp_path):
    data, save = mt_trained
    avg = tmp_path / "averaged.pt"
    p = subprocess.run([sys.executable, AVERAGE, "--inputs", str(save), "--num-epoch-checkpoints", "3",
                        "--output", str(avg)], env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for epoch in (13, 14, 15):
        assert f"checkpoint{epoch}.pt" in p.stderr
    bleu = bleu_of(generate(data, avg))
    assert bleu >= BLEU_THRESHOLD


def test_killed_training_resumes_from_last_checkpoint(mt_data, tmp_path):
    save = tmp_path / "ck"
    log1 = tmp_path / "first.log"
    max_epoch = 6
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(mt_data / "bin"), "--user-dir", USER_DIR,
           "--task", "translation", *MT_ARCH, *DELTA, *MT_OPT, "--max-epoch", str(max_epoch),
           "--save-dir", str(save), "--no-epoch-checkpoints"]
    with open(log1, "w") as f:
        proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if "Saved checkpoint" in log1.read_text() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "training ended before it could be killed:\n" + log1.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)  # like a preempted job: no clean shutdown
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first = log1.read_text()
    saved = [int(e) for e in re.findall(r"Saved checkpoint .*?\(epoch (\d+) @", first)]
    assert saved, first[-3000:]
    assert f"epoch {max_epoch:03d} | valid" not in first

    second = subprocess.run(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=600)
    log = second.stdout
    assert second.returncode == 0, log[-5000:]
    m = re.search(r"Loaded checkpoint \S*checkpoint_last\.pt \(epoch (\d+) @ (\d+) updates\)", log)
    assert m, "the restarted run did not load checkpoint_last.pt:\n" + log[-5000:]
    loaded_epoch, loaded_updates = int(m.group(1)), int(m.group(2))
    assert loaded_epoch >= saved[0] and loaded_updates > 0
    begun = [int(e) for e in re.findall(r"begin training epoch (\d+)", log)]
    assert begun and begun[0] == max(saved) + 1, f"restart began at epoch {begun[:1]}, saved {saved}"
    assert "begin training epoch 1\n" not in log
    assert f"epoch {max_epoch:03d} | valid on" in log
    assert "done training" in log


# ---------------------------------------------------------------------------- language model


def test_train_then_eval_lm_perplexity(tmp_path):
    toy_data.write_lm_corpus(tmp_path / "raw", sizes=(2000, 200, 200), seed=1)
    data = tmp_path / "bin"
    fairseq("preprocess", "--only-source", "--trainpref", tmp_path / "raw/train.txt",
            "--validpref", tmp_path / "raw/valid.txt", "--testpref", tmp_path / "raw/test.txt",
            "--destdir", data, "--workers", "1")
    save = tmp_path / "ck"
    fairseq("train", data, "--user-dir", USER_DIR, "--task", "language_modeling", "--arch", "fwp_lm", *DELTA,
            "--decoder-layers", "2", "--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "128",
            "--decoder-attention-heads", "4", "--tokens-per-sample", "64", "--dropout", "0.0",
            "--share-decoder-input-output-embed", "--optimizer", "adam", "--lr", "2e-3",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50", "--clip-norm", "1.0",
            "--max-tokens", "1024", "--max-epoch", "6", "--save-dir", save, "--no-epoch-checkpoints",
            "--cpu", "--seed", "1", "--num-workers", "0", "--log-format", "simple")
    out = fairseq("eval_lm", data, "--user-dir", USER_DIR, "--path", save / "checkpoint_best.pt",
                  "--gen-subset", "test", "--tokens-per-sample", "64", "--max-tokens", "2048", "--cpu")
    m = re.search(r"Perplexity: ([0-9.]+|inf|nan)", out)
    assert m, out[-3000:]
    ppl = float(m.group(1))
    # real words + </s> (fairseq's dict.txt pads with never-seen madeupwordNNNN entries)
    words = sum(1 for line in open(data / "dict.txt") if not line.startswith("madeupword")) + 1
    assert ppl == ppl and ppl < float("inf")
    assert ppl < words / 2, f"perplexity {ppl} not clearly below the uniform {words}"
