"""Model-level robustness (issue 9, items 1, 3, 4): random features under activation
checkpointing, EMA with every feature map, and attention weights for --print-alignment.

The unit tests build tiny models through fairseq's parser and build path (so
``--checkpoint-activations`` really wraps the layers with fairseq's checkpoint_wrapper);
one module fixture runs fairseq-train / fairseq-generate end to end.
"""

import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fairseq.dataclass.configs import EMAConfig
from fairseq.models.ema import build_ema

from fairseq_fwp.data import toy_data
from fairseq_fwp.modules import FastWeightAttention
from fairseq_fwp.modules.feature_maps import Favor, unaveraged_state_keys
from fwp_helpers import FEATURE_MAPS, random_tokens, tiny_lm, tiny_translation_model

EPS = 1e-6  # fwp_kernels.state.EPS, the normaliser's epsilon


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def favors(model):
    return [m for m in model.modules() if isinstance(m, Favor)]


# ------------------------------------------------------------ item 1: checkpoint activations


def _grads(kind, feature_map, checkpoint, rule="sum"):
    """Parameter gradients of one training forward/backward of a freshly built tiny model."""
    extra = ["--checkpoint-activations"] if checkpoint else []
    torch.manual_seed(0)  # same weights and FAVOR+ seeds with and without checkpointing
    build = tiny_translation_model if kind == "translation" else tiny_lm
    model, d = build(feature_map=feature_map, rule=rule, sum_norm=rule == "delta", attn_norm=rule == "sum", extra=extra)
    layers = model.decoder.layers
    assert all(hasattr(layer, "precheckpoint_forward") == checkpoint for layer in layers)
    model.train()
    g = torch.Generator().manual_seed(1)
    if kind == "translation":
        src, tgt = random_tokens(d, 3, 7, g), random_tokens(d, 3, 6, g)
        out, _ = model(src, torch.full((3,), 7), tgt)
    else:
        out, _ = model(random_tokens(d, 3, 9, g))
    w = torch.randn(out.shape, generator=g)
    (out.float() * w).sum().backward()
    draws = [int(f.draws) for f in favors(model)]
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, draws


@pytest.mark.parametrize("kind,rule", [("translation", "sum"), ("lm", "delta")])
@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
def test_checkpoint_activations_gives_the_same_gradients(kind, rule, feature_map):
    """The backward's recomputation of a checkpointed layer must use the forward's random features."""
    plain, draws_plain = _grads(kind, feature_map, checkpoint=False, rule=rule)
    ckpt, draws_ckpt = _grads(kind, feature_map, checkpoint=True, rule=rule)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    worst = max(rel(ckpt[n], plain[n]) for n in plain)
    assert worst < 1e-6, f"gradients differ with --checkpoint-activations (worst relative difference {worst:.2e})"
    if feature_map == "favor":
        assert draws_plain and draws_plain == draws_ckpt == [1] * len(draws_plain), "one draw per training forward"


def test_features_drawn_once_per_training_forward_not_per_layer_call():
    torch.manual_seed(0)
    model, d = tiny_translation_model(feature_map="favor", rule="sum", attn_norm=True)
    model.train()
    src, tgt = random_tokens(d, 2, 5), random_tokens(d, 2, 4)
    for n in (1, 2):
        model(src, torch.full((2,), 5), tgt)
        assert [int(f.draws) for f in favors(model)] == [n] * len(favors(model))
    # a re-entrant call of an attention within one training forward sees the same features
    attn = model.decoder.layers[0].self_attn
    x = torch.randn(4, 2, 16)
    assert torch.equal(attn(x, x, x)[0], attn(x, x, x)[0])
    model.eval()
    model(src, torch.full((2,), 5), tgt)
    assert [int(f.draws) for f in favors(model)] == [2] * len(favors(model)), "evaluation must not redraw"


def _carried_grads(checkpoint, bind_around_backward):
    """Gradients of three carried segments (detached between segments, as --fwp-carry-state trains)."""
    from fairseq_fwp.models.encoder_decoder import detach_fast_weight_state

    torch.manual_seed(0)
    extra = ["--checkpoint-activations"] if checkpoint else []
    model, d = tiny_lm(feature_map="dpfp", rule="delta", sum_norm=True, extra=extra)
    model.train()
    g = torch.Generator().manual_seed(2)
    state, grads = {}, []
    for _ in range(3):
        tokens, w = random_tokens(d, 2, 5, g), None
        model.zero_grad()
        if bind_around_backward:  # the task's way: bind the carrier around forward and backward
            with model.decoder.carry_state(state):
                out, _ = model(tokens)
                w = torch.randn(out.shape, generator=g)
                (out * w).sum().backward()
        else:  # model(tokens, fast_weight_state=d): unbound again before the backward
            out, _ = model(tokens, fast_weight_state=state)
            w = torch.randn(out.shape, generator=g)
            (out * w).sum().backward()
        detach_fast_weight_state(state)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return grads, [layer.self_attn._load_state(state).S for layer in model.decoder.layers]


