"""Synthetic associative retrieval (paper Sec. 6.1): data encoding, criterion, model
maths, the stop_at_loss rule, one fairseq-train run end to end, and the paper's two
trends on trained models at a tiny scale (about 2 minutes on 2 cores)."""

import csv
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairseq_fwp.config import FwpAttentionConfig
from fairseq_fwp.criterions.retrieval_mse import RetrievalMSECriterion, retrieval_loss
from fairseq_fwp.models.fwp_retrieval import FwpRetrievalModel, key_embed_dim
from fairseq_fwp.tasks import associative_retrieval as ar
from fwp_kernels import fast_weight_scan, recurrent_fast_weight
from fwp_kernels.state import EPS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_task(S=10, d_key=8, replace=False, seq_len=None, eval_seq_len=None, seed=1, updates=4,
              batch=8, eval_sequences=20):
    cfg = ar.AssociativeRetrievalConfig(
        num_keys=S, seq_len=seq_len, with_replacement=replace, d_key=d_key, eval_sequences=eval_sequences,
        eval_seq_len=eval_seq_len, updates_per_epoch=updates, seed=seed, batch_size=batch,
        validate_interval_updates=0, update_freq=[1], distributed_world_size=1,
    )
    return ar.AssociativeRetrievalTask(cfg)


def whole(ds):
    return ds.collater([ds[i] for i in range(len(ds))])


def fwp(**kw):
    return FwpAttentionConfig(**kw)


# ----------------------------------------------------------------------- data encoding
def test_last_occurrence_and_target():
    keys = np.array([[3, 1, 3, 2, 1], [0, 0, 0, 4, 2]])
    values = np.array([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])
    np.testing.assert_array_equal(ar.last_occurrence(keys, np.array([3, 0])), [2, 2])
    np.testing.assert_array_equal(ar.last_occurrence(keys, np.array([1, 2])), [4, 4])
    seq, q, t = ar.all_queries(keys, values)
    # every distinct key of every sequence once, target = value at its last occurrence
    assert list(zip(seq, q, t)) == [(0, 1, 14), (0, 2, 13), (0, 3, 12), (1, 0, 22), (1, 2, 24), (1, 4, 23)]
    with pytest.raises(ValueError, match="occur"):
        ar.last_occurrence(keys, np.array([5, 0]))


def test_without_replacement_is_a_permutation():
    rng = np.random.default_rng(0)
    keys, values = ar.sample_sequences(rng, 50, 12, 12, replace=False)
    assert keys.shape == values.shape == (50, 12)
    for row in np.concatenate([keys, values]):
        assert sorted(row) == list(range(12))
    with pytest.raises(ValueError):
        ar.sample_sequences(rng, 1, 5, 6, replace=False)


def test_training_queries_target_the_last_occurrence():
    rng = np.random.default_rng(1)
    keys, values = ar.sample_sequences(rng, 400, 6, 12, replace=True)
    query, target = ar.sample_queries(rng, keys, values)
    repeated = 0
    for k, v, q, t in zip(keys, values, query, target):
        pos = [i for i in range(len(k)) if k[i] == q]
        assert pos, "the query must occur in the sequence"
        assert t == v[pos[-1]]
        repeated += len(pos) > 1 and v[pos[0]] != v[pos[-1]]
    assert repeated > 100  # with replacement many queried keys were re-assigned


def test_task_defaults_and_shapes():
    task = make_task(S=10)
    assert (task.seq_len, task.eval_seq_len) == (10, 10)
    assert make_task(S=10, replace=True).seq_len == 20
    assert make_task(S=10, replace=True, eval_seq_len=10).eval_seq_len == 10
    train = task.load_dataset("train")
    assert len(train) == 4 * 8  # updates_per_epoch x batch
    b = train.collater([train[i] for i in range(8)])
    assert b["net_input"]["keys"].shape == b["net_input"]["values"].shape == (8, 10)
    assert b["net_input"]["query"].shape == b["target"].shape == (8,)
    assert b["nsentences"] == 8 and b["ntokens"] == 80
    for k, v, q, t in zip(b["net_input"]["keys"], b["net_input"]["values"], b["net_input"]["query"], b["target"]):
        assert t == v[(k == q).nonzero()[-1, 0]]
    valid = task.load_dataset("valid")
    assert len(valid) == 20 * 10  # 20 sequences x every key (no replacement: all S keys)


