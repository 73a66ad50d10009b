"""Fast weight attention inside fairseq models: incremental decoding, padding, beam
search, FAVOR+ features, state carrying and configuration errors."""

import itertools

import pytest
import torch
from fairseq.modules import MultiheadAttention

from fairseq_fwp.modules import FastWeightAttention
from fairseq_fwp.modules.feature_maps import Favor
from fwp_helpers import FEATURE_MAPS, NORMS, RULES, make_dict, parse, random_tokens, tiny_lm, tiny_translation_model
from fwp_kernels import recurrent_fast_weight

ALL_VARIANTS = [
    dict(feature_map=fm, rule=r, sum_norm=s, attn_norm=a)
    for fm, r, (s, a) in itertools.product(FEATURE_MAPS, RULES, NORMS)
]


def ids(v):
    return f"{v['feature_map']}-{v['rule']}-sn{int(v.get('sum_norm', 0))}-an{int(v.get('attn_norm', 0))}"


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=ids)
def test_translation_incremental_decoding_equals_full_forward(variant):
    torch.manual_seed(0)
    model, d = tiny_translation_model(**variant)
    model.eval()
    src = random_tokens(d, 3, 9)
    src[0, :3] = d.pad()  # left-padded source, as fairseq batches it
    lens = (src != d.pad()).sum(1)
    prev = random_tokens(d, 3, 6)
    full, _ = model(src, lens, prev)
    enc = model.encoder(src, lens)
    inc, steps = {}, []
    for t in range(prev.shape[1]):
        steps.append(model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=inc)[0])
    assert rel(torch.cat(steps, 1), full) < 1e-5
    # only O(1) state is kept per layer: S (and z), no key/value cache growing with t
    for buf in inc.values():
        assert set(buf) <= {"S", "z"}
        assert buf["S"].shape[0] == 3


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=ids)
def test_lm_incremental_decoding_and_segment_carry(variant):
    torch.manual_seed(0)
    model, d = tiny_lm(extra=["--no-token-positional-embeddings"], **variant)
    model.eval()
    tokens = random_tokens(d, 2, 12)
    full, _ = model(tokens)
    inc, steps = {}, []
    for t in range(tokens.shape[1]):
        steps.append(model.decoder(tokens[:, : t + 1], incremental_state=inc)[0])
    assert rel(torch.cat(steps, 1), full) < 1e-5
    # carrying the fast weights across two segments equals one pass over the whole stream
    carry = {}
    a, _ = model(tokens[:, :5], fast_weight_state=carry)
    b, _ = model(tokens[:, 5:], fast_weight_state=carry)
    assert rel(torch.cat([a, b], 1), full) < 1e-5


def test_left_padded_source_gives_same_encoder_output():
    torch.manual_seed(0)
    for variant in [dict(feature_map="dpfp", rule="delta", sum_norm=True, attn_norm=True),
                    dict(feature_map="favor", rule="sum", attn_norm=True)]:
        model, d = tiny_translation_model(**variant)
        model.eval()
        src = random_tokens(d, 1, 7)
        padded = torch.cat([torch.full((1, 4), d.pad()), src], 1)
        a = model.encoder(src, torch.tensor([7]))["encoder_out"][0]
        b = model.encoder(padded, torch.tensor([7]))["encoder_out"][0][4:]
        assert rel(b, a) < 1e-5
        prev = random_tokens(d, 1, 5)
        out_a, _ = model(src, torch.tensor([7]), prev)
        out_b, _ = model(padded, torch.tensor([7]), prev)
        assert rel(out_b, out_a) < 1e-5


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("causal", [True, False])
def test_padded_keys_contribute_nothing_to_fast_weight(rule, causal):
    torch.manual_seed(0)
    attn = FastWeightAttention(16, 2, feature_map="linear", update_rule=rule, attn_norm=True, sum_norm=True, causal=causal).eval()
    x = torch.randn(6, 2, 16)
    pad_rows = torch.randn(3, 2, 16) * 10
    xp = torch.cat([pad_rows[:2], x[:3], pad_rows[2:], x[3:]], 0)  # pads inside and before
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[:, [0, 1, 5]] = True
    out, st = attn.fast_weight_forward(x, output_final_state=True)
    outp, stp = attn.fast_weight_forward(xp, key_padding_mask=mask, output_final_state=True)
    assert rel(stp.S, st.S) < 1e-6 and rel(stp.z, st.z) < 1e-6
    keep = (~mask[0]).nonzero().squeeze(1)
    assert rel(outp[keep], out) < 1e-5


