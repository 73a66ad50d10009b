"""--bf16 without a TPU (fairseq_fwp.compat.bf16_compat): fairseq 0.12 turns --bf16 into --tpu, and
its Trainer then fails on a GPU or CPU with "'NoneType' object has no attribute
'xla_device'" (found on an H200). With the plugin, bf16 training runs on the device asked for."""

import argparse
import torch

from fairseq_fwp.data import toy_data
from fairseq_fwp.compat.bf16_compat import bf16_without_implied_tpu

from test_cli import USER_DIR, fairseq


def test_implied_tpu_is_dropped_but_an_explicit_one_kept():
    args = argparse.Namespace(bf16=True, tpu=True)
    bf16_without_implied_tpu(args, argv=["fairseq-train", "data", "--bf16"])
    assert args.tpu is False
    args = argparse.Namespace(bf16=True, tpu=True)
    bf16_without_implied_tpu(args, argv=["fairseq-train", "data", "--bf16", "--tpu"])
    assert args.tpu is True
    args = argparse.Namespace(bf16=False, tpu=True)
    bf16_without_implied_tpu(args, argv=["fairseq-train", "--tpu"])
    assert args.tpu is True


def test_fairseq_train_bf16_on_cpu(tmp_path):
    toy_data.write_lm_corpus(tmp_path / "raw", sizes=(300, 50, 50), seed=1)
    data = tmp_path / "bin"
    fairseq("preprocess", "--only-source", "--trainpref", tmp_path / "raw/train.txt",
            "--validpref", tmp_path / "raw/valid.txt", "--destdir", data, "--workers", "1")
    save = tmp_path / "ck"
    out = fairseq("train", data, "--user-dir", USER_DIR, "--task", "language_modeling", "--arch", "fwp_lm",
                  "--fwp-feature-map", "linear", "--fwp-update-rule", "delta", "--fwp-sum-norm",
                  "--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
                  "--decoder-attention-heads", "4", "--tokens-per-sample", "32", "--optimizer", "adam",
                  "--lr", "1e-3", "--max-tokens", "512", "--max-update", "3", "--save-dir", save,
                  "--no-epoch-checkpoints", "--cpu", "--bf16", "--num-workers", "0", "--seed", "1")
    assert "done training" in out
    ck = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert ck["cfg"]["common"]["bf16"] and not ck["cfg"]["common"]["tpu"]
    assert ck["cfg"]["distributed_training"]["tpu"] is False
    # (fairseq stores half and bfloat16 weights as float32 in checkpoints: utils.move_to_cpu)
    # and the same checkpoint evaluates with --bf16 (the same conversion in fairseq-eval-lm)
    out = fairseq("eval_lm", data, "--user-dir", USER_DIR, "--path", save / "checkpoint_last.pt",
                  "--gen-subset", "valid", "--tokens-per-sample", "32", "--max-tokens", "512", "--cpu", "--bf16")
    assert "Perplexity" in out
