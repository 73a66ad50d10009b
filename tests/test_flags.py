"""The --fwp-* flags that depend on the model: --fwp-replace (which attentions the model has),
--fwp-dpfp-nu (the head size d_key), the warning for the delta rule without --fwp-sum-norm,
and how configuration errors reach the user (fairseq_fwp.compat.cli_errors). In-process, cheap."""

import logging
import traceback

import pytest
import torch
from fairseq.modules import MultiheadAttention
from torch.multiprocessing.spawn import ProcessRaisedException

from fairseq_fwp import config
from fairseq_fwp.compat import cli_errors
from fairseq_fwp.config import check_dpfp_nu, dpfp_distinct_columns, max_dpfp_nu
from fairseq_fwp.modules.fast_weight_attention import FastWeightAttention
from fairseq_fwp.modules.feature_maps import Dpfp
from fwp_helpers import tiny_lm, tiny_translation_model


def fast_weight_count(model):
    return sum(isinstance(m, FastWeightAttention) for m in model.modules())


# ---------------------------------------------------------------------------- --fwp-replace


@pytest.mark.parametrize("build,replace", [(tiny_lm, " "), (tiny_translation_model, " , ")])
def test_empty_replace_list_is_refused(build, replace):
    with pytest.raises(ValueError, match=r"--fwp-replace is empty: .* plain softmax Transformer; name at least one of"):
        build(replace=replace)


@pytest.mark.parametrize("replace,missing", [("cross", "cross"), ("encoder_self", "encoder_self"),
                                             ("decoder_self,cross", "cross")])
def test_language_model_refuses_attentions_it_does_not_have(replace, missing):
    with pytest.raises(ValueError, match=rf"--fwp-replace {replace}: this model has no {missing} attention; it has decoder_self$"):
        tiny_lm(replace=replace)


def test_translation_without_cross_attention_refuses_cross():
    with pytest.raises(ValueError, match=r"this model has no cross attention; it has encoder_self, decoder_self$"):
        tiny_translation_model(replace="cross", extra=["--no-cross-attention"])
    model, _ = tiny_translation_model(extra=["--no-cross-attention"])  # the default: all it has
    assert fast_weight_count(model) == 4


def test_default_and_full_list_replace_every_attention_the_model_has():
    lm, _ = tiny_lm()  # fwp_lm's default is decoder_self
    assert all(isinstance(layer.self_attn, FastWeightAttention) for layer in lm.decoder.layers)
    # the full list (fwp_lm's default before it had its own, so in older checkpoints) means the same
    lm, _ = tiny_lm(replace="encoder_self,decoder_self,cross")
    assert fast_weight_count(lm) == 2
    mt, _ = tiny_translation_model()
    assert fast_weight_count(mt) == 2 + 2 + 2
    mt, _ = tiny_translation_model(replace="decoder_self")
    assert fast_weight_count(mt) == 2 and isinstance(mt.decoder.layers[0].encoder_attn, MultiheadAttention)


@pytest.mark.parametrize("replace", [" ", "cross"])
def test_softmax_baseline_takes_any_replace_list(replace):
    """With --fwp-feature-map softmax nothing is replaced whatever --fwp-replace says."""
    lm, _ = tiny_lm(feature_map="softmax", replace=replace)
    assert fast_weight_count(lm) == 0


# ---------------------------------------------------------------------------- --fwp-dpfp-nu


def _distinct_and_zero_columns(phi):
    cols = torch.unique(phi.reshape(-1, phi.shape[-1]).t(), dim=0)  # products are exact: x'_i x'_j == x'_j x'_i
    return cols.shape[0], int((cols == 0).all(1).sum())


@pytest.mark.parametrize("d_key", [1, 2, 3, 4, 5])
def test_dpfp_distinct_columns_formula_matches_the_feature_map(d_key):
    x = torch.randn(256, d_key, generator=torch.Generator().manual_seed(d_key))
    for nu in range(1, 2 * d_key + 3):
        distinct, zero = _distinct_and_zero_columns(Dpfp(d_key, nu)(x))
        assert distinct == dpfp_distinct_columns(nu, d_key), (d_key, nu)
        all_useful = distinct == 2 * nu * d_key and zero == 0
        assert all_useful == (nu <= max_dpfp_nu(d_key)), (d_key, nu, distinct, zero)


def test_dpfp_nu_from_the_issue_counts_481_of_640():
    assert dpfp_distinct_columns(20, 16) == 481
    with pytest.raises(ValueError, match=r"--fwp-dpfp-nu 20 is too large for head size d_key 16: .*481 distinct of "
                                         r"d_dot = 640 columns.*largest meaningful value is --fwp-dpfp-nu 15 \(d_dot = 480\)"):
        check_dpfp_nu(20, 16)
    check_dpfp_nu(15, 16)
    with pytest.raises(ValueError, match=r"--fwp-feature-map dpfp needs a head size d_key >= 2, got d_key 1"):
        check_dpfp_nu(1, 1)


