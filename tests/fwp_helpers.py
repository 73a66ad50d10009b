"""Shared helpers for the tests: tiny fairseq models built through fairseq's own parser."""

import itertools
from types import SimpleNamespace

import torch
from fairseq import options
from fairseq.data import Dictionary

import fairseq_fwp  # noqa: F401  (registers the models)

FEATURE_MAPS = ["linear", "favor", "dpfp"]
RULES = ["sum", "delta"]
NORMS = list(itertools.product([False, True], [False, True]))  # (sum_norm, attn_norm)


def make_dict(n_symbols: int = 20) -> Dictionary:
    d = Dictionary()
    for i in range(n_symbols):
        d.add_symbol(f"w{i}")
    return d


def fwp_flags(feature_map="linear", rule="sum", sum_norm=False, attn_norm=False, nu=2, m=8, replace=None):
    flags = ["--fwp-feature-map", feature_map, "--fwp-dpfp-nu", str(nu), "--fwp-favor-features", str(m)]
    if feature_map != "softmax":
        flags += ["--fwp-update-rule", rule]
    if sum_norm:
        flags.append("--fwp-sum-norm")
    if attn_norm:
        flags.append("--fwp-attn-norm")
    if replace:
        flags += ["--fwp-replace", replace]
    return flags


def parse(argv):
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, argv)


def tiny_translation_model(dictionary=None, extra=(), **fwp):
    dictionary = dictionary or make_dict()
    args = parse(
        ["/nonexistent", "--task", "translation", "--arch", "fwp_transformer",
         "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "16",
         "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
         "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--dropout", "0"]
        + fwp_flags(**fwp) + list(extra)
    )
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    from fairseq_fwp.models.fwp_transformer import FwpTransformerModel

    return FwpTransformerModel.build_model(args, task), dictionary


def tiny_lm(dictionary=None, extra=(), **fwp):
    dictionary = dictionary or make_dict()
    args = parse(
        ["/nonexistent", "--task", "language_modeling", "--arch", "fwp_lm",
         "--decoder-layers", "2", "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32",
         "--decoder-attention-heads", "2", "--dropout", "0", "--tokens-per-sample", "64"]
        + fwp_flags(**fwp) + list(extra)
    )
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    cfg = convert_namespace_to_omegaconf(args)
    return ARCH_MODEL_REGISTRY["fwp_lm"].build_model(cfg.model, task), dictionary


def random_tokens(dictionary, B, T, generator=None):
    return torch.randint(dictionary.nspecial, len(dictionary), (B, T), generator=generator)
