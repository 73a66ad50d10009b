"""FAVOR+ random features are identical on every distributed rank (gloo, 2 CPU processes),
even though the ranks see different batches and their global RNG streams diverge."""

import socket
import sys
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, result_path: str):
    from fwp_helpers import random_tokens, tiny_lm
    from fairseq_fwp.modules.feature_maps import Favor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(1)  # fairseq seeds every rank identically before building the model
    model, d = tiny_lm(feature_map="favor", rule="delta", sum_norm=True, m=8, extra=["--dropout", "0.3"])
    favors = [m for m in model.modules() if isinstance(m, Favor)]
    torch.manual_seed(100 + rank)  # from here on each rank's global RNG differs
    model.train()
    for step in range(3):  # different batch shapes per rank: dropout draws differ too
        loss = model(random_tokens(d, 2 + rank, 5 + 2 * rank))[0].float().mean()
        loss.backward()
    model.eval()
    feats = torch.cat([f.features.flatten() for f in favors] + [f.draws.float().view(1) for f in favors])
    gathered = [torch.zeros_like(feats) for _ in range(2)]
    dist.all_gather(gathered, feats)
    torch.manual_seed(7)
    probe = random_tokens(d, 2, 6)
    out = model(probe)[0].detach()
    outs = [torch.zeros_like(out) for _ in range(2)]
    dist.all_gather(outs, out)
    if rank == 0:
        torch.save({"feats": gathered, "outs": outs}, result_path)
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_favor_features_identical_across_ranks(tmp_path):
    result = tmp_path / "gathered.pt"
    mp.spawn(_worker, args=(_free_port(), str(result)), nprocs=2, join=True)
    got = torch.load(result, weights_only=True)
    f0, f1 = got["feats"]
    assert f0.numel() > 8 and torch.equal(f0, f1), "ranks drew different random features"
    assert torch.equal(got["outs"][0], got["outs"][1]), "same weights and features must evaluate identically"