def test_non_causal_delta_writes_all_keys_then_reads():
    """Documented meaning: every query reads the fast weight after the delta rule wrote the whole source."""
    torch.manual_seed(0)
    attn = FastWeightAttention(16, 2, feature_map="dpfp", update_rule="delta", sum_norm=True, causal=False).eval()
    x = torch.randn(5, 1, 16)
    out = attn(x, x, x)[0]
    proj = attn.in_proj(x)
    q = attn.phi(attn._heads(proj[..., :16]))
    k = attn.phi(attn._heads(proj[..., 16:32]))
    v = attn._heads(proj[..., 32:48])
    beta = torch.sigmoid(proj[..., 48:])
    _, final = recurrent_fast_weight(k.double(), k.double(), v.double(), beta.double(), rule="delta", output_final_state=True)
    y = torch.einsum("tbhk,bhkv->tbhv", q.double(), final.S).reshape(5, 1, 16).float()
    assert rel(out, attn.out_proj(y)) < 1e-5


def test_cross_attention_memory_is_computed_once_per_source():
    torch.manual_seed(0)
    model, d = tiny_translation_model(feature_map="linear", rule="delta", sum_norm=True)
    model.eval()
    calls = []
    for layer in model.decoder.layers:
        layer.encoder_attn.kv_proj.register_forward_hook(lambda *a: calls.append(1))
    src = random_tokens(d, 2, 6)
    enc = model.encoder(src, torch.tensor([6, 6]))
    inc = {}
    prev = random_tokens(d, 2, 5)
    for t in range(5):
        model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=inc)
    assert len(calls) == len(model.decoder.layers)


@pytest.mark.parametrize("variant", [dict(feature_map="dpfp", rule="delta", sum_norm=True),
                                     dict(feature_map="linear", rule="sum", attn_norm=True)], ids=ids)
def test_beam_search_scores_match_teacher_forced_forward(variant):
    """fairseq's SequenceGenerator reorders beams and drops finished sentences through
    reorder_incremental_state; every hypothesis' score must equal a full forward's."""
    from fairseq.sequence_generator import SequenceGenerator

    d = make_dict(12)
    for seed in range(30):  # find random weights whose EOS scores end sentences at different steps
        torch.manual_seed(seed)
        model, _ = tiny_translation_model(dictionary=d, **variant)
        model.eval()
        with torch.no_grad():
            model.decoder.output_projection.weight[d.eos()] = torch.randn(16) * 3
        gen = SequenceGenerator([model], d, beam_size=3, max_len_b=8, min_len=1, normalize_scores=False)
        src = random_tokens(d, 4, 5)
        src[1, :2] = d.pad()
        lens = (src != d.pad()).sum(1)
        hypos = gen.forward({"net_input": {"src_tokens": src, "src_lengths": lens}})
        if len({len(h["tokens"]) for hs in hypos for h in hs}) > 2:
            break
    else:
        pytest.fail("no seed gave hypotheses of different lengths")
    for i, hs in enumerate(hypos):
        for h in hs:
            tgt = h["tokens"]
            prev = torch.cat([torch.tensor([d.eos()]), tgt[:-1]]).unsqueeze(0)
            logits, _ = model(src[i : i + 1], lens[i : i + 1], prev)
            lprobs = torch.log_softmax(logits.float(), -1)[0]
            score = lprobs.gather(1, tgt.unsqueeze(1)).sum()
            assert torch.allclose(score, h["score"], atol=1e-4), (score, h["score"])


def test_favor_features_fixed_at_eval_redrawn_in_training_and_checkpointed(tmp_path):
    torch.manual_seed(0)
    model, d = tiny_lm(feature_map="favor", rule="sum", attn_norm=True, m=8)
    favors = [m for m in model.modules() if isinstance(m, Favor)]
    assert favors
    tokens = random_tokens(d, 2, 7)
    before = [f.features.clone() for f in favors]
    model.train()
    model(tokens)
    after_train = [f.features.clone() for f in favors]
    assert all(not torch.equal(a, b) for a, b in zip(before, after_train)), "training forward must redraw"
    model.eval()
    out1, _ = model(tokens)
    out2, _ = model(tokens)
    assert torch.equal(out1, out2)
    assert all(torch.equal(a, f.features) for a, f in zip(after_train, favors)), "eval must not redraw"
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(123)  # a fresh model draws different features...
    fresh, _ = tiny_lm(dictionary=d, feature_map="favor", rule="sum", attn_norm=True, m=8)
    fresh.eval()
    assert not torch.equal(fresh(tokens)[0], out1)
    fresh.load_state_dict(torch.load(path, weights_only=True))  # ...until the checkpoint restores them
    assert torch.equal(fresh(tokens)[0], out1)
    # draws depend only on (seed, draw count): identical on every distributed rank
    f0 = favors[0]
    clone = Favor(f0.d_key, f0.m, seed=int(f0.seed))
    clone.draws.copy_(f0.draws - 1)
    clone.redraw()
    assert torch.equal(clone.features, f0.features)


