"""fairseq Transformer encoder and decoder built from fast weight layers.

Both draw FAVOR+'s random features once per training forward, at the top of their own
``forward``, before any layer runs: every layer call of that forward, including the
recomputation of a ``--checkpoint-activations`` layer in the backward pass, then uses
the same features (a redraw inside the attention would give the backward other
features than the forward). fairseq trains forward-then-backward per batch, so the
backward always sees the features of its own forward.

The decoder also numbers its forwards (``forward_id`` of each causal fast weight layer):
with a carried state, the recomputation of a checkpointed layer is the second call of
that layer in the same forward and restarts from the state that forward started from
(``FastWeightAttention._carried_call``), not from the final state already carried on.
"""

from contextlib import contextmanager
from typing import Any, Dict, List, Optional

from torch import Tensor

from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase

from ..config import FwpAttentionConfig
from ..modules.fast_weight_attention import FastWeightAttention
from ..modules.feature_maps import redraw_features
from ..modules.layers import FwpTransformerDecoderLayer, FwpTransformerEncoderLayer, wrap_layer


class FwpTransformerEncoder(TransformerEncoderBase):
    def __init__(self, cfg, fwp: FwpAttentionConfig, dictionary, embed_tokens, return_fc=False):
        self.fwp = fwp
        super().__init__(cfg, dictionary, embed_tokens, return_fc=return_fc)

    def build_encoder_layer(self, cfg):
        return wrap_layer(FwpTransformerEncoderLayer(cfg, self.fwp, return_fc=self.return_fc), cfg)

    def forward(self, src_tokens, src_lengths: Optional[Tensor] = None, return_all_hiddens: bool = False,
                token_embeddings: Optional[Tensor] = None):
        if self.training:
            redraw_features(self)  # once per training forward (see the module docstring)
        return super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)


class FwpTransformerDecoder(TransformerDecoderBase):
    """TransformerDecoder with fast weight layers and an optional carried fast weight state.

    ``forward(..., fast_weight_state=d)`` starts every fast weight self-attention from the
    state stored in the dict ``d`` (empty dict = zero state) and leaves the final state
    in ``d``: this is how a language model carries fast weights from one training or
    evaluation segment to the next (call :func:`detach_fast_weight_state` between
    segments to truncate backpropagation). ``incremental_state`` works as in fairseq.
    """

    def __init__(self, cfg, fwp: FwpAttentionConfig, dictionary, embed_tokens, no_encoder_attn=False, output_projection=None):
        self.fwp = fwp
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn, output_projection=output_projection)

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return wrap_layer(FwpTransformerDecoderLayer(cfg, self.fwp, no_encoder_attn=no_encoder_attn), cfg)

    def fast_weight_modules(self) -> List[FastWeightAttention]:
        return [m for m in self.modules() if isinstance(m, FastWeightAttention) and m.self_attention]

    @contextmanager
    def carry_state(self, fast_weight_state: Dict[str, Dict[str, Optional[Tensor]]]):
        """Bind ``fast_weight_state`` as the state carrier of every causal fast weight layer."""
        modules = self.fast_weight_modules()
        for m in modules:
            m.carry = fast_weight_state
        try:
            yield
        finally:
            for m in modules:
                m.carry = None

    def forward(
        self,
        prev_output_tokens,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
        src_lengths: Optional[Any] = None,
        return_all_hiddens: bool = False,
        fast_weight_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
    ):
        kwargs = dict(
            encoder_out=encoder_out, incremental_state=incremental_state, features_only=features_only,
            full_context_alignment=full_context_alignment, alignment_layer=alignment_layer,
            alignment_heads=alignment_heads, src_lengths=src_lengths, return_all_hiddens=return_all_hiddens,
        )
        if fast_weight_state is not None:
            if incremental_state is not None:
                raise ValueError("pass either incremental_state (step-by-step decoding) or fast_weight_state, not both")
        if self.training:
            redraw_features(self)  # once per training forward (see the module docstring)
        self._forward_count = getattr(self, "_forward_count", 0) + 1
        for m in self.fast_weight_modules():  # lets a re-entrant layer call find its forward's carried state
            m.forward_id = self._forward_count
        if fast_weight_state is None:
            return super().forward(prev_output_tokens, **kwargs)
        with self.carry_state(fast_weight_state):
            return super().forward(prev_output_tokens, **kwargs)


def detach_fast_weight_state(fast_weight_state: Dict[str, Dict[str, Optional[Tensor]]]) -> None:
    """Cut the carried state from the autograd graph in place (truncated BPTT between segments)."""
    for buf in fast_weight_state.values():
        for name, t in list(buf.items()):
            if t is not None:
                buf[name] = t.detach()
