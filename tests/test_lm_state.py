"""Task ``fwp_language_modeling``: stream order, carried state, reset, refusals, and the
two evaluation modes of fairseq-eval-lm against brute force.

Everything runs in-process on tiny binarised corpora written here, except one
end-to-end test of the fairseq-train / fairseq-eval-lm command lines."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairseq import options, tasks
from fairseq.data import Dictionary, indexed_dataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_scorer import SequenceScorer
from fairseq_cli.eval_lm import eval_lm

import fairseq_fwp
from fairseq_fwp.models.encoder_decoder import FwpTransformerDecoder

ROOT = Path(__file__).resolve().parents[1]
USER_DIR = str(Path(fairseq_fwp.__file__).resolve().parent)

DELTA = ["--fwp-feature-map", "linear", "--fwp-update-rule", "delta", "--fwp-sum-norm"]
SUM_NORMED = ["--fwp-feature-map", "linear", "--fwp-update-rule", "sum", "--fwp-attn-norm"]
TINY = ["--decoder-layers", "2", "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32",
        "--decoder-attention-heads", "2", "--dropout", "0"]


# ----------------------------------------------------------------------------- helpers


def write_lm_data(path: Path, lines_per_split=None, vocab: int = 20, seed: int = 0) -> Path:
    """A binarised fairseq LM data dir (dict.txt, {train,valid,test}.{bin,idx}) of random lines."""
    path.mkdir(parents=True, exist_ok=True)
    lines_per_split = lines_per_split or {"train": 60, "valid": 12, "test": 12}
    d = Dictionary()
    for i in range(vocab):
        d.add_symbol(f"w{i}", n=vocab - i)
    d.save(str(path / "dict.txt"))
    rng = np.random.default_rng(seed)
    for split, n in lines_per_split.items():
        builder = indexed_dataset.make_builder(str(path / f"{split}.bin"), "mmap", vocab_size=len(d))
        for _ in range(n):
            ids = rng.integers(d.nspecial, len(d), size=int(rng.integers(3, 12)))
            builder.add_item(torch.tensor(list(ids) + [d.eos()], dtype=torch.int64))
        builder.finalize(str(path / f"{split}.idx"))
    return path


def setup(data: Path, task_flags=(), model_flags=DELTA, arch_flags=TINY, tokens_per_sample=8, build=True):
    argv = [str(data), "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--arch", "fwp_lm",
            "--tokens-per-sample", str(tokens_per_sample), "--seed", "1", "--cpu",
            *arch_flags, *model_flags, *task_flags]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    if not build:
        return task, None, None
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    return task, model, task.build_criterion(cfg.criterion)


class BackwardOnly:
    """The optimizer interface train_step needs; parameters never change."""

    def backward(self, loss):
        loss.backward()


def batches(task, split="train", B=3, num_shards=1, shard_id=0, shuffle=True):
    itr = task.get_batch_iterator(task.dataset(split), max_sentences=B, num_shards=num_shards, shard_id=shard_id)
    return list(itr.next_epoch_itr(shuffle=shuffle))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_lm_data(tmp_path_factory.mktemp("lmstate") / "bin")


def stream_of(task, split):
    return task.dataset(split).stream.long()


# ----------------------------------------------------------------------------- stream order


@pytest.mark.parametrize("num_shards", [1, 2])
def test_streams_kept_in_order_and_sharded_by_rank(data, num_shards):
    task, _, _ = setup(data, ["--fwp-carry-state", "--batch-size", "3"], build=False)
    task.load_dataset("train")
    S = stream_of(task, "train")
    B, L, N = 3, 8, len(S) - 1
    n = N // (B * num_shards)
    seen = []
    for rank in range(num_shards):
        bs = batches(task, B=B, num_shards=num_shards, shard_id=rank)  # shuffle requested: must be ignored
        assert [b["fwp_segment"] for b in bs] == list(range(len(bs))) == list(range(math.ceil(n / L)))
        assert all(b["net_input"]["src_tokens"].shape[0] == B for b in bs)
        for row in range(B):
            src = torch.cat([b["net_input"]["src_tokens"][row] for b in bs])
            tgt = torch.cat([b["target"][row] for b in bs])
            start = (rank * B + row) * n  # this rank's streams, contiguous in the split
            assert torch.equal(src, S[start : start + n]) and torch.equal(tgt, S[start + 1 : start + n + 1])
            for prev, nxt in zip(bs, bs[1:]):  # a batch continues the previous batch's streams
                assert nxt["net_input"]["src_tokens"][row, 0] == prev["target"][row, -1]
            seen.append(start)
        # the next epoch has the same order
        again = batches(task, B=B, num_shards=num_shards, shard_id=rank)
        assert all(torch.equal(a["net_input"]["src_tokens"], b["net_input"]["src_tokens"]) for a, b in zip(bs, again))
    assert sorted(seen) == [k * n for k in range(B * num_shards)]


def test_without_carry_state_the_task_is_language_modeling(data):
    ours, _, _ = setup(data, ["--batch-size", "4"], build=False)
    ours.load_dataset("train")
    argv = [str(data), "--task", "language_modeling", "--tokens-per-sample", "8", "--arch", "fwp_lm",
            "--user-dir", USER_DIR, "--batch-size", "4"]
    stock = tasks.setup_task(convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv)).task)
    stock.load_dataset("train")
    assert type(ours.dataset("train")) is type(stock.dataset("train"))
    a = list(ours.get_batch_iterator(ours.dataset("train"), max_sentences=4, seed=3).next_epoch_itr(shuffle=True))
    b = list(stock.get_batch_iterator(stock.dataset("train"), max_sentences=4, seed=3).next_epoch_itr(shuffle=True))
    assert len(a) == len(b) and all(torch.equal(x["net_input"]["src_tokens"], y["net_input"]["src_tokens"]) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- carried state


def _long_forward_state(model, src):
    state = {}
    with torch.no_grad():
        model(src, fast_weight_state=state)
    return state


@pytest.mark.parametrize("flags", [DELTA, SUM_NORMED], ids=["delta", "sum_attn_norm"])
def test_carried_state_equals_one_long_forward(data, flags):
    task, model, criterion = setup(data, ["--fwp-carry-state", "--batch-size", "3", "--no-token-positional-embeddings"],
                                   model_flags=flags)
    task.load_dataset("train")
    bs = batches(task)[:4]
    task.begin_epoch(1, model)
    losses = []
    for i, b in enumerate(bs):
        loss, sample_size, _ = task.train_step(b, model, criterion, BackwardOnly(), i)
        losses.append(loss.item())
        for buf in task._carried["train"].values():  # detached: backprop stops at the segment
            assert all(t.grad_fn is None and not t.requires_grad for t in buf.values() if t is not None)
    carried = task._carried["train"]
    src = torch.cat([b["net_input"]["src_tokens"] for b in bs], dim=1)
    ref = _long_forward_state(model, src)
    assert len(carried) == len(ref) == 2 * (1 + 0)  # one state buffer per layer
    model.eval()
    for key in ref:
        for name, t in ref[key].items():
            c = carried[key][name]
            assert c.shape == t.shape
            torch.testing.assert_close(c, t, rtol=1e-4, atol=1e-5)
    # the summed segment losses equal the loss of the long forward (same token scores)
    tgt = torch.cat([b["target"] for b in bs], dim=1)
    with torch.no_grad():
        logits = model(src)[0]
    long_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), reduction="sum")
    assert sum(losses) == pytest.approx(long_loss.item(), rel=1e-4)


def test_without_the_detach_the_second_segment_cannot_backpropagate(data, monkeypatch):
    """The detach is what bounds backpropagation to one segment (a broken carry fails loudly)."""
    from fairseq_fwp.tasks import fwp_language_modeling as mod

    task, model, criterion = setup(data, ["--fwp-carry-state", "--batch-size", "3"])
    task.load_dataset("train")
    bs = batches(task)
    monkeypatch.setattr(mod, "detach_fast_weight_state", lambda state: None)
    task.train_step(bs[0], model, criterion, BackwardOnly(), 0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        task.train_step(bs[1], model, criterion, BackwardOnly(), 1)


def test_state_resets_at_epoch_start(data):
    task, model, criterion = setup(data, ["--fwp-carry-state", "--batch-size", "3", "--no-token-positional-embeddings"])
    task.load_dataset("train")
    bs = batches(task)
    task.begin_epoch(1, model)
    for i, b in enumerate(bs[:3]):
        task.train_step(b, model, criterion, BackwardOnly(), i)
    assert task._carried["train"]
    task.begin_epoch(2, model)
    assert task._carried["train"] == {}
    # batch 0 of the new epoch starts from zero even if a stale state were left behind
    stale = {k: {n: t + 1.0 for n, t in buf.items()} for k, buf in _long_forward_state(model, bs[1]["net_input"]["src_tokens"]).items()}
    task._carried["train"].update(stale)
    task.train_step(bs[0], model, criterion, BackwardOnly(), 0)
    fresh = _long_forward_state(model, bs[0]["net_input"]["src_tokens"])
    for key in fresh:
        torch.testing.assert_close(task._carried["train"][key]["S"], fresh[key]["S"], rtol=1e-5, atol=1e-6)
    # validation carries its own state, reset at each validation start
    task.load_dataset("valid")
    vb = batches(task, "valid")
    task.valid_step(vb[0], model, criterion)
    assert task._carried["valid"] and task._carried["train"]
    task.begin_valid_epoch(2, model)
    assert task._carried["valid"] == {}


# ----------------------------------------------------------------------------- refusals


def test_refusals(data):
    # the softmax refusal of carried-state training offers only what carry accepts (not favor)
    with pytest.raises(ValueError, match="--fwp-feature-map softmax") as refused:
        setup(data, ["--fwp-carry-state", "--batch-size", "2"], model_flags=["--fwp-feature-map", "softmax"])
    assert "use --fwp-feature-map linear or dpfp (not favor" in str(refused.value)
    with pytest.raises(ValueError, match="--sample-break-mode none"):
        setup(data, ["--fwp-carry-state", "--batch-size", "2", "--sample-break-mode", "eos"], build=False)
    with pytest.raises(ValueError, match="--sample-break-mode none"):
        setup(data, ["--fwp-eval-mode", "full", "--sample-break-mode", "complete"], build=False)
    with pytest.raises(ValueError, match="fixed --batch-size"):
        setup(data, ["--fwp-carry-state", "--max-tokens", "64"], build=False)
    with pytest.raises(ValueError, match="FAVOR"):
        setup(data, ["--fwp-carry-state", "--batch-size", "2"], model_flags=["--fwp-feature-map", "favor"])
    task, model, criterion = setup(data, ["--fwp-carry-state", "--batch-size", "3"])
    task.load_dataset("train")
    with pytest.raises(ValueError, match="--max-tokens 16 would split"):
        task.get_batch_iterator(task.dataset("train"), max_tokens=16, max_sentences=3)
    # a batch whose size differs from the carried state's
    bs = batches(task)
    task.train_step(bs[0], model, criterion, BackwardOnly(), 0)
    smaller = {**bs[1], "net_input": {k: v[:2] for k, v in bs[1]["net_input"].items()}, "target": bs[1]["target"][:2]}
    with pytest.raises(ValueError, match="a train batch of 2 streams follows one of 3"):
        task.train_step(smaller, model, criterion, BackwardOnly(), 1)
    # full-context evaluation of a softmax model
    with pytest.raises(ValueError, match="--fwp-eval-mode full.*softmax"):
        setup(data, ["--fwp-eval-mode", "full"], model_flags=["--fwp-feature-map", "softmax"])


# ----------------------------------------------------------------------------- evaluation modes


def _eval(task, model, split, mode_batch):
    """Run fairseq-eval-lm's scorer over the task's batches; per-token log-probs in order."""
    model.eval()
    itr = task.eval_lm_dataloader(task.dataset(split), num_workers=0, **mode_batch)
    scorer = SequenceScorer(task.target_dictionary)
    scores = []
    for sample in itr:
        for hypo in scorer.generate([model], sample):
            scores.append(hypo[0]["positional_scores"])
    return torch.cat(scores)


def _fairseq_loss(task, model, split, mode_batch):
    res = eval_lm([model], task.source_dictionary, task.eval_lm_dataloader(task.dataset(split), num_workers=0, **mode_batch),
                  target_dictionary=task.target_dictionary)
    return res["loss"]


def _logprobs(model, src, tgt):
    with torch.no_grad():
        out = model(src)
        lp = model.get_normalized_probs(out, log_probs=True, sample={"target": tgt})
    return lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)


ADAPTIVE = ["--adaptive-softmax-cutoff", "8,14", "--adaptive-input", "--adaptive-input-cutoff", "8,14",
            "--tie-adaptive-weights", "--criterion", "adaptive_loss", "--ddp-backend", "legacy_ddp"]


@pytest.mark.parametrize("extra", [[], ADAPTIVE], ids=["softmax_out", "adaptive"])
@pytest.mark.parametrize("flags", [DELTA, ["--fwp-feature-map", "softmax"]], ids=["delta", "softmax_attn"])
def test_sliding_mode_equals_brute_force_windows(data, flags, extra):
    L = 8
    task, model, _ = setup(data, ["--fwp-eval-mode", "sliding"], model_flags=flags + extra, tokens_per_sample=L)
    task.load_dataset("test")
    S = stream_of(task, "test")
    N = len(S) - 1
    model.eval()
    # brute force: the first window scores every position, each later window its last token
    ref = [_logprobs(model, S[None, :L], S[None, 1 : L + 1])[0]]
    for j in range(1, N - L + 1):
        ref.append(_logprobs(model, S[None, j : j + L], S[None, j + 1 : j + L + 1])[0, -1:])
    ref = torch.cat(ref)
    ours = _eval(task, model, "test", dict(max_tokens=40))
    assert ours.shape == ref.shape == (N,)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    loss = _fairseq_loss(task, model, "test", dict(max_tokens=40))
    assert loss == pytest.approx(-ref.mean().item() / math.log(2), rel=1e-4)


def test_sliding_mode_projects_only_the_scored_positions(data):
    """Without adaptive softmax the output projection (the full vocabulary) runs on one row per
    window, the scored last position, not on all L positions (issue 17, item 8)."""
    task, model, _ = setup(data, ["--fwp-eval-mode", "sliding"], tokens_per_sample=8)
    task.load_dataset("test")
    projected = []
    hook = model.decoder.output_projection.register_forward_hook(lambda m, i, o: projected.append(tuple(i[0].shape)))
    scores = _eval(task, model, "test", dict(max_tokens=40))
    hook.remove()
    assert projected and all(shape[1] == 1 for shape in projected), projected[:3]
    assert sum(shape[0] for shape in projected) == len(scores) == task.dataset("test").n_targets
    assert "output_layer" not in vars(model.decoder)  # the decoder is itself again after the evaluation
    S = stream_of(task, "test")
    full = _logprobs(model, S[None, :-1], S[None, 1:])[0]
    assert not torch.allclose(scores, full)  # (windows of 8, not the whole split)
    torch.testing.assert_close(scores[:8], full[:8], rtol=1e-5, atol=1e-6)  # the first window: every position


def test_sliding_mode_with_output_dictionary_size(data):
    """--output-dictionary-size 12: the model predicts the 12 most frequent symbols and every
    other target is scored as <unk>; brute force windows with the targets mapped the same way."""
    L, V = 8, 12
    task, model, _ = setup(data, ["--fwp-eval-mode", "sliding", "--output-dictionary-size", str(V)], tokens_per_sample=L)
    assert len(task.target_dictionary) == V and model.decoder.output_projection.out_features == V
    task.load_dataset("test")
    S = stream_of(task, "test")
    T = S.masked_fill(S >= V, task.source_dictionary.unk())
    assert (S >= V).sum() > len(S) // 4  # many targets outside the output vocabulary
    model.eval()
    ref = [_logprobs(model, S[None, :L], T[None, 1 : L + 1])[0]]
    for j in range(1, len(S) - L):
        ref.append(_logprobs(model, S[None, j : j + L], T[None, j + 1 : j + L + 1])[0, -1:])
    ref = torch.cat(ref)
    ours = _eval(task, model, "test", dict(max_tokens=40))
    assert ours.shape == ref.shape == (len(S) - 1,)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flags", [DELTA, SUM_NORMED], ids=["delta", "sum_attn_norm"])
def test_carried_validation_loss_equals_brute_force(data, flags):
    """The loss of a validation pass with --fwp-carry-state (B streams, state carried from segment
    to segment) equals one float64 forward over each stream, cut from the valid split read
    independently of the task. The criterion's log-softmax is float32 (fairseq): rel 1e-6."""
    B = 3
    task, model, criterion = setup(data, ["--fwp-carry-state", "--batch-size", str(B), "--no-token-positional-embeddings"],
                                   model_flags=flags)
    model.double()
    task.load_dataset("valid")
    split = indexed_dataset.MMapIndexedDataset(str(data / "valid"))
    S = torch.cat([torch.tensor([task.source_dictionary.eos()])] + [split[i].long() for i in range(len(split))])
    n = (len(S) - 1) // B  # tokens per stream; the remainder is dropped
    model.eval()
    with torch.no_grad():
        ref = sum(-torch.log_softmax(model(S[None, b * n : (b + 1) * n])[0][0], -1)
                  .gather(-1, S[b * n + 1 : (b + 1) * n + 1, None]).sum() for b in range(B))
    assert ref.dtype == torch.float64
    task.begin_valid_epoch(1, model)
    total, count = 0.0, 0
    for batch in task.get_batch_iterator(task.dataset("valid"), max_sentences=B).next_epoch_itr(shuffle=False):
        loss, sample_size, _ = task.valid_step(batch, model, criterion)
        total, count = total + loss.item(), count + sample_size
    assert count == B * n
    assert total == pytest.approx(ref.item(), rel=1e-6)
    # and carrying matters: independent segments would score differently
    assert abs(total - ref.item()) < 1e-3 * abs(ref.item() - _independent_segments_loss(model, S, B, n, 8))