@pytest.mark.parametrize("bind_around_backward", [False, True])
def test_carried_state_with_checkpoint_activations_gives_the_same_gradients(bind_around_backward):
    """The recomputation must restart from the state its forward started from, not the carried-on one."""
    plain, s_plain = _carried_grads(False, bind_around_backward)
    ckpt, s_ckpt = _carried_grads(True, bind_around_backward)
    for segment, (a, b) in enumerate(zip(plain, ckpt)):
        worst = max(rel(b[n], a[n]) for n in a)
        assert worst < 1e-5, f"segment {segment}: gradients differ by {worst:.2e} with --checkpoint-activations"
    for a, b in zip(s_plain, s_ckpt):  # and the state carried on is the same
        assert rel(b, a) < 1e-5


# ------------------------------------------------------------ item 3: EMA


@pytest.mark.parametrize("ema_fp32", [False, True])
@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
def test_ema_averages_weights_and_copies_random_features(feature_map, ema_fp32):
    torch.manual_seed(0)
    model, d = tiny_lm(feature_map=feature_map, rule="sum", attn_norm=True)
    decay = 0.5
    ema = build_ema(model, EMAConfig(store_ema=True, ema_decay=decay, ema_fp32=ema_fp32), device=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    model.train()
    for update in range(1, 4):
        opt.zero_grad()
        model(random_tokens(d, 2, 6))[0].float().pow(2).mean().backward()
        opt.step()
        ema.step(model, updates=update)
        for n, p in model.named_parameters():
            expected[n] = decay * expected[n] + (1 - decay) * p.detach().double()
    ema_state, live_state = ema.get_model().state_dict(), model.state_dict()
    for n, p in model.named_parameters():
        assert rel(ema_state[n], expected[n]) < 1e-5, n
    assert any(rel(ema_state[n], live_state[n]) > 1e-3 for n, _ in model.named_parameters())
    copied = unaveraged_state_keys(model)
    if feature_map == "favor":
        assert len(copied) == 3 * len(favors(model)) and all(int(f.draws) == 3 for f in favors(model))
    else:
        assert copied == []
    for key in copied:  # FAVOR+'s seed, draws and features: the live model's, bit for bit
        assert ema_state[key].dtype == live_state[key].dtype and torch.equal(ema_state[key], live_state[key]), key
    # the EMA model evaluates with the live model's features
    probe = random_tokens(d, 2, 6)
    ema_model = ema.get_model().eval()
    live_with_ema_weights, _ = tiny_lm(dictionary=d, feature_map=feature_map, rule="sum", attn_norm=True)
    live_with_ema_weights.load_state_dict({k: v.to(live_state[k].dtype) for k, v in ema_state.items()})
    live_with_ema_weights.eval()
    with torch.no_grad():
        assert torch.equal(ema_model(probe)[0], live_with_ema_weights(probe)[0])


# ------------------------------------------------------------ item 4: attention weights


def _phi64(fm, x, sum_norm):
    """phi (Sec. 5) in float64, straight from the formulas."""
    if isinstance(fm, Favor):
        R = fm.features.double()
        base = torch.exp(-0.5 * (x * x).sum(-1, keepdim=True)) / (2 * fm.m) ** 0.5
        phi = base * torch.cat([torch.exp(x @ R.t()), torch.exp(-x @ R.t())], -1)  # Eq. 31-32
    elif fm.__class__.__name__ == "Dpfp":
        xp = torch.cat([F.relu(x), F.relu(-x)], -1)
        phi = torch.cat([xp * xp.roll(j, dims=-1) for j in range(1, fm.nu + 1)], -1)  # Eq. 37
    else:
        phi = F.elu(x) + 1
    return phi / phi.sum(-1, keepdim=True) if sum_norm else phi


@pytest.mark.parametrize("sum_norm,attn_norm", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
def test_cross_attention_weights_match_float64_bruteforce(feature_map, sum_norm, attn_norm):
    torch.manual_seed(0)
    E, H, T, S, B = 16, 2, 3, 5, 2
    attn = FastWeightAttention(E, H, feature_map=feature_map, update_rule="sum", sum_norm=sum_norm,
                               attn_norm=attn_norm, dpfp_nu=2, favor_features=8, causal=False, self_attention=False)
    attn.eval()
    query, key = torch.randn(T, B, E), torch.randn(S, B, E)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[1, :2] = True  # left padding of the second source
    assert attn(query, key, key, key_padding_mask=pad)[1] is None, "no weights unless asked for"
    attn.make_generation_fast_(need_attn=True)
    out, w = attn(query, key, key, key_padding_mask=pad, need_weights=True, need_head_weights=True)
    _, w_mean = attn(query, key, key, key_padding_mask=pad, need_weights=True)
    assert w.shape == (H, B, T, S) and w_mean.shape == (B, T, S)

    # float64 reference: a_ij = phi(q_i) . phi(k_j) per head, padded keys excluded, then normalised
    dh = E // H
    q = F.linear(query.double(), attn.q_proj.weight.double(), attn.q_proj.bias.double()).view(T, B, H, dh)
    kv = F.linear(key.double(), attn.kv_proj.weight.double(), attn.kv_proj.bias.double())
    k, v = kv[..., :E].reshape(S, B, H, dh), kv[..., E:].reshape(S, B, H, dh)
    pq, pk = _phi64(attn.feature_map, q, sum_norm), _phi64(attn.feature_map, k, sum_norm)
    ref = torch.zeros(H, B, T, S, dtype=torch.float64)
    for h in range(H):
        for b in range(B):
            for i in range(T):
                for j in range(S):
                    if not pad[b, j]:
                        ref[h, b, i, j] = pq[i, b, h] @ pk[j, b, h]
    if attn_norm:
        ref = ref / (ref.sum(-1, keepdim=True) + EPS)  # sum_j a_ij = 1 up to the EPS of the read's denominator
        assert (ref.sum(-1) <= 1).all() and torch.allclose(w.sum(-1).double(), ref.sum(-1), atol=1e-5)
    assert rel(w, ref) < 1e-5 and rel(w_mean, ref.mean(0)) < 1e-5
    assert (w[:, 1, :, :2] == 0).all(), "padded source positions get weight 0"
    # the weights are the ones the read uses: out = out_proj(sum_j a_ij v_j)
    y = torch.einsum("hbts,sbhd->tbhd", ref, v).reshape(T, B, E)
    y = F.linear(y, attn.out_proj.weight.double(), attn.out_proj.bias.double())
    assert rel(out, y) < 1e-5


def test_decoder_alignment_incremental_steps_equal_full_forward():
    torch.manual_seed(0)
    model, d = tiny_translation_model(feature_map="favor", rule="sum", attn_norm=True)
    model.eval()
    B, S, T = 2, 6, 4
    src, prev = random_tokens(d, B, S), random_tokens(d, B, T)
    src[1, :2] = d.pad()  # left-padded, as fairseq batches sources
    lengths = (src != d.pad()).sum(1)
    with torch.no_grad():
        enc = model.encoder(src, lengths)
        _, extra = model.decoder(prev, enc)
        assert extra["attn"] == [None], "no weights without --print-alignment"
        inc = {}
        model.decoder(prev[:, :1], enc, incremental_state=inc)
        assert all(set(buf) <= {"S", "z"} for buf in inc.values()), "nothing extra kept without --print-alignment"

        model.make_generation_fast_(need_attn=True)  # what fairseq-generate --print-alignment does
        _, extra = model.decoder(prev, enc)
        full = extra["attn"][0]
        assert full.shape == (B, T, S)
        assert (full[1, :, :2] == 0).all()
        assert torch.allclose(full.sum(-1), torch.ones(B, T), atol=1e-5)
        inc, steps = {}, []
        for t in range(T):
            _, extra = model.decoder(prev[:, : t + 1], enc, incremental_state=inc)
            steps.append(extra["attn"][0])
            assert steps[-1].shape == (B, 1, S)
        assert rel(torch.cat(steps, 1), full) < 1e-5


def test_delta_rule_alignment_is_refused_before_decoding():
    model, _ = tiny_translation_model(feature_map="linear", rule="delta", sum_norm=True)
    with pytest.raises(ValueError, match=r"--print-alignment.*--fwp-update-rule sum.*--fwp-replace"):
        model.make_generation_fast_(need_attn=True)
    # softmax cross-attention gives fairseq's own weights, whatever the other attentions use
    model, _ = tiny_translation_model(feature_map="linear", rule="delta", sum_norm=True,
                                      replace="encoder_self,decoder_self")
    model.make_generation_fast_(need_attn=True)


# ------------------------------------------------------------ end to end (fairseq CLIs)

ENV_TIMEOUT = 300
TRAIN = [
    "--task", "translation", "--arch", "fwp_transformer",
    "--encoder-layers", "1", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings",
    "--optimizer", "adam", "--lr", "3e-3", "--criterion", "cross_entropy", "--max-tokens", "400",
    "--cpu", "--seed", "1", "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "simple",
    "--disable-validation",
]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    from test_cli import ENV, USER_DIR, fairseq

    d = tmp_path_factory.mktemp("robust")
    toy_data.write_translation_corpus(d / "raw", task="reverse", sizes=(300, 20, 20), max_len=6, seed=1)
    fairseq("preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
            "--trainpref", d / "raw/train", "--validpref", d / "raw/valid", "--testpref", d / "raw/test",
            "--destdir", d / "bin", "--workers", "1")
    return d, USER_DIR, fairseq, ENV


def test_cli_favor_checkpoint_activations_store_ema_and_print_alignment(cli):
    d, user_dir, fairseq, env = cli
    updates = 7
    save = d / "favor"
    fairseq("train", d / "bin", "--user-dir", user_dir, *TRAIN, "--fwp-feature-map", "favor",
            "--fwp-favor-features", "8", "--fwp-attn-norm", "--checkpoint-activations",
            "--store-ema", "--ema-decay", "0.9", "--max-update", updates, "--save-dir", save, timeout=ENV_TIMEOUT)
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    model, ema = state["model"], state["extra_state"]["ema"]
    draws = {k: int(v) for k, v in model.items() if k.endswith("feature_map.draws")}
    assert draws and set(draws.values()) == {updates}, f"one draw per update expected, got {draws}"
    for key in (k for k in model if k.rsplit(".", 1)[-1] in ("seed", "draws", "features")):
        assert torch.equal(ema[key], model[key]), key  # copied from the live model, not averaged
    assert rel(ema["decoder.layers.0.fc1.weight"], model["decoder.layers.0.fc1.weight"]) > 1e-4

    from fairseq import checkpoint_utils

    checkpoint_utils.save_ema_as_checkpoint(str(save / "checkpoint_last.pt"), str(save / "ema.pt"))
    out = fairseq("generate", d / "bin", "--user-dir", user_dir, "--path", save / "ema.pt", "--gen-subset", "test",
                  "--beam", "2", "--batch-size", "8", "--cpu", "--print-alignment", timeout=ENV_TIMEOUT)
    hyps = dict(re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, re.M))
    aligns = dict(re.findall(r"^A-(\d+)\t(.*)$", out, re.M))
    sources = re.findall(r"^S-(\d+)\t", out, re.M)
    assert len(sources) >= 10 and hyps.keys() == aligns.keys() == set(sources), out[-3000:]
    for i, a in aligns.items():
        pairs = [tuple(map(int, p.split("-"))) for p in a.split()]
        assert len(pairs) == len(hyps[i].split())  # one source position per target token (hard alignment)


def test_cli_print_alignment_with_delta_rule_fails_before_decoding(cli):
    d, user_dir, fairseq, env = cli
    save = d / "delta"
    fairseq("train", d / "bin", "--user-dir", user_dir, *TRAIN, "--fwp-update-rule", "delta", "--fwp-sum-norm",
            "--max-update", "1", "--save-dir", save, timeout=ENV_TIMEOUT)
    cmd = [sys.executable, "-m", "fairseq_cli.generate", str(d / "bin"), "--user-dir", user_dir, "--path",
           str(save / "checkpoint_last.pt"), "--gen-subset", "test", "--cpu", "--print-alignment"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=ENV_TIMEOUT)
    assert p.returncode != 0
    assert "--fwp-update-rule delta" in p.stderr and "--fwp-replace" in p.stderr, p.stderr[-3000:]
    assert "Traceback" not in p.stderr  # a configuration error: one line (fairseq_fwp/compat/cli_errors.py)
    assert "H-" not in p.stdout
