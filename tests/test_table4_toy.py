"""Paper Table 4 at toy scale: language modelling with the fast weights carried across segments.

Corpus (``toy_data.episode_lines``): episodes of 48-96 tokens, one per line, each using its
own random 8 of 32 words. Knowing the episode's words so far is what predicts the next one,
so context beyond a segment (L = 16) helps, and the memory must forget the previous
episode at the line break: the Bayes-optimal perplexity is about 13 with the last 16
tokens as context and 10 with the whole episode (uniform: 33).

Both models are trained with ``--fwp-carry-state`` (8 streams of 12.5K tokens, 3 epochs)
and without positional encoding or attention normalisation (sum normalisation on), then
evaluated with ``--fwp-eval-mode full`` over the test stream (as long as one training
stream) and ``--fwp-eval-mode sliding`` over its first 4K tokens. Measured here
(1 layer, d_model 64, 4 heads; numbers are perplexities):

===================  =======  ===========  ============  ==============
model                sliding  full [0,3K)  full [0,12K)  full [12K,25K)
===================  =======  ===========  ============  ==============
delta, carried        23.4     20.4         22.7          32.9
sum, carried          35.6     32.5         32.3          32.6
delta, wrong stream   24.7     24.4         25.0          26.0
delta, reset/segment  16.8     29.3         31.9          32.8
===================  =======  ===========  ============  ==============

(``[12K,25K)`` is beyond the training stream length, from a 40K-token test stream.)
The sum rule breaks under carried state (it stays at the uniform perplexity, and its
sliding-window perplexity is worse still), as in the paper. The Delta Net's full-context
perplexity is below its sliding-window one over the training stream length, i.e. it uses
context beyond the segment; at this scale it does *not* stay flat beyond the length of the
training streams (32.9 at 12-25K, 45 at 25-40K) -- see the README (carried state). The thresholds
below fail for a broken carry: state carried into the wrong stream (rows rolled; checked in
this test), or reset every segment (29.3 vs 16.8, measured during development).
"""

from __future__ import annotations

import math

import pytest
import torch

from fairseq.data import Dictionary, indexed_dataset
from fairseq.sequence_scorer import SequenceScorer

from fairseq_fwp import toy_data
from fairseq_fwp.lm_streams import LMStreamDataset
from test_lm_state import setup

L, B, EPOCHS = 16, 8, 3
TRAIN_TOKENS, TEST_TOKENS, SLIDING_TOKENS = 100_000, 12_500, 4_000
ARCH = ["--decoder-layers", "1", "--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "128",
        "--decoder-attention-heads", "4", "--dropout", "0", "--share-decoder-input-output-embed"]
CORPUS = dict(vocab_size=32, set_size=8, min_len=48, max_len=96)


def binarize(raw, dst):
    dst.mkdir(parents=True, exist_ok=True)
    d = Dictionary()
    for split in ("train", "valid", "test"):
        for line in open(raw / f"{split}.txt"):
            for w in line.split():
                d.add_symbol(w)
    d.finalize(padding_factor=1)
    d.save(str(dst / "dict.txt"))
    for split in ("train", "valid", "test"):
        b = indexed_dataset.make_builder(str(dst / f"{split}.bin"), "mmap", vocab_size=len(d))
        for line in open(raw / f"{split}.txt"):
            b.add_item(d.encode_line(line, add_if_not_exist=False, append_eos=True).long())
        b.finalize(str(dst / f"{split}.idx"))
    return dst


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("table4")
    toy_data.write_episode_corpus(str(root / "raw"), sizes=(TRAIN_TOKENS, 1000, TEST_TOKENS), seed=1, **CORPUS)
    return binarize(root / "raw", root / "bin")


class ScaledBackward:
    """train_step's optimizer.backward: the loss per token, as fairseq's trainer scales it."""

    n = 1

    def backward(self, loss):
        (loss / self.n).backward()


def train(data, rule, wrong_stream=False):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the measured numbers above: one thread, same reduction order everywhere
    try:
        return _train(data, rule, wrong_stream)
    finally:
        torch.set_num_threads(threads)


def _train(data, rule, wrong_stream):
    flags = ["--fwp-feature-map", "linear", "--fwp-update-rule", rule, "--fwp-sum-norm"]
    task, model, criterion = setup(data, ["--fwp-carry-state", "--batch-size", str(B),
                                          "--no-token-positional-embeddings"],
                                   model_flags=flags, arch_flags=ARCH, tokens_per_sample=L)
    task.load_dataset("train")
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    back, k = ScaledBackward(), 0
    for epoch in range(1, EPOCHS + 1):
        task.begin_epoch(epoch, model)
        itr = task.get_batch_iterator(task.dataset("train"), max_sentences=B, epoch=epoch)
        for sample in itr.next_epoch_itr(shuffle=True):
            if wrong_stream:  # a broken carry: every stream continues from its neighbour's state
                for buf in task._carried["train"].values():
                    for name in buf:
                        buf[name] = buf[name].roll(1, 0)
            back.n = sample["ntokens"]
            opt.zero_grad()
            task.train_step(sample, model, criterion, back, k)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            k += 1
    model.eval()
    return task, model


def scores(task, model, mode, dataset):
    task.args.fwp_eval_mode = mode
    scorer = SequenceScorer(task.target_dictionary)
    out = [h[0]["positional_scores"]
           for s in task.eval_lm_dataloader(dataset, max_tokens=4096, num_workers=0)
           for h in scorer.generate([model], s)]
    return torch.cat(out)


def evaluate(task, model):
    task.args.fwp_eval_mode = "full"
    task.load_dataset("test")
    test = task.dataset("test")
    full = scores(task, model, "full", test)
    head = LMStreamDataset.segments(test.stream[: SLIDING_TOKENS + 1], L, test.pad)
    sliding = scores(task, model, "sliding", head)
    ppl = lambda s: math.exp(-s.mean().item())  # noqa: E731
    return {"sliding": ppl(sliding), "full_3k": ppl(full[:3125]), "full_all": ppl(full), "n": len(full)}


@pytest.fixture(scope="module")
def trained(corpus):
    return {rule: evaluate(*train(corpus, rule)) for rule in ("delta", "sum")}


def test_delta_net_uses_context_beyond_the_segment(trained):
    d = trained["delta"]
    assert d["n"] >= TEST_TOKENS
    # full context beats the sliding window of L tokens (measured 20.4 vs 23.4) ...
    assert d["full_3k"] < 0.93 * d["sliding"], d
    # ... and stays close to it (here: below it) over a stream as long as a training stream (22.7)
    assert d["full_all"] < 1.03 * d["sliding"], d


def test_sum_rule_breaks_with_carried_state(trained):
    s, d = trained["sum"], trained["delta"]
    uniform = 33.0  # 32 words + </s>
    assert s["full_all"] > 0.9 * uniform, s  # measured 32.3: nothing learnt from the carried memory
    assert s["full_all"] > 1.3 * d["full_all"], (s, d)  # measured 32.3 vs 22.7


def test_a_carry_into_the_wrong_stream_fails_the_threshold(corpus):
    d = evaluate(*train(corpus, "delta", wrong_stream=True))
    assert not d["full_3k"] < 0.93 * d["sliding"], d  # measured 24.4 vs 24.7