def test_eval_set_is_fixed_and_train_set_is_fresh():
    a, b = make_task(S=10, replace=True), make_task(S=10, replace=True)
    va, vb = whole(a.load_dataset("valid")), whole(b.load_dataset("valid"))
    for k in ("keys", "values", "query"):
        assert torch.equal(va["net_input"][k], vb["net_input"][k])
    assert torch.equal(va["target"], vb["target"])
    # every valid item is one (sequence, distinct key) pair
    pairs = {(tuple(k.tolist()), int(q)) for k, q in zip(va["net_input"]["keys"], va["net_input"]["query"])}
    assert len(pairs) == len(va["target"])
    test = whole(a.load_dataset("test"))
    assert not torch.equal(test["net_input"]["keys"][:5], va["net_input"]["keys"][:5])
    # training data: deterministic per epoch, different across epochs, not the eval sequences
    tr = a.load_dataset("train")
    e1 = whole(tr)["net_input"]["keys"]
    tr.set_epoch(2)
    e2 = whole(tr)["net_input"]["keys"]
    tr.set_epoch(1)
    assert torch.equal(whole(tr)["net_input"]["keys"], e1)
    assert not torch.equal(e1, e2)
    assert not torch.equal(e1[:5], va["net_input"]["keys"][:5])
    # another seed, another evaluation set
    other = whole(make_task(S=10, replace=True, seed=2).load_dataset("valid"))
    assert not torch.equal(other["net_input"]["keys"][:5], va["net_input"]["keys"][:5])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_fairseq_iterators_see_a_new_training_set_every_epoch(num_workers):
    """fairseq's data-loader workers hold their own copy of the dataset: the training
    sequences must still change with the epoch (and repeat for a repeated epoch)."""
    task = make_task(S=10, updates=2, batch=8)
    train = task.load_dataset("train")

    def epoch_keys(epoch):
        itr = task.get_batch_iterator(train, max_sentences=8, num_workers=num_workers, epoch=epoch)
        return torch.cat([b["net_input"]["keys"] for b in itr.next_epoch_itr(shuffle=False)])

    e1, e2 = epoch_keys(1), epoch_keys(2)
    assert e1.shape == (16, 10)
    assert not torch.equal(e1, e2)
    assert torch.equal(epoch_keys(1), e1)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(S=10, seq_len=11), "--seq-len"),
        (dict(S=10, eval_seq_len=12), "--eval-seq-len"),
        (dict(S=1), "--num-keys"),
        (dict(S=10, d_key=0), "--d-key"),
        (dict(S=10, eval_sequences=0), "--eval-sequences"),
    ],
)
def test_bad_task_flags_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        make_task(**kwargs)


def test_batch_size_is_required_and_unknown_split_rejected():
    task = make_task(S=10, batch=None)
    with pytest.raises(ValueError, match="--batch-size"):
        task.load_dataset("train")
    with pytest.raises(KeyError, match="valid-subset"):
        task.load_dataset("dev")


# ----------------------------------------------------------------------------- criterion
class _Fixed(torch.nn.Module):
    def __init__(self, y):
        super().__init__()
        self.y = y

    def forward(self, keys, values, query):
        return self.y


def test_criterion_loss_and_accuracy():
    target = torch.tensor([0, 2, 1])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.0, 0.0]])
    sample = {"net_input": {"keys": None, "values": None, "query": None}, "target": target, "ntokens": 9}
    crit = RetrievalMSECriterion(task=None)
    loss, n, log = crit(_Fixed(y), sample)
    expected = [0.0, 0.5 * (0.25 + 0.25), 0.5 * (0.04 + 1.0)]  # 1/2 ||onehot - y||^2 per query
    assert n == 3
    assert loss.item() == pytest.approx(sum(expected))
    assert torch.allclose(retrieval_loss(y, target), torch.tensor(expected))
    assert int(log["correct"]) == 1  # argmax hits only the first; [0, .5, .5] argmax is 1 != 2
    from fairseq import metrics

    with metrics.aggregate() as agg:
        RetrievalMSECriterion.reduce_metrics([log, log])
    stats = agg.get_smoothed_values()
    assert stats["loss"] == pytest.approx(sum(expected) / 3, abs=1e-6)  # mean over queries
    assert stats["accuracy"] == pytest.approx(100 / 3, abs=1e-3)


