"""Decoder-only language model with fast weight attention (paper Sec. 6.3, WikiText-103)."""

import logging
import sys
from dataclasses import dataclass, field

from fairseq import options
from fairseq.models import ARCH_CONFIG_REGISTRY, register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig
from fairseq.models.transformer_lm import (
    DEFAULT_MAX_TARGET_POSITIONS,
    TransformerLanguageModel,
    TransformerLanguageModelConfig,
    base_lm_architecture,
)
from fairseq.modules import AdaptiveInput, LearnedPositionalEmbedding
from fairseq.utils import safe_getattr

from ..config import FwpAttentionConfig
from .encoder_decoder import FwpTransformerDecoder


@dataclass
class FwpLanguageModelConfig(TransformerLanguageModelConfig, FwpAttentionConfig):
    fwp_replace: str = field(
        default="decoder_self",
        metadata={"help": "attentions that use the fast weight attention: a language model has only "
                  "decoder_self (the list encoder_self,decoder_self,cross also means it)"},
    )


logger = logging.getLogger(__name__)

# "no limit", as fairseq's EnsembleModel writes it for models without max_decoder_positions
UNLIMITED_POSITIONS = sys.maxsize

LM_ATTENTIONS = ("decoder_self",)  # the attentions a decoder-only model has (for --fwp-replace)


def _check_cutoffs(flag: str, cutoffs, vocab_size: int):
    if cutoffs and max(cutoffs) >= vocab_size:
        raise ValueError(
            f"{flag} {','.join(map(str, cutoffs))} needs every cutoff below the vocabulary size "
            f"{vocab_size}; pass smaller cutoffs (e.g. {flag} {vocab_size // 4},{vocab_size // 2})"
        )


class FwpLanguageModelDecoder(FwpTransformerDecoder):
    """The language model's decoder. Only learned positional embeddings limit how many
    tokens it can read: without positional embeddings (or with sinusoidal ones, which fairseq
    extends to any length) a fast weight LM keeps an O(1) state and runs to any length.

    fairseq uses ``max_positions`` both as that limit and as the size filter of training
    data (``max_target_positions``, by default the training --tokens-per-sample). Training
    and fairseq-validate keep it, so the data an experiment sees is unchanged; once fairseq
    prepares the model for inference (``prepare_for_inference_`` -> ``make_generation_fast_``,
    which fairseq-generate, -interactive, -eval-lm and the hub interface call before asking
    for the limit, and after which the model cannot train), ``max_positions`` is unlimited
    unless the positions are learned."""

    inference = False  # set by make_generation_fast_

    def make_generation_fast_(self, **kwargs):
        self.inference = True

    def max_positions(self):
        if self.inference and not isinstance(self.embed_positions, LearnedPositionalEmbedding):
            return UNLIMITED_POSITIONS
        return super().max_positions()


