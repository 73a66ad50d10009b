"""Multi-head fast weight attention: a drop-in replacement for fairseq's MultiheadAttention.

Per head, keys and queries go through the feature map phi (optionally sum-normalised,
Eq. 29); values are written into a fast weight S = W^T (d_dot x d_head) with the sum
rule (Eq. 17) or the delta rule (Eq. 23, write strength beta = sigmoid(W_beta x) from
the same fused projection as q, k, v); queries read it, optionally attention-normalised
(Eq. 19 / 28).

Causal form (decoder self-attention, LMs): the query at position i reads the fast
weight after the write of position i. Incremental decoding keeps only the state
(S, z) per layer: O(1) memory per token instead of a growing key/value cache.

Non-causal form (encoder self-attention, encoder-decoder attention): the whole key
sequence is written first, in order, and every query reads the final fast weight.
For the sum rule this is exactly non-causal linear attention,
y_i = (sum_j v_j phi(k_j)^T) phi(q_i) [/ (sum_j phi(k_j)) . phi(q_i)].
For the delta rule it means: the source is programmed into the fast weight token by
token with the delta rule (later keys may overwrite earlier associations), then read
by every query. Padded keys are written with phi(k) = 0 and beta = 0, i.e. not at all,
so left or right padding never changes the result.

Random features (FAVOR+) are not redrawn here: the model draws them once per training
forward (``feature_maps.redraw_features``), so a re-entrant call of this module, such
as the recomputation of a ``--checkpoint-activations`` layer, uses the same features.

Attention weights (``fairseq-generate --print-alignment``): for the sum rule the
non-causal read is y_i = sum_j a_ij v_j with the linearised weights
a_ij = phi(q_i) . phi(k_j) [/ (z . phi(q_i) + EPS) with --fwp-attn-norm, z = sum_j phi(k_j)].
Encoder-decoder attention returns them when fairseq's ``make_generation_fast_(need_attn=True)``
asked for them; otherwise nothing extra is computed or kept. The delta rule has no such
weights (its reads combine the delta-corrected values, not v_j), so asking for them
fails at once.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from fairseq.incremental_decoding_utils import with_incremental_state
from fwp_kernels import FastWeightState
from fwp_kernels.state import EPS, acc_dtype

from .fast_weight_memory import FastWeightMemory


def _linear(in_dim: int, out_dim: int, gain: float = 1.0) -> nn.Linear:
    m = nn.Linear(in_dim, out_dim)
    nn.init.xavier_uniform_(m.weight, gain=gain)
    nn.init.zeros_(m.bias)
    return m


@with_incremental_state
class FastWeightAttention(FastWeightMemory):
    """Fast weight attention with fairseq's MultiheadAttention calling convention:
    a :class:`FastWeightMemory` per head plus fairseq-style projections."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kdim: Optional[int] = None,
        feature_map: str = "linear",
        update_rule: str = "sum",
        sum_norm: bool = False,
        attn_norm: bool = False,
        dpfp_nu: int = 1,
        favor_features: int = 64,
        causal: bool = True,
        self_attention: bool = True,
    ):
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by the number of attention heads {num_heads}")
        super().__init__(
            embed_dim // num_heads, feature_map=feature_map, update_rule=update_rule, sum_norm=sum_norm,
            attn_norm=attn_norm, dpfp_nu=dpfp_nu, favor_features=favor_features,
        )
        if causal and not self_attention:
            raise ValueError("a causal fast weight attention must be a self-attention")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.causal = causal
        self.self_attention = self_attention
        self.encoder_decoder_attention = not self_attention
        n_beta = num_heads if update_rule == "delta" else 0
        if self_attention:
            # one fused projection to q, k, v and beta (Eq. 4 and 21)
            self.in_proj = _linear(embed_dim, 3 * embed_dim + n_beta, gain=2**-0.5)
        else:
            self.q_proj = _linear(embed_dim, embed_dim, gain=2**-0.5)
            self.kv_proj = _linear(kdim or embed_dim, 2 * embed_dim + n_beta, gain=2**-0.5)
        self.out_proj = _linear(embed_dim, embed_dim)
        # a dict bound by FwpTransformerDecoder to carry the state across calls (see carry_state)
        self.carry: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None
        # set by FwpTransformerDecoder at each of its forwards; (forward_id, carrier, initial
        # state) of this layer's carried call in that forward (see _carried_call)
        self.forward_id: Optional[int] = None
        self._carried = None
        # set by make_generation_fast_(need_attn=True) (fairseq-generate --print-alignment)
        self.return_attn_weights = False

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, head_dim={self.head_dim}, rule={self.update_rule}, "
            f"sum_norm={self.sum_norm}, attn_norm={self.attn_norm}, causal={self.causal}"
        )

    # ------------------------------------------------------------------ maths
    def _heads(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim)

    def _keys(self, proj: Tensor, key_padding_mask: Optional[Tensor]):
        """phi(k), v, beta from the fused projection [T, B, 2E(+H)]; padded keys write nothing."""
        E = self.embed_dim
        k = self.phi(self._heads(proj[..., :E]))
        v = self._heads(proj[..., E : 2 * E])
        # Eq. 21, in float32 (float64 stays float64)
        beta = torch.sigmoid(proj[..., 2 * E :].to(acc_dtype(proj.dtype))) if self.update_rule == "delta" else None
        if key_padding_mask is not None and key_padding_mask.any():
            pad = key_padding_mask.to(torch.bool).t()  # [T, B]
            k = k.masked_fill(pad[..., None, None], 0.0)
            v = v.masked_fill(pad[..., None, None], 0.0)
            if beta is not None:
                beta = beta.masked_fill(pad[..., None], 0.0)
        return k, v, beta

    def fast_weight_forward(
        self,
        x: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        initial_state: Optional[FastWeightState] = None,
        output_final_state: bool = False,
    ) -> Tuple[Tensor, Optional[FastWeightState]]:
        """Self-attention on x [T, B, E] from an optional initial fast weight state.

        Returns (output [T, B, E], final state or None). Causal: a scan (Eq. 17-28).
        Non-causal: write all keys (from ``initial_state`` if given), then read.
        """
        T, B, E = x.shape
        proj = self.in_proj(x)
        q = self.phi(self._heads(proj[..., :E]))
        k, v, beta = self._keys(proj[..., E:], key_padding_mask)
        if self.causal:
            out, state = self.scan(q, k, v, beta, initial_state, output_final_state)
        else:
            state = self.write(k, v, beta, initial_state)
            out = self.read(q, state)
        out = self.out_proj(out.reshape(T, B, E).to(x.dtype))
        return out, (state if output_final_state else None)

    # --------------------------------------------------------- fairseq API
    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Optional[Tensor] = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """fairseq MultiheadAttention signature; returns (out [T, B, E], weights or None).

        ``attn_mask`` is fairseq's causal future mask (or None); causality is a property
        of this module instead. Weights are returned only by encoder-decoder attention,
        only after ``make_generation_fast_(need_attn=True)`` and only when the caller
        asks (``need_weights``): [H, B, T, S] with ``need_head_weights``, else averaged
        over heads, [B, T, S], as fairseq's MultiheadAttention returns them. fairseq's
        decoder layer passes ``need_weights=True`` to its last layer even in training,
        so the request alone computes nothing.
        """
        if self.self_attention:
            if incremental_state is not None:
                carrier, state, save = incremental_state, self._load_state(incremental_state), True
            else:
                carrier, state, save = self._carried_call()
            out, state = self.fast_weight_forward(
                query, key_padding_mask, initial_state=state, output_final_state=save
            )
            if save:
                self._save_state(carrier, state)
            return out, None
        weights = self.return_attn_weights and (need_weights or need_head_weights)
        out, attn = self._cross_attention(query, key, key_padding_mask, incremental_state, weights)
        if attn is not None and not need_head_weights:
            attn = attn.mean(dim=0)
        return out, attn

    def _carried_call(self):
        """(carrier, initial state, write back?) of a call that carries the state across model forwards.

        A second call within the same model forward (same ``forward_id``) is a re-entrant
        call: the recomputation of a ``--checkpoint-activations`` layer in the backward
        pass, possibly after the carrier was unbound. The carrier then already holds this
        forward's final state, so the call starts again from the recorded initial state
        and writes nothing, and the backward sees the forward's own computation."""
        done = self._carried
        if done is not None and self.forward_id is not None and done[0] == self.forward_id:
            return done[1], done[2], False
        if self.carry is None:
            self._carried = None
            return None, None, False
        initial = self._load_state(self.carry)
        self._carried = (self.forward_id, self.carry, initial) if self.forward_id is not None else None
        return self.carry, initial, True

    def make_generation_fast_(self, need_attn: bool = False, **kwargs):
        """fairseq's inference hook (``prepare_for_inference_``): ``need_attn`` is
        ``--print-alignment``. Fails before decoding where no attention weights exist."""
        need_attn = bool(need_attn)
        if need_attn and self.encoder_decoder_attention and self.update_rule != "sum":
            raise ValueError(
                "--print-alignment needs attention weights, but this model's encoder-decoder attention is a "
                f"fast weight attention with the {self.update_rule} rule (--fwp-update-rule {self.update_rule}), "
                "whose reads are no weighted sum of the source values. Drop --print-alignment, or use a model "
                "trained with --fwp-update-rule sum, or with softmax cross-attention (--fwp-replace without "
                "cross, e.g. --fwp-replace encoder_self,decoder_self)."
            )
        self.return_attn_weights = need_attn and self.encoder_decoder_attention

    def _cross_attention(
        self, query, key, key_padding_mask, incremental_state, need_weights: bool = False
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Encoder-decoder attention: memory = the source written once, read by every target query.

        During incremental decoding the memory is computed at the first step and kept in
        the incremental state, so each later step costs O(d_dot * d_head) per head.
        With ``need_weights`` (sum rule only) phi(k) of the source is kept as well and the
        linearised weights [H, B, T, S] are returned (else None)."""
        T, B, E = query.shape
        memory, phi_k = None, None
        if incremental_state is not None:
            memory = self._load_state(incremental_state)
            phi_k = self._get_input_buffer(incremental_state).get("phi_k")
        if memory is None:
            if key is None:
                raise ValueError("encoder-decoder fast weight attention needs the encoder output as key")
            k, v, beta = self._keys(self.kv_proj(key), key_padding_mask)
            memory = self.write(k, v, beta)
            if need_weights:
                phi_k = k.permute(1, 2, 0, 3)  # [B, H, S, d_dot]: batch first, as reorder_incremental_state expects
            if incremental_state is not None:
                self._save_state(incremental_state, memory, phi_k=phi_k)
        q = self.phi(self._heads(self.q_proj(query)))
        out = self.out_proj(self.read(q, memory).reshape(T, B, E).to(query.dtype))
        if not need_weights:
            return out, None
        if phi_k is None:
            raise RuntimeError("attention weights were requested after decoding had started without them")
        return out, self.attention_weights(q, phi_k, memory)

    def attention_weights(self, q: Tensor, phi_k: Tensor, memory: FastWeightState) -> Tensor:
        """Sum-rule weights a_ij = phi(q_i) . phi(k_j) [/ (z . phi(q_i) + EPS)], [H, B, T, S], float32.

        q is phi(q) [T, B, H, d_dot], phi_k is phi(k) [B, H, S, d_dot] (0 for padding);
        sum_j a_ij v_j is exactly the read of ``FastWeightMemory.read`` (Eq. 15-16, 19)."""
        qf = q.to(memory.S.dtype)
        a = torch.einsum("tbhd,bhsd->hbts", qf, phi_k.to(qf.dtype))
        if self.attn_norm:
            a = a / (torch.einsum("tbhd,bhd->hbt", qf, memory.z.to(qf.dtype)).unsqueeze(-1) + EPS)
        return a

    def _load_state(self, carrier) -> Optional[FastWeightState]:
        buf = self._get_input_buffer(carrier)
        if "S" not in buf or buf["S"] is None:
            return None
        return FastWeightState(buf["S"], buf.get("z"))

    def _save_state(self, carrier, state: FastWeightState, phi_k: Optional[Tensor] = None) -> None:
        buf = {"S": state.S}
        if state.z is not None:
            buf["z"] = state.z
        if phi_k is not None:
            buf["phi_k"] = phi_k
        self._set_input_buffer(carrier, buf)

    def _get_input_buffer(self, incremental_state) -> Dict[str, Optional[Tensor]]:
        result = self.get_incremental_state(incremental_state, "fast_weight_state")
        return result if result is not None else {}

    def _set_input_buffer(self, incremental_state, buffer: Dict[str, Optional[Tensor]]):
        return self.set_incremental_state(incremental_state, "fast_weight_state", buffer)

    @torch.jit.export
    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        """Reorder (and shrink) the batch of states for beam search: O(state) per step."""
        buf = self._get_input_buffer(incremental_state)
        if buf:
            for name, t in list(buf.items()):
                if t is not None:
                    buf[name] = t.index_select(0, new_order)
            incremental_state = self._set_input_buffer(incremental_state, buf)
        return incremental_state
