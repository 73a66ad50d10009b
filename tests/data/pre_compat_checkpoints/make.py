"""Writes the checkpoints and expected outputs that tests/test_checkpoint_compat.py loads.

Run once, from a checkout of the code the checkpoints should come from (they were written
before the shims and data modules moved into ``fairseq_fwp.compat`` / ``fairseq_fwp.data``, at
commit f0abccb; ``python -m fairseq_fwp.toy_data`` works in both layouts):

    python tests/data/pre_compat_checkpoints/make.py OUT_DIR

Trains, on CPU and for a few updates, a tiny fwp_lm (Delta Net, DPFP) and a tiny
fwp_transformer (Performer FAVOR+, sum rule) on the toy corpora,
keeps each model's dictionaries and last checkpoint (no optimizer state), and records the
log-probabilities of fixed inputs and a beam-search hypothesis in ``expected.pt``.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import torch

import fairseq_fwp
from fairseq import checkpoint_utils

USER_DIR = os.path.dirname(os.path.abspath(fairseq_fwp.__file__))
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
COMMON = ["--cpu", "--seed", "1", "--num-workers", "0", "--max-update", "8", "--no-save-optimizer-state",
          "--no-epoch-checkpoints", "--optimizer", "adam", "--lr", "3e-3", "--log-format", "simple",
          "--dropout", "0.0"]
LM_SRC = "the dog sees the cat . the dogs see a cat ."
MT_SRC = ["s3 s1 s4 s1 s5", "s2 s6 s0"]


def sh(*args):
    subprocess.run([sys.executable, *map(str, args)], check=True, env=ENV, stdout=subprocess.DEVNULL)


def expected_outputs(model_dir):
    """What test_checkpoint_compat recomputes from the checkpoint in ``model_dir``."""
    out = {}
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [os.path.join(model_dir, "lm", "checkpoint_last.pt")], arg_overrides={"data": os.path.join(model_dir, "lm")})
    lm = models[0].eval()
    toks = task.source_dictionary.encode_line(LM_SRC, add_if_not_exist=False).long().unsqueeze(0)
    with torch.no_grad():
        out["lm_tokens"] = toks
        out["lm_lprobs"] = lm.get_normalized_probs(lm(toks), log_probs=True)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [os.path.join(model_dir, "mt", "checkpoint_last.pt")],
        arg_overrides={"data": os.path.join(model_dir, "mt"), "source_lang": "src", "target_lang": "tgt"})
    mt = models[0].eval()
    src = [task.source_dictionary.encode_line(s, add_if_not_exist=False).long() for s in MT_SRC]
    src_tokens = torch.nn.utils.rnn.pad_sequence(src, batch_first=True, padding_value=task.source_dictionary.pad())
    src_lengths = torch.tensor([len(s) for s in src])
    prev = torch.cat([torch.full((len(src), 1), task.target_dictionary.eos()), src_tokens[:, :-1]], 1)
    gen = task.build_generator([mt], cfg.generation)
    sample = {"net_input": {"src_tokens": src_tokens, "src_lengths": src_lengths}}
    with torch.no_grad():
        out["mt_src_tokens"], out["mt_src_lengths"], out["mt_prev_output_tokens"] = src_tokens, src_lengths, prev
        out["mt_lprobs"] = mt.get_normalized_probs(
            mt(src_tokens, src_lengths, prev), log_probs=True)
        hyps = task.inference_step(gen, [mt], sample)
        out["mt_hypos"] = [[(h["tokens"], h["score"]) for h in beam] for beam in hyps]
    return out


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sh("-m", "fairseq_fwp.toy_data", "lm", f"{tmp}/lm_raw", "--seed", "1")
        sh("-m", "fairseq_cli.preprocess", "--only-source", "--trainpref", f"{tmp}/lm_raw/train.txt",
           "--validpref", f"{tmp}/lm_raw/valid.txt", "--destdir", f"{tmp}/lm_bin", "--workers", "1")
        sh("-m", "fairseq_cli.train", f"{tmp}/lm_bin", "--user-dir", USER_DIR, "--task", "language_modeling",
           "--arch", "fwp_lm", "--fwp-feature-map", "dpfp", "--fwp-dpfp-nu", "1", "--fwp-update-rule", "delta",
           "--fwp-sum-norm", "--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
           "--decoder-attention-heads", "4", "--tokens-per-sample", "32", "--share-decoder-input-output-embed",
           "--max-tokens", "512", "--save-dir", f"{tmp}/lm_ck", *COMMON)
        sh("-m", "fairseq_fwp.toy_data", "translation", f"{tmp}/mt_raw", "--seed", "1")
        sh("-m", "fairseq_cli.preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
           "--trainpref", f"{tmp}/mt_raw/train", "--validpref", f"{tmp}/mt_raw/valid",
           "--destdir", f"{tmp}/mt_bin", "--workers", "1")
        sh("-m", "fairseq_cli.train", f"{tmp}/mt_bin", "--user-dir", USER_DIR, "--task", "translation",
           "--arch", "fwp_transformer", "--fwp-feature-map", "favor", "--fwp-favor-features", "8",
           "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
           "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
           "--decoder-attention-heads", "2", "--share-all-embeddings", "--criterion", "label_smoothed_cross_entropy",
           "--label-smoothing", "0.1", "--max-tokens", "512", "--save-dir", f"{tmp}/mt_ck", *COMMON)
        for name, files in (("lm", ["dict.txt"]), ("mt", ["dict.src.txt", "dict.tgt.txt"])):
            os.makedirs(os.path.join(out_dir, name), exist_ok=True)
            for f in files:
                shutil.copy(f"{tmp}/{name}_bin/{f}", os.path.join(out_dir, name, f))
            shutil.copy(f"{tmp}/{name}_ck/checkpoint_last.pt", os.path.join(out_dir, name, "checkpoint_last.pt"))
    torch.save(expected_outputs(out_dir), os.path.join(out_dir, "expected.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