def _independent_segments_loss(model, S, B, n, L):
    with torch.no_grad():
        return sum(-torch.log_softmax(model(S[None, s : min(s + L, (b + 1) * n)])[0][0], -1)
                   .gather(-1, S[s + 1 : min(s + L, (b + 1) * n) + 1, None]).sum().item()
                   for b in range(B) for s in range(b * n, (b + 1) * n, L))


@pytest.mark.parametrize("flags", [DELTA, SUM_NORMED], ids=["delta", "sum_attn_norm"])
def test_full_mode_equals_one_pass_over_the_split(data, flags):
    task, model, _ = setup(data, ["--fwp-eval-mode", "full", "--no-token-positional-embeddings"],
                           model_flags=flags, tokens_per_sample=8)
    task.load_dataset("test")
    S = stream_of(task, "test")
    N = len(S) - 1
    model.eval()
    ref = _logprobs(model, S[None, :N], S[None, 1:])[0]  # the whole split at once
    for batch in (dict(batch_size=1), dict(max_tokens=4096)):  # full mode is always batch 1
        ours = _eval(task, model, "test", batch)
        assert ours.shape == (N,)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert _fairseq_loss(task, model, "test", {}) == pytest.approx(-ref.mean().item() / math.log(2), rel=1e-4)
    # the state does not leak out of the evaluation: a fresh call starts from zero again
    assert all(m.carry is None for m in model.decoder.fast_weight_modules())
    # and carrying matters here: segments evaluated independently score differently
    indep = torch.cat([_logprobs(model, S[None, i : i + 8], S[None, i + 1 : i + 9])[0] for i in range(0, N - 8, 8)])
    assert not torch.allclose(indep, ref[: len(indep)], rtol=1e-3)