# ------------------------------------------------------------------------------- model
def _batch(S=8, L=12, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(0, S, (B, L), generator=g)
    values = torch.randint(0, S, (B, L), generator=g)
    return keys, values, keys[:, -1]


def test_model_shapes_and_embedding_size():
    for cfg in [fwp(fwp_feature_map="softmax"), fwp(fwp_feature_map="linear", fwp_attn_norm=True),
                fwp(fwp_feature_map="favor", fwp_favor_features=8),
                fwp(fwp_feature_map="dpfp", fwp_dpfp_nu=2, fwp_update_rule="delta", fwp_sum_norm=True)]:
        m = FwpRetrievalModel(cfg, 8, 6)
        y = m(*_batch())
        assert y.shape == (3, 8) and torch.isfinite(y).all()
        assert m.key_embed.weight.shape == (8, key_embed_dim(8)) == (8, 17)  # int(2 * 8 * 1.1)
        assert m.W_k.in_features == 17 + 8 and m.W_q.in_features == 17
        assert not any(p is m.value_vectors for p in m.parameters())  # values stay fixed one-hot


def test_sum_memory_is_the_sum_of_outer_products():
    torch.manual_seed(0)
    m = FwpRetrievalModel(fwp(fwp_feature_map="dpfp", fwp_dpfp_nu=1, fwp_attn_norm=True), 8, 4).eval()
    keys, values, query = _batch()
    state = m.memory(keys, values)
    x = torch.cat([m.key_embed(keys), F.one_hot(values, 8).float()], -1)
    phik = m.memory_layer.feature_map(m.W_k(x))  # [B, L, d_dot]
    W = torch.einsum("blk,blv->bkv", phik, F.one_hot(values, 8).float())  # Eq. 15: sum_i phi(k_i) v_i^T
    _, scanned = fast_weight_scan(phik.transpose(0, 1).unsqueeze(2), phik.transpose(0, 1).unsqueeze(2),
                                  F.one_hot(values, 8).float().transpose(0, 1).unsqueeze(2), rule="sum",
                                  output_final_state=True)
    assert torch.allclose(scanned.S[:, 0], W, atol=1e-5)  # the closed form is the scan's final state
    assert torch.allclose(state.S[:, 0], W, atol=1e-5)
    phiq = m.memory_layer.feature_map(m.W_q(m.key_embed(query)))
    want = torch.einsum("bk,bkv->bv", phiq, W) / (torch.einsum("bk,bk->b", phiq, phik.sum(1))[:, None] + EPS)
    assert torch.allclose(m(keys, values, query), want, atol=1e-5)


def test_delta_memory_matches_the_recurrent_reference():
    torch.manual_seed(0)
    m = FwpRetrievalModel(fwp(fwp_feature_map="linear", fwp_update_rule="delta", fwp_sum_norm=True), 8, 4).eval()
    keys, values, query = _batch(L=20)
    x = torch.cat([m.key_embed(keys), F.one_hot(values, 8).float()], -1)
    k = m.memory_layer.feature_map.sum_normalized(m.W_k(x)).double().transpose(0, 1).unsqueeze(2)
    v = F.one_hot(values, 8).double().transpose(0, 1).unsqueeze(2)
    beta = torch.sigmoid(m.W_b(x)).double().squeeze(-1).transpose(0, 1).unsqueeze(2)
    _, ref = recurrent_fast_weight(k, k, v, beta, rule="delta", output_final_state=True)
    assert torch.allclose(m.memory(keys, values).S.double(), ref.S, atol=1e-5)


def test_delta_rule_overwrites_a_reassigned_key():
    """With beta = 1 and one-hot keys the delta memory keeps only the last value of a key,
    the sum memory averages all of them: the mechanism setting 2 tests."""
    m = FwpRetrievalModel(fwp(fwp_feature_map="linear", fwp_update_rule="delta"), 4, 4)
    k = torch.eye(4)[[0, 1, 0]].view(3, 1, 1, 4)
    v = torch.eye(4)[[2, 3, 1]].view(3, 1, 1, 4)
    _, delta = fast_weight_scan(k, k, v, torch.ones(3, 1, 1), rule="delta", output_final_state=True)
    _, summ = fast_weight_scan(k, k, v, None, rule="sum", output_final_state=True)
    assert torch.allclose(delta.S[0, 0, 0], torch.eye(4)[1])
    assert torch.allclose(summ.S[0, 0, 0], torch.eye(4)[1] + torch.eye(4)[2])
    assert m.W_b is not None and m.W_b.out_features == 1  # one beta per position, from the key input


def test_fwm_bounds_the_memory_and_rejects_other_rules():
    torch.manual_seed(0)
    m = FwpRetrievalModel(fwp(fwp_feature_map="dpfp", fwp_update_rule="delta"), 8, 8, fwm=True)
    state = m.memory(*_batch(L=30)[:2])
    assert (state.S.flatten(1).norm(dim=-1) <= 1 + 1e-5).all()
    y = m(*_batch(L=30))
    assert torch.allclose(y.mean(-1), torch.zeros(3), atol=1e-5)  # layer-normalised read
    with pytest.raises(ValueError, match="--fwm"):
        FwpRetrievalModel(fwp(fwp_feature_map="dpfp"), 8, 8, fwm=True)
    with pytest.raises(ValueError, match="--fwp-update-rule"):
        FwpRetrievalModel(fwp(fwp_feature_map="softmax", fwp_update_rule="delta"), 8, 8)
    with pytest.raises(ValueError, match="--fwp-attn-norm"):
        FwpRetrievalModel(fwp(fwp_feature_map="softmax", fwp_attn_norm=True), 8, 8)


# ---------------------------------------------------------------------- stop_at_loss
class _Opt:
    def __init__(self):
        self.lr = None

    def set_lr(self, lr):
        self.lr = lr

    def get_lr(self):
        return self.lr


def _scheduler(**kw):
    from fairseq.optim import FairseqOptimizer

    cfg = ar.StopAtLossConfig(**{"stop_at_loss": 0.001, "lr": [1e-3], "stop_min_lr": 0.0,
                                 "maximize_best_checkpoint_metric": False, **kw})
    opt = _Opt()
    opt.__class__ = type("_O", (_Opt, FairseqOptimizer), {})  # pass fairseq's isinstance check
    return ar.StopAtLossSchedule(cfg, opt)


def test_stop_at_loss_schedule():
    s = _scheduler()
    assert s.step_update(5) == 1e-3
    assert s.step(1, 0.5) == 1e-3 and s.step(2, None) == 1e-3
    assert s.step(3, 0.0009) == 0.0  # at or below the threshold: lr 0, fairseq stops (--stop-min-lr 0)
    assert s.step_update(301) == 0.0 and s.step(4, 0.5) == 0.0
    s2 = _scheduler()
    s2.load_state_dict(s.state_dict())
    assert s2.step_update(0) == 0.0
    with pytest.raises(ValueError, match="--stop-min-lr"):
        _scheduler(stop_min_lr=-1.0)
    with pytest.raises(ValueError, match="single --lr"):
        _scheduler(lr=[1e-3, 1e-4])


# ------------------------------------------------------------- fairseq-train end to end
def _fairseq_train(tmp_path, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [REPO, env.get("PYTHONPATH", "")] if p)
    cmd = [
        sys.executable, "-m", "fairseq_cli.train", "--user-dir", os.path.join(REPO, "fairseq_fwp"),
        "--task", "associative_retrieval", "--num-keys", "8", "--d-key", "8",
        "--results-csv", str(tmp_path / "history.csv"), "--arch", "fwp_retrieval",
        "--criterion", "retrieval_mse", "--optimizer", "adam", "--lr", "1e-3",
        "--lr-scheduler", "stop_at_loss", "--stop-min-lr", "0", "--batch-size", "32",
        "--validate-interval-updates", "100", "--patience", "10", "--no-save", "--cpu",
        "--log-format", "simple", *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_fairseq_train_stops_at_the_loss_threshold(tmp_path):
    """DPFP-2 (d_dot 32) stores S = 8 pairs easily: training stops at the first evaluation
    with loss <= --stop-at-loss, long before --max-update, and the CSV records each evaluation."""
    r = _fairseq_train(tmp_path, "--fwp-feature-map", "dpfp", "--fwp-dpfp-nu", "2", "--fwp-attn-norm",
                       "--stop-at-loss", "0.01", "--max-update", "5000")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    losses = [float(x["loss"]) for x in rows]
    assert [int(x["num_updates"]) for x in rows] == [100 * (i + 1) for i in range(len(rows))]
    assert losses[-1] <= 0.01 and all(x > 0.01 for x in losses[:-1])
    assert int(rows[-1]["num_updates"]) < 5000
    assert "stopping training because current learning rate (0.0)" in r.stdout + r.stderr


def test_fairseq_train_rejects_bad_flags(tmp_path):
    r = _fairseq_train(tmp_path, "--seq-len", "9", "--max-update", "1")
    assert r.returncode != 0 and "--seq-len 9 exceeds --num-keys 8" in r.stderr
    r = _fairseq_train(tmp_path, "--fwm", "--max-update", "1")
    assert r.returncode != 0 and "--fwm" in r.stderr


# --------------------------------------------------------------------- trends (trained)
def _train_and_eval(task, updates, seed=0, **kw):
    """Adam lr 1e-3, batch 32 on the task's training stream; mean loss on its valid set."""
    torch.manual_seed(seed)
    model = FwpRetrievalModel(fwp(**kw), task.num_keys, int(task.cfg.d_key))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    train = task.load_dataset("train")
    epoch, pos = 1, 0
    for _ in range(updates):
        if pos + 32 > len(train):
            epoch, pos = epoch + 1, 0
            train.set_epoch(epoch)
        b = train.collater([train[i] for i in range(pos, pos + 32)])
        pos += 32
        model.train()
        loss = retrieval_loss(model(**b["net_input"]), b["target"]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        b = whole(task.load_dataset("valid"))
        return retrieval_loss(model(**b["net_input"]), b["target"]).mean().item()


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_linear_attention_fails_beyond_d_key_while_dpfp_holds(one_thread):
    """Setting 1 at d_key = 8, S = 24 (no replacement): linear attention (d_dot = 8) is 3x
    over capacity, DPFP-2 (d_dot = 32) is not; equal training budget (600 updates).
    Measured: linear 0.337 (it retrieves about d_dot of the 24 pairs), DPFP-2 0.051."""
    task = make_task(S=24, d_key=8, updates=100, batch=32)
    linear = _train_and_eval(task, 600, fwp_feature_map="linear", fwp_attn_norm=True)
    dpfp2 = _train_and_eval(task, 600, fwp_feature_map="dpfp", fwp_dpfp_nu=2, fwp_attn_norm=True)
    small = _train_and_eval(make_task(S=6, d_key=8, updates=100, batch=32), 600,
                            fwp_feature_map="linear", fwp_attn_norm=True)
    print(f"setting 1, d_key=8: S=24 linear {linear:.4f} dpfp2 {dpfp2:.4f}; S=6 linear {small:.4f}")
    assert linear > 0.25  # a constant output scores 0.5; over capacity it stays far from 0
    assert dpfp2 < linear / 3
    assert small < 0.05  # below its capacity the same linear model does learn (measured 0.015)


def test_delta_rule_beats_sum_rule_with_replacement(one_thread):
    """Setting 2 at d_key = 16, S = 8, L = 16 (with replacement), DPFP-1 (d_dot = 32, not
    over capacity): the delta rule (sum-normalised) overwrites re-assigned keys, the sum
    rule keeps their old values. Measured: sum 0.158, delta 0.012 after 1000 updates."""
    task = make_task(S=8, d_key=16, replace=True, updates=100, batch=32)
    summ = _train_and_eval(task, 1000, fwp_feature_map="dpfp", fwp_attn_norm=True)
    delta = _train_and_eval(task, 1000, fwp_feature_map="dpfp", fwp_update_rule="delta", fwp_sum_norm=True)
    print(f"setting 2, S=8, L=16, d_key=16: sum {summ:.4f}  delta {delta:.4f}")
    assert summ > 0.1
    assert delta < summ / 4


# -------------------------------------------------------------- recipe and figure
def _sweep_module():
    sys.path.insert(0, os.path.join(REPO, "recipes"))
    from fwp_recipes import synthetic

    return synthetic


def test_sweep_summary_status_and_resume(tmp_path):
    sweep = _sweep_module()
    job = sweep.Job("capacity", "linear", [], 8, 16, False, 1000, str(tmp_path / "capacity" / "linear" / "S8"))
    os.makedirs(job.run_dir)

    def history(losses):
        with open(os.path.join(job.run_dir, "history.csv"), "w") as f:
            f.write("num_updates,loss,accuracy\n")
            for i, x in enumerate(losses):
                f.write(f"{100 * (i + 1)},{x},50\n")

    history([0.3, 0.01, 0.0009])
    assert sweep.summarize(job, 0, "", 1.0, "cpu")["status"] == "converged"
    history([0.3] * 10)
    row = sweep.summarize(job, 0, "", 1.0, "cpu")
    assert (row["status"], row["num_updates"], row["final_loss"]) == ("max_update", 1000, 0.3)
    history([0.3, 0.2])
    assert sweep.summarize(job, 0, "", 1.0, "cpu")["status"] == "patience"
    assert sweep.summarize(job, 1, "FloatingPointError: gradients are Nan/Inf", 1.0, "cpu")["status"] == "diverged"
    assert sweep.summarize(job, 1, "Traceback: ImportError", 1.0, "cpu") is None  # a failure is retried
    # a finished run (final.csv, marked done) is skipped without starting fairseq
    final = os.path.join(job.run_dir, "final.csv")
    sweep.write_rows(final, [sweep.summarize(job, 0, "", 1.0, "cpu")])
    sweep.common.Steps(job.run_dir).mark("final", sweep.common.key_of(sweep.fairseq_command(job, "cpu", 1)), [final])
    assert sweep.run_job(job, "cpu", 1, 1, force=False).startswith("skip")
    rows = sweep.collect(str(tmp_path), "capacity")
    assert [(r["model"], r["num_keys"], r["status"]) for r in rows] == [("linear", "8", "patience")]


def test_sweep_lists_the_paper_grid(capsys):
    sweep = _sweep_module()
    assert sweep.main(["capacity", "--list", "--device", "cpu"]) == 0
    cmds = capsys.readouterr().out.strip().splitlines()
    assert len(cmds) == 30 * 8  # S = 20..600 step 20 x 8 models
    assert all("--cpu" in c and "--d-key 64" in c and "--patience 10" in c for c in cmds)
    assert sweep.main(["update_rules", "--list", "--device", "cuda"] if torch.cuda.is_available()
                      else ["update_rules", "--list", "--device", "cpu", "--models", "dpfp1-delta"]) == 0
    cmds = capsys.readouterr().out.strip().splitlines()
    assert all("--with-replacement" in c for c in cmds)
    with pytest.raises(sweep.common.RecipeError, match="unknown model"):
        sweep.main(["capacity", "--models", "nosuch", "--list"])


def test_plot_retrieval_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    csv_path = tmp_path / "results.csv"
    with open(csv_path, "w") as f:
        f.write("model,num_keys,final_loss,status\nlinear,8,0.001,converged\nlinear,16,0.3,max_update\n"
                "dpfp1-delta-nosn,8,nan,diverged\n")
    out = tmp_path / "fig.png"
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "plot_retrieval.py"), str(csv_path),
                        "-o", str(out), "--table"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| linear | 0.001 | 0.3 |" in r.stdout and "diverged" in r.stdout
