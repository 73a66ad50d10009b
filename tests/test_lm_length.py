"""A fast weight LM runs past its training length (issue 17, items 7 and 9).

Only learned positional embeddings (``--decoder-learned-pos``) limit how many tokens an
``fwp_lm`` reads; without positional embeddings, or with fairseq's sinusoidal ones (which
it extends to any length), the fast weight state is O(1) and fairseq-generate,
-interactive and -eval-lm run to any length by default (once fairseq prepares the model
for inference; training keeps fairseq's size filter of its data). Learned positions keep
their limit and say so.

Models are trained at L = 16 (``--tokens-per-sample 16``, so ``max_target_positions`` 16)
on a 23-word vocabulary. Numerics against float64: incremental decoding (fairseq's
``incremental_state``, one token per call) equals one full forward to 1e-10 at 700 tokens;
the scores printed by the command lines (float32 models) equal a float64 full forward of
the same checkpoint to 2e-4 (fairseq prints base-2 scores with 4 decimals) and the
eval-lm loss to 1e-4.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fairseq import checkpoint_utils
from fairseq.data import Dictionary, indexed_dataset

from test_lm_state import DELTA, SUM_NORMED, TINY, USER_DIR, setup

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")

L_TRAIN = 16
POSITIONS = {"none": ["--no-token-positional-embeddings"], "sinusoidal": [], "learned": ["--decoder-learned-pos"]}
PREFIX = 40  # > L_TRAIN: refused as "max_positions=16" before the fix
NEW = 200
SCORED = 500  # tokens of the test split: one full-context segment of 500 tokens


def fairseq(module, *args):
    p = subprocess.run([sys.executable, "-m", f"fairseq_cli.{module}", *map(str, args)], cwd=ROOT, env=ENV,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def write_data(path: Path, vocab: int = 20, seed: int = 0) -> Path:
    """Binarised LM data: 300 train lines, 20 valid lines and a test split of exactly SCORED tokens."""
    path.mkdir(parents=True, exist_ok=True)
    d = Dictionary()
    for i in range(vocab):
        d.add_symbol(f"w{i}", n=vocab - i)
    d.save(str(path / "dict.txt"))
    rng = np.random.default_rng(seed)
    for split, total in (("train", 300 * 8), ("valid", 20 * 8), ("test", SCORED)):
        b = indexed_dataset.make_builder(str(path / f"{split}.bin"), "mmap", vocab_size=len(d))
        left = total
        while left > 0:
            n = min(left, int(rng.integers(3, 12)))
            b.add_item(torch.tensor(rng.integers(d.nspecial, len(d), size=n - 1).tolist() + [d.eos()]))
            left -= n
        b.finalize(str(path / f"{split}.idx"))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One Delta Net per positional encoding, trained at L = 16 (a few hundred updates of a tiny model)."""
    root = tmp_path_factory.mktemp("length")
    data = write_data(root / "bin")
    out = {}
    for name, flags in POSITIONS.items():
        rc, log, err = fairseq(
            "train", data, "--user-dir", USER_DIR, "--task", "language_modeling", "--arch", "fwp_lm", *DELTA, *TINY,
            *flags, "--tokens-per-sample", L_TRAIN, "--batch-size", "8", "--required-batch-size-multiple", "1",
            "--optimizer", "adam", "--lr", "3e-3", "--max-epoch", "2", "--save-dir", root / name,
            "--no-epoch-checkpoints", "--cpu", "--num-workers", "0", "--seed", "1", "--log-format", "simple")
        assert rc == 0, err[-3000:]
        out[name] = root / name / "checkpoint_last.pt"
    return data, out


def load(ck: Path):
    (model,), _ = checkpoint_utils.load_model_ensemble([str(ck)])
    return model.eval()


def full_forward_logprobs(model, tokens: torch.Tensor) -> torch.Tensor:
    """float64 log p(tokens[t + 1] | tokens[: t + 1]) from one forward over the whole sequence."""
    model = model.double()  # (get_normalized_probs would round to float32: log_softmax here)
    with torch.no_grad():
        lp = torch.log_softmax(model(tokens[None, :-1])[0][0], -1)
    model.float()
    return lp.gather(-1, tokens[1:, None])[:, 0]