@pytest.mark.parametrize("build", [tiny_lm, tiny_translation_model])
def test_model_build_refuses_dpfp_nu_beyond_head_size(build):
    """The tiny models have embed dim 16 and 2 heads: d_key 8, so nu <= 7."""
    with pytest.raises(ValueError, match=r"--fwp-dpfp-nu 8 is too large for head size d_key 8: .*--fwp-dpfp-nu 7 "):
        build(feature_map="dpfp", nu=8)
    model, _ = build(feature_map="dpfp", nu=7)
    assert {m.d_dot for m in model.modules() if isinstance(m, FastWeightAttention)} == {2 * 7 * 8}


# ---------------------------------------------------------------------------- delta without sum norm


def _sum_norm_warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "--fwp-sum-norm" in r.getMessage()]


def test_delta_rule_without_sum_norm_warns_once_at_build(caplog, monkeypatch):
    monkeypatch.setattr(config, "_WARNED", set())
    caplog.set_level(logging.WARNING)
    tiny_lm(rule="delta", sum_norm=True)
    tiny_translation_model(rule="delta", sum_norm=True)
    tiny_lm(rule="sum")
    assert _sum_norm_warnings(caplog) == []
    tiny_lm(rule="delta")  # 2 layers
    tiny_translation_model(rule="delta", attn_norm=True)  # 6 attentions
    (record,) = _sum_norm_warnings(caplog)
    msg = record.getMessage()
    assert msg.startswith("--fwp-update-rule delta without --fwp-sum-norm")
    assert "Eq. 29" in msg and "diverge" in msg and "Add --fwp-sum-norm" in msg


# ---------------------------------------------------------------------------- short errors


def _build_error():
    try:
        tiny_lm(replace="cross")
    except ValueError as e:
        return e
    raise AssertionError("tiny_lm(replace='cross') built")


def test_build_errors_of_the_plugin_get_a_short_message():
    e = _build_error()
    assert cli_errors.fwp_error_message(e) == str(e)
    # raised in a worker of torch.multiprocessing.spawn (fairseq's multi-GPU call_main), the
    # parent gets the worker's traceback as text, formatted with traceback.format_exc
    text = "".join(traceback.format_exception(e))
    spawned = ProcessRaisedException("\n\n-- Process 0 terminated with the following error:\n" + text, 0, 4242)
    assert cli_errors.fwp_error_message(spawned) == str(e)


def test_other_errors_keep_their_traceback():
    try:  # ours, but not while building a model: a programming error, keep the traceback
        config.FwpAttentionConfig(fwp_replace="cross").validate(("decoder_self",))
    except ValueError as e:
        assert cli_errors.fwp_error_message(e) is None
    elsewhere = {}  # a ValueError raised by another package's build_model
    exec(compile("def build_model():\n    raise ValueError('not ours')\n", "/elsewhere/model.py", "exec"), elsewhere)
    try:
        elsewhere["build_model"]()
    except ValueError as e:
        assert cli_errors.fwp_error_message(e) is None
    assert cli_errors.fwp_error_message(KeyError("x")) is None
    other = ProcessRaisedException("\n\n-- Process 0 terminated with the following error:\nTraceback (most recent "
                                   "call last):\n  File \"/x/train.py\", line 1, in build_model\n    f()\n"
                                   "ValueError: not ours\n", 0, 1)
    assert cli_errors.fwp_error_message(other) is None


def test_hook_prints_one_line_and_chains_for_the_rest(capsys, monkeypatch):
    e = _build_error()
    seen = []
    cli_errors._hook(type(e), e, e.__traceback__, _previous=lambda *a: seen.append(a[1]))
    err = capsys.readouterr().err
    assert err.splitlines() == [cli_errors.HINT, f"fairseq-fwp: error: {e}"] and seen == []
    monkeypatch.setenv("FWP_TRACEBACK", "1")
    cli_errors._hook(type(e), e, e.__traceback__, _previous=lambda *a: seen.append(a[1]))
    assert seen == [e] and capsys.readouterr().err == ""
    monkeypatch.delenv("FWP_TRACEBACK")
    k = KeyError("x")
    cli_errors._hook(KeyError, k, None, _previous=lambda *a: seen.append(a[1]))
    assert seen == [e, k]
    assert not cli_errors.running_fairseq_cli()  # pytest: the hook is only installed in fairseq commands


def test_retrieval_model_refuses_repeating_dpfp_nu():
    from fairseq_fwp.config import FwpAttentionConfig
    from fairseq_fwp.models.fwp_retrieval import FwpRetrievalModel

    cfg = FwpAttentionConfig(fwp_feature_map="dpfp", fwp_dpfp_nu=4)
    with pytest.raises(ValueError, match=r"--fwp-dpfp-nu 4 is too large for head size d_key 4"):
        FwpRetrievalModel(cfg, num_keys=20, d_key=4)
    assert FwpRetrievalModel(cfg, num_keys=20, d_key=8).memory_layer.d_dot == 2 * 4 * 8