def test_favor_rows_are_orthogonal_within_a_block():
    f = Favor(16, 16, seed=3)
    r = f.features / f.features.norm(dim=1, keepdim=True)
    assert torch.allclose(r @ r.t(), torch.eye(16), atol=1e-5)


def test_feature_map_dims_and_formulas():
    from fairseq_fwp.modules.feature_maps import build_feature_map

    x = torch.randn(3, 4)
    dp = build_feature_map("dpfp", 4, dpfp_nu=3)
    assert dp(x).shape == (3, 24) and dp.d_dot == 24
    xp = torch.cat([x.clamp_min(0), (-x).clamp_min(0)], -1)
    assert torch.allclose(dp(x)[:, 8:16], xp * xp.roll(2, -1))  # Eq. 37, j = 2
    lin = build_feature_map("linear", 4)
    assert torch.allclose(lin(x), torch.where(x > 0, x + 1, torch.exp(x)))
    fv = build_feature_map("favor", 4, favor_features=5)
    R = fv.features
    expect = torch.exp(-(x * x).sum(-1, keepdim=True) / 2) / (10 ** 0.5) * torch.cat([torch.exp(x @ R.t()), torch.exp(-x @ R.t())], -1)
    assert torch.allclose(fv(x), expect, rtol=1e-5)  # Eq. 31-32
    for fm in (dp, lin, fv):
        s = fm.sum_normalized(x)
        assert torch.allclose(s.sum(-1), torch.ones(3), atol=1e-5)  # Eq. 29


def test_replace_selects_which_attentions_are_fast_weight():
    model, _ = tiny_translation_model(feature_map="linear", replace="cross")
    assert isinstance(model.encoder.layers[0].self_attn, MultiheadAttention)
    assert isinstance(model.decoder.layers[0].self_attn, MultiheadAttention)
    assert isinstance(model.decoder.layers[0].encoder_attn, FastWeightAttention)
    model, _ = tiny_translation_model(feature_map="softmax")
    assert not any(isinstance(m, FastWeightAttention) for m in model.modules())


@pytest.mark.parametrize(
    "kwargs,extra,message",
    [
        (dict(feature_map="dpfp", nu=0), [], r"--fwp-dpfp-nu must be an integer >= 1"),
        (dict(feature_map="favor", m=0), [], r"--fwp-favor-features must be an integer >= 1"),
        (dict(feature_map="linear", replace="encoder_self,decoder"), [], r"--fwp-replace: unknown attention\(s\) decoder"),
        (dict(feature_map="softmax"), ["--fwp-update-rule", "delta"], r"--fwp-update-rule delta needs a linearised attention"),
    ],
)
def test_bad_configuration_fails_at_build_naming_the_flag(kwargs, extra, message):
    with pytest.raises(ValueError, match=message):
        tiny_translation_model(extra=extra, **kwargs)


def test_unknown_feature_map_is_refused(capsys):
    with pytest.raises(SystemExit):
        tiny_translation_model(feature_map="relu")
    err = capsys.readouterr().err
    assert "--fwp-feature-map" in err and "invalid choice: 'relu'" in err
    from fairseq_fwp.config import FwpAttentionConfig
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="--fwp-feature-map: unknown feature map 'relu'; valid: softmax, linear, favor, dpfp"):
        FwpAttentionConfig.from_args(SimpleNamespace(fwp_feature_map="relu"))


def test_adaptive_softmax_cutoff_beyond_vocab_is_refused():
    with pytest.raises(ValueError, match="--adaptive-softmax-cutoff 20000,40000,200000 needs every cutoff below the vocabulary size"):
        from fwp_helpers import tiny_lm as build

        build(extra=["--arch", "fwp_lm_wt103_small"])


@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
@pytest.mark.parametrize("rule", RULES)
def test_half_precision_model_matches_float32(feature_map, rule):
    """fairseq --fp16 / --bf16 call model.half() / .bfloat16(): every feature map and rule
    must still run (FAVOR+'s feature buffer becomes half) and match the float32 model."""
    torch.manual_seed(0)
    model, d = tiny_translation_model(feature_map=feature_map, rule=rule, sum_norm=True, attn_norm=rule == "sum")
    model.eval()
    src, prev, lens = random_tokens(d, 2, 7), random_tokens(d, 2, 6), torch.tensor([7, 7])
    ref, _ = model(src, lens, prev)
    for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        out, _ = model.to(dtype)(src, lens, prev)
        assert out.dtype == dtype
        assert rel(out.float(), ref) < tol
        model.float()