# ----------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("flags", [DELTA, SUM_NORMED], ids=["delta", "sum_attn_norm"])
@pytest.mark.parametrize("pos", ["none", "sinusoidal"])
def test_incremental_decoding_equals_full_forward_far_past_the_training_length(tmp_path, pos, flags):
    data = write_data(tmp_path / "bin")
    _, model, _ = setup(data, model_flags=flags + POSITIONS[pos], tokens_per_sample=L_TRAIN)
    model = model.double().eval()
    assert model.decoder.max_target_positions == L_TRAIN == model.max_positions()  # training: fairseq's size filter
    model.make_generation_fast_()  # what fairseq's prepare_for_inference_ calls (generate, interactive, eval-lm, hub)
    assert model.max_positions() >= 2**62 and model.max_decoder_positions() >= 2**62  # no limit
    T = SCORED + NEW
    tokens = torch.randint(4, 24, (1, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # output logits (get_normalized_probs would round them to float32)
        full = model(tokens)[0][0]
        inc_state, steps = {}, []
        for t in range(T):  # fairseq's incremental API: the prefix so far, the decoder reads its last token
            steps.append(model.decoder(tokens[:, : t + 1], incremental_state=inc_state)[0][0, -1])
    assert full.dtype == torch.float64 and full.shape == (T, 24)
    torch.testing.assert_close(torch.stack(steps), full, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- command lines


def _positional_scores(stdout: str):
    hyp = re.search(r"^H-0\t\S+\t(.*)$", stdout, re.M)
    pos = re.search(r"^P-0\t(.*)$", stdout, re.M)
    assert hyp and pos, stdout[-3000:]
    return hyp.group(1).split(), [float(x) for x in pos.group(1).split()]


@pytest.mark.parametrize("pos", ["none", "sinusoidal"])
def test_interactive_continues_a_long_prefix_for_200_tokens(trained, pos):
    """A 40-token prefix (refused before: max_positions=16) and 200 new tokens (stopped at 15
    before, with a forced </s>); the printed scores equal a float64 full forward."""
    data, cks = trained
    prefix = " ".join(f"w{i % 20}" for i in range(PREFIX))
    p = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.interactive", str(data), "--user-dir", USER_DIR, "--task",
         "language_modeling", "--path", str(cks[pos]), "--cpu", "--beam", "1", "--min-len", str(PREFIX + NEW),
         "--max-len-b", str(PREFIX + NEW)],
        input=prefix + "\n", cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    words, scores = _positional_scores(p.stdout)
    assert words[:PREFIX] == prefix.split() and len(words) == PREFIX + NEW
    model = load(cks[pos])
    d = model.decoder.dictionary
    ids = torch.tensor([d.eos()] + [d.index(w) for w in words] + [d.eos()])
    ref = full_forward_logprobs(model, ids) / math.log(2)  # fairseq prints base 2
    assert len(scores) == len(ref) == PREFIX + NEW + 1
    np.testing.assert_allclose(scores, ref.numpy(), rtol=0, atol=2e-4)


@pytest.mark.parametrize("pos", ["none", "sinusoidal"])
def test_full_context_evaluation_reads_500_tokens(trained, pos):
    data, cks = trained
    rc, out, err = fairseq(
        "eval_lm", data, "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--path", cks[pos],
        "--gen-subset", "test", "--tokens-per-sample", SCORED, "--fwp-eval-mode", "full", "--cpu", "--num-workers", "0")
    assert rc == 0, err[-3000:]
    log = out + err
    n = int(re.search(r"Evaluated ([0-9,]+) tokens", log).group(1).replace(",", ""))
    loss = float(re.search(r"Loss \(base 2\): ([0-9.]+)", log).group(1))
    assert n == SCORED
    model = load(cks[pos])
    d = model.decoder.dictionary
    split = indexed_dataset.MMapIndexedDataset(str(data / "test"))
    stream = torch.cat([torch.tensor([d.eos()])] + [split[i].long() for i in range(len(split))])
    ref = -full_forward_logprobs(model, stream).mean().item() / math.log(2)  # one segment of 500 tokens
    assert loss == pytest.approx(ref, abs=1e-4)


def test_learned_positions_keep_their_limit_and_say_so(trained):
    data, cks = trained
    model = load(cks["learned"])
    model.make_generation_fast_()
    assert model.max_positions() == model.max_decoder_positions() == L_TRAIN
    prefix = " ".join(f"w{i}" for i in range(5))
    p = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.interactive", str(data), "--user-dir", USER_DIR, "--task",
         "language_modeling", "--path", str(cks["learned"]), "--cpu", "--beam", "1", "--max-len-b", "100"],
        input=prefix + "\n", cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert ("learned positional embeddings (--decoder-learned-pos) cover 16 positions" in p.stderr
            and "generation stops after 15 tokens" in p.stderr), p.stderr[-3000:]
    words, _ = _positional_scores(p.stdout)
    assert 5 <= len(words) <= L_TRAIN - 1  # the 5-token prefix, at most 15 tokens in all
    rc, _, err = fairseq(
        "eval_lm", data, "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--path", cks["learned"],
        "--gen-subset", "test", "--tokens-per-sample", "64", "--fwp-eval-mode", "full", "--cpu", "--num-workers", "0")
    assert rc == 1 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "fairseq-fwp: error: --tokens-per-sample 64 is longer than the model can read: its learned positional "
        "embeddings (--decoder-learned-pos) cover 16 positions (the --tokens-per-sample it was trained with; models "
        "trained with --no-token-positional-embeddings or sinusoidal positions, the default, have no length limit); "
        "use --tokens-per-sample 16 or less")
