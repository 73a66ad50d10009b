"""Encoder-decoder Transformer with fast weight attention (translation, paper Sec. 6.2)."""

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel
from fairseq.models.transformer.transformer_legacy import base_architecture, transformer_vaswani_wmt_en_de_big

from ..config import ATTENTIONS, FwpAttentionConfig
from .encoder_decoder import FwpTransformerDecoder, FwpTransformerEncoder


@register_model("fwp_transformer")
class FwpTransformerModel(TransformerModel):
    """fairseq's Transformer with the attentions named by ``--fwp-replace`` replaced by
    fast weight attention (``--fwp-feature-map softmax`` keeps standard attention)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, FwpAttentionConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        no_cross = getattr(args, "no_cross_attention", False)
        available = tuple(a for a in ATTENTIONS if not (no_cross and a == "cross"))  # for --fwp-replace
        fwp = FwpAttentionConfig.from_args(args, available)  # fail early, naming the flag
        fwp.fill_namespace(args)
        return super().build_model(args, task)

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return FwpTransformerEncoder(cfg, FwpAttentionConfig.from_args(args), src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return FwpTransformerDecoder(
            cfg, FwpAttentionConfig.from_args(args), tgt_dict, embed_tokens,
            no_encoder_attn=cfg.no_cross_attention,
        )


@register_model_architecture("fwp_transformer", "fwp_transformer")
def fwp_transformer(args):
    """Transformer base sizes (6+6 layers, 512, 8 heads, FFN 2048)."""
    base_architecture(args)


@register_model_architecture("fwp_transformer", "fwp_transformer_wmt_en_de_big")
def fwp_transformer_wmt_en_de_big(args):
    """Vaswani et al. big: 6+6 layers, 1024, 16 heads, FFN 4096, dropout 0.3, shared embeddings
    (needs a joined dictionary: fairseq-preprocess --joined-dictionary)."""
    args.share_all_embeddings = getattr(args, "share_all_embeddings", True)
    transformer_vaswani_wmt_en_de_big(args)