# ----------------------------------------------------------------------------- command lines


def _run(module, *args):
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", f"fairseq_cli.{module}", *map(str, args)], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:]
    return p.stdout


def test_train_with_carried_state_then_eval_lm_full(data, tmp_path):
    """The contract's command lines: fairseq-train --fwp-carry-state, fairseq-eval-lm
    --fwp-eval-mode full; its reported loss equals one pass over test."""
    save = tmp_path / "ck"
    _run("train", data, "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--fwp-carry-state",
         "--arch", "fwp_lm", *DELTA, *TINY, "--no-token-positional-embeddings", "--tokens-per-sample", "8",
         "--batch-size", "4", "--optimizer", "adam", "--lr", "3e-3", "--max-epoch", "2", "--save-dir", save,
         "--no-epoch-checkpoints", "--cpu", "--num-workers", "0", "--log-format", "simple", "--seed", "1")
    ck = save / "checkpoint_last.pt"
    # (sliding mode goes through the same eval_lm_dataloader, tested in-process above)
    log = _run("eval_lm", data, "--user-dir", USER_DIR, "--task", "fwp_language_modeling", "--path", ck,
               "--gen-subset", "test", "--tokens-per-sample", "8", "--fwp-eval-mode", "full",
               "--max-tokens", "256", "--cpu", "--num-workers", "0")
    n = int(re.search(r"Evaluated ([0-9,]+) tokens", log).group(1).replace(",", ""))
    loss = float(re.search(r"Loss \(base 2\): ([0-9.]+), Perplexity: ([0-9.]+)", log).group(1))
    from fairseq import checkpoint_utils

    task, _, _ = setup(data, ["--fwp-eval-mode", "full"], build=False)
    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([str(ck)], task=task)
    task.load_dataset("test")
    S = stream_of(task, "test")
    model.eval()
    ref = _logprobs(model, S[None, :-1], S[None, 1:])[0]
    assert n == len(S) - 1
    assert loss == pytest.approx(-ref.mean().item() / math.log(2), abs=1e-4)
    assert isinstance(model.decoder, FwpTransformerDecoder)