@register_model("fwp_lm", dataclass=FwpLanguageModelConfig)
class FwpLanguageModel(TransformerLanguageModel):
    """Transformer LM whose self-attention is causal fast weight attention.

    ``--arch fwp_lm`` takes fairseq's transformer_lm defaults (the dataclass);
    ``fwp_lm_wt103_small`` / ``fwp_lm_wt103_medium`` are the paper's models.

    ``model(src_tokens, fast_weight_state=d)`` carries the fast weights in dict ``d``
    across calls (see :class:`FwpTransformerDecoder`)."""

    @classmethod
    def build_model(cls, args, task):
        fwp = FwpAttentionConfig.from_args(args, LM_ATTENTIONS)
        if args.decoder_layers_to_keep:
            args.decoder_layers = len(args.decoder_layers_to_keep.split(","))
        if safe_getattr(args, "max_target_positions", None) is None:
            args.max_target_positions = safe_getattr(args, "tokens_per_sample", DEFAULT_MAX_TARGET_POSITIONS)
        if args.character_embeddings:
            raise ValueError("--character-embeddings is not supported by fwp_lm")
        vocab = len(task.source_dictionary)
        if args.adaptive_softmax_cutoff:
            _check_cutoffs("--adaptive-softmax-cutoff", options.eval_str_list(args.adaptive_softmax_cutoff, type=int), vocab)
        if args.adaptive_input:
            cutoffs = options.eval_str_list(args.adaptive_input_cutoff, type=int)
            _check_cutoffs("--adaptive-input-cutoff", cutoffs, vocab)
            embed_tokens = AdaptiveInput(
                vocab, task.source_dictionary.pad(), args.decoder_input_dim, args.adaptive_input_factor,
                args.decoder_embed_dim, cutoffs, args.quant_noise_pq, args.quant_noise_pq_block_size,
            )
        else:
            embed_tokens = cls.build_embedding(args, task.source_dictionary, args.decoder_input_dim)
        if args.tie_adaptive_weights:
            if not args.adaptive_input:
                raise ValueError("--tie-adaptive-weights needs --adaptive-input")
            if args.adaptive_input_factor != args.adaptive_softmax_factor or args.adaptive_softmax_cutoff != args.adaptive_input_cutoff:
                raise ValueError(
                    "--tie-adaptive-weights needs --adaptive-input-factor/--adaptive-input-cutoff equal to "
                    "--adaptive-softmax-factor/--adaptive-softmax-cutoff"
                )
        cfg = TransformerConfig.from_namespace(args)
        return cls(FwpLanguageModelDecoder(cfg, fwp, task.target_dictionary, embed_tokens, no_encoder_attn=True))

    def max_decoder_positions(self):
        """The generation length limit (fairseq's SequenceGenerator asks for it once); with
        learned positional embeddings it says so."""
        limit = self.decoder.max_positions()
        if limit != UNLIMITED_POSITIONS and not getattr(self, "_limit_logged", False):
            self._limit_logged = True
            logger.warning(
                f"fwp_lm: learned positional embeddings (--decoder-learned-pos) cover {limit} positions (the "
                f"--tokens-per-sample it was trained with), so generation stops after {limit - 1} tokens, prefix "
                "included, and </s>; models trained with --no-token-positional-embeddings or sinusoidal positions "
                "(the default) have no length limit"
            )
        return limit



def fwp_lm_base(args):
    """``--arch fwp_lm``: fairseq's transformer_lm base defaults, with the input/output
    dims following --decoder-embed-dim (the bare dataclass defaults would fix them at 512)."""
    base_lm_architecture(args)


# register_model(dataclass=...) registered a no-op architecture named "fwp_lm"; give it
# the base defaults instead (fairseq offers no decorator to replace it).
ARCH_CONFIG_REGISTRY["fwp_lm"] = fwp_lm_base


def _wt103(args, embed_dim: int, tokens_per_sample: int):
    """The paper's WikiText-103 models (Sec. 6.3, authors' Transformer-XL configs):
    16 post-LN layers, 8 heads, FFN 2048, ReLU, dropout 0.1, no attention dropout,
    tied adaptive input/softmax with cutoffs 20k/40k/200k and equal-size clusters."""
    args.decoder_layers = safe_getattr(args, "decoder_layers", 16)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", embed_dim)
    args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", 8)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 2048)
    args.dropout = safe_getattr(args, "dropout", 0.1)
    args.attention_dropout = safe_getattr(args, "attention_dropout", 0.0)
    args.activation_fn = safe_getattr(args, "activation_fn", "relu")
    args.adaptive_input = safe_getattr(args, "adaptive_input", True)
    args.tie_adaptive_weights = safe_getattr(args, "tie_adaptive_weights", True)
    args.adaptive_softmax_cutoff = safe_getattr(args, "adaptive_softmax_cutoff", "20000,40000,200000")
    args.adaptive_input_cutoff = safe_getattr(args, "adaptive_input_cutoff", args.adaptive_softmax_cutoff)
    args.adaptive_softmax_factor = safe_getattr(args, "adaptive_softmax_factor", 1)
    args.adaptive_input_factor = safe_getattr(args, "adaptive_input_factor", args.adaptive_softmax_factor)
    args.tokens_per_sample = safe_getattr(args, "tokens_per_sample", tokens_per_sample)
    base_lm_architecture(args)
    args.decoder_normalize_before = False  # post-LN (base_lm_architecture forces pre-LN)
    args.no_decoder_final_norm = True


@register_model_architecture("fwp_lm", "fwp_lm_wt103_small")
def fwp_lm_wt103_small(args):
    """16 layers, d_model 128, 8 heads (d_head 16), FFN 2048, post-LN, adaptive softmax."""
    _wt103(args, 128, 256)


@register_model_architecture("fwp_lm", "fwp_lm_wt103_medium")
def fwp_lm_wt103_medium(args):
    """16 layers, d_model 256, 8 heads (d_head 32), FFN 2048, post-LN, adaptive softmax."""
    _wt103(args, 256, 384)
