"""fairseq Transformer layers whose attention hooks build fast weight attention.

Following fairseq's plugin style (examples/linformer), each layer subclass overrides
exactly the ``build_*attention`` hooks; everything else is fairseq's own layer.
"""

from fairseq.distributed import fsdp_wrap
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from ..config import FwpAttentionConfig, check_dpfp_nu, warn_delta_without_sum_norm
from .fast_weight_attention import FastWeightAttention


def build_fast_weight_attention(fwp: FwpAttentionConfig, embed_dim, num_heads, *, causal, self_attention, kdim=None):
    """The attention module selected by the ``--fwp-*`` options.

    The checks that need the head size d_key = embed_dim / num_heads happen here:
    a ``--fwp-dpfp-nu`` that would only repeat features is refused, and the delta rule
    without ``--fwp-sum-norm`` is warned about (once per process)."""
    attn = FastWeightAttention(
        embed_dim,
        num_heads,
        kdim=kdim,
        feature_map=str(fwp.fwp_feature_map),
        update_rule=str(fwp.fwp_update_rule),
        sum_norm=bool(fwp.fwp_sum_norm),
        attn_norm=bool(fwp.fwp_attn_norm),
        dpfp_nu=int(fwp.fwp_dpfp_nu),
        favor_features=int(fwp.fwp_favor_features),
        causal=causal,
        self_attention=self_attention,
    )
    if str(fwp.fwp_feature_map) == "dpfp":
        check_dpfp_nu(int(fwp.fwp_dpfp_nu), attn.head_dim)
    warn_delta_without_sum_norm(str(fwp.fwp_update_rule), bool(fwp.fwp_sum_norm))
    return attn


def wrap_layer(layer, cfg):
    """Activation checkpointing and FSDP wrapping, as fairseq's encoder/decoder do for their layers."""
    checkpoint = cfg.checkpoint_activations
    if checkpoint:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not checkpoint else 0)


class FwpTransformerEncoderLayer(TransformerEncoderLayerBase):
    """Encoder layer whose self-attention is non-causal fast weight attention (``encoder_self``)."""

    def __init__(self, cfg, fwp: FwpAttentionConfig, return_fc=False):
        self.fwp = fwp
        super().__init__(cfg, return_fc=return_fc)

    def build_self_attention(self, embed_dim, cfg):
        if not self.fwp.replaces("encoder_self"):
            return super().build_self_attention(embed_dim, cfg)
        return build_fast_weight_attention(
            self.fwp, embed_dim, cfg.encoder.attention_heads, causal=False, self_attention=True
        )


class FwpTransformerDecoderLayer(TransformerDecoderLayerBase):
    """Decoder layer: causal fast weight self-attention (``decoder_self``) and
    non-causal fast weight encoder-decoder attention (``cross``)."""

    def __init__(self, cfg, fwp: FwpAttentionConfig, no_encoder_attn=False):
        self.fwp = fwp
        super().__init__(cfg, no_encoder_attn=no_encoder_attn)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        if not self.fwp.replaces("decoder_self"):
            return super().build_self_attention(embed_dim, cfg, add_bias_kv, add_zero_attn)
        if add_bias_kv or add_zero_attn or cfg.cross_self_attention:
            raise ValueError(
                "fast weight decoder self-attention does not support --cross-self-attention, "
                "add_bias_kv or add_zero_attn; use --fwp-replace without decoder_self"
            )
        return build_fast_weight_attention(
            self.fwp, embed_dim, cfg.decoder.attention_heads, causal=True, self_attention=True
        )

    def build_encoder_attention(self, embed_dim, cfg):
        if not self.fwp.replaces("cross"):
            return super().build_encoder_attention(embed_dim, cfg)
        return build_fast_weight_attention(
            self.fwp, embed_dim, cfg.decoder.attention_heads, causal=False, self_attention=False,
            kdim=cfg.encoder.embed_dim,
        )
