"""One-layer memory model of the synthetic associative retrieval task (paper Sec. 6.1).

Following the paper and the authors' ``synthetic/`` code:

* key input x_i = [e(k_i); v_i], a learned key embedding e (dim int(2S * 1.1), N(0, 1)
  init) concatenated with the fixed one-hot value v_i in R^S;
* memory key k_i = W_K x_i (d_key), value = the one-hot v_i itself (d_value = S);
* query q = W_Q e(q) from the same key embedding;
* one memory, selected by the ``--fwp-*`` flags: ``--fwp-feature-map softmax`` is
  softmax attention over the sequence (A = softmax(K q / sqrt(d_key))); otherwise the
  fast weight memory (``FastWeightMemory``, the same maths as the Transformers'
  attention): phi of keys and query (optionally sum-normalised, ``--fwp-sum-norm``),
  the whole sequence written with the sum rule (Eq. 15-16, closed form) or the delta
  rule (write strength beta_i = sigmoid(W_beta x_i)), then one read with phi(q),
  attention-normalised with ``--fwp-attn-norm``;
* ``--fwm`` (with ``--fwp-update-rule delta``): the Fast Weight Memory update of
  Schlag et al. (2021) ported as in the authors' code ("Schlag (2021) with DPFP" in
  Fig. 3): delta-rule writes without normalisation, after every write W is scaled
  down to Frobenius norm <= 1, and the read is layer-normalised (no affine).

The authors' configurations: "sum" = sum rule with attention normalisation
(``--fwp-attn-norm``); "ours" = delta rule with sum normalisation (``--fwp-sum-norm``).
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fairseq.models import BaseFairseqModel, register_model
from fwp_kernels import FastWeightState

from ..config import FwpAttentionConfig, check_dpfp_nu, warn_delta_without_sum_norm
from ..modules.fast_weight_memory import FastWeightMemory


@dataclass
class FwpRetrievalConfig(FwpAttentionConfig):
    fwm: bool = field(
        default=False,
        metadata={"help": "use the FWM update of Schlag et al. (2021) instead of the plain delta rule: "
                  "W bounded to Frobenius norm <= 1 after every write, layer-normalised read "
                  "(needs --fwp-update-rule delta; no --fwp-sum-norm/--fwp-attn-norm)"},
    )


def key_embed_dim(num_keys: int) -> int:
    """The authors' embedding size int((n_keys + n_values) * 1.1) with n_values = n_keys."""
    return int(2 * num_keys * 1.1)


@register_model("fwp_retrieval", dataclass=FwpRetrievalConfig)
class FwpRetrievalModel(BaseFairseqModel):
    """forward(keys [B, L], values [B, L], query [B]) -> retrieved value y [B, S]."""

    def __init__(self, fwp: FwpAttentionConfig, num_keys: int, d_key: int, fwm: bool = False):
        super().__init__()
        fwp.validate()
        self.num_keys, self.d_key = num_keys, d_key
        self.kind = str(fwp.fwp_feature_map)
        self.update_rule = str(fwp.fwp_update_rule)
        self.sum_norm, self.attn_norm = bool(fwp.fwp_sum_norm), bool(fwp.fwp_attn_norm)
        self.fwm = bool(fwm)
        if self.kind == "softmax" and (self.sum_norm or self.attn_norm):
            raise ValueError("--fwp-sum-norm / --fwp-attn-norm normalise a fast weight memory: "
                             "softmax attention (--fwp-feature-map softmax) takes neither")
        if self.fwm and (self.update_rule != "delta" or self.sum_norm or self.attn_norm):
            raise ValueError("--fwm is the FWM variant of the delta rule: use it with --fwp-update-rule delta "
                             "and without --fwp-sum-norm / --fwp-attn-norm")
        e = key_embed_dim(num_keys)
        self.key_embed = nn.Embedding(num_keys, e)
        self.register_buffer("value_vectors", torch.eye(num_keys), persistent=False)  # fixed one-hot values
        self.W_k = nn.Linear(e + num_keys, d_key)
        self.W_q = nn.Linear(e, d_key)
        self.W_b = nn.Linear(e + num_keys, 1) if self.update_rule == "delta" else None
        self.memory_layer = None  # the fast weight memory (phi, write, read), shared with the Transformers
        if self.kind == "dpfp":
            check_dpfp_nu(fwp.fwp_dpfp_nu, d_key)
        if self.kind != "softmax" and not self.fwm:
            warn_delta_without_sum_norm(self.update_rule, self.sum_norm)
        if self.kind != "softmax":
            self.memory_layer = FastWeightMemory(
                d_key, feature_map=self.kind, update_rule=self.update_rule, sum_norm=self.sum_norm,
                attn_norm=self.attn_norm, dpfp_nu=int(fwp.fwp_dpfp_nu), favor_features=int(fwp.fwp_favor_features),
            )
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.key_embed.weight, 0.0, 1.0)
        if self.kind == "softmax":
            nn.init.xavier_uniform_(self.W_k.weight)
            nn.init.xavier_uniform_(self.W_q.weight)
        else:  # the authors' init of the linearised models
            u = 1.0 / math.sqrt(self.d_key)
            nn.init.uniform_(self.W_k.weight, -u, u)
            nn.init.uniform_(self.W_q.weight, -u, u)

    @classmethod
    def build_model(cls, cfg, task):
        fwp = FwpAttentionConfig.from_args(cfg)
        return cls(fwp, int(task.cfg.num_keys), int(task.cfg.d_key), fwm=bool(getattr(cfg, "fwm", False)))

    @property
    def d_dot(self) -> int:
        """Size of phi's output (the memory is d_dot x S); L for softmax (one slot per pair)."""
        return self.memory_layer.d_dot if self.memory_layer is not None else -1

    def extra_repr(self) -> str:
        rule = "fwm" if self.fwm else self.update_rule
        return (f"S={self.num_keys}, d_key={self.d_key}, memory={self.kind}, rule={rule}, "
                f"sum_norm={self.sum_norm}, attn_norm={self.attn_norm}")

    # ------------------------------------------------------------------ pieces
    def _inputs(self, keys: Tensor, values: Tensor):
        v = self.value_vectors[values]  # [B, L, S]
        x = torch.cat([self.key_embed(keys), v], -1)  # [B, L, e + S]
        return x, v

    def memory(self, keys: Tensor, values: Tensor) -> FastWeightState:
        """Write the sequence into a fresh fast weight; S [B, 1, d_dot, S] (+ z with attn norm)."""
        if self.memory_layer is None:
            raise ValueError("softmax attention has no fast weight memory")
        x, v = self._inputs(keys, values)
        k = self.memory_layer.phi(self.W_k(x)).transpose(0, 1).unsqueeze(2)  # [L, B, 1, d_dot]
        v = v.transpose(0, 1).unsqueeze(2)  # [L, B, 1, S]
        beta = None
        if self.W_b is not None:
            beta = torch.sigmoid(self.W_b(x).float()).squeeze(-1).transpose(0, 1).unsqueeze(2)  # [L, B, 1]
        if self.fwm:
            return self._fwm_write(k, v, beta)
        return self.memory_layer.write(k, v, beta)

    @staticmethod
    def _fwm_write(k: Tensor, v: Tensor, beta: Tensor) -> FastWeightState:
        """Schlag et al. (2021) as in the authors' port: delta write, then W <- W / max(1, ||W||_F)."""
        L, B = k.shape[:2]
        S = k.new_zeros(B, k.shape[-1], v.shape[-1], dtype=torch.float32)  # W^T per batch item
        for i in range(L):
            k_i, v_i, b_i = k[i, :, 0].float(), v[i, :, 0].float(), beta[i, :, 0].float()
            vbar = torch.einsum("bkv,bk->bv", S, k_i)
            S = S + torch.einsum("bk,bv->bkv", k_i, b_i[:, None] * (v_i - vbar))
            S = S / (F.relu(S.flatten(1).norm(dim=-1) - 1.0) + 1.0)[:, None, None]
        return FastWeightState(S.unsqueeze(1), None)

    def read(self, state: FastWeightState, query: Tensor) -> Tensor:
        """y = W phi(q) [/ z . phi(q)] (Eq. 19/25/28); layer-normalised for --fwm."""
        q = self.memory_layer.phi(self.W_q(self.key_embed(query)))  # [B, d_dot]
        y = self.memory_layer.read(q.unsqueeze(1), state).squeeze(1)  # one head
        if self.fwm:
            y = F.layer_norm(y, (y.shape[-1],))
        return y

    def softmax_read(self, keys: Tensor, values: Tensor, query: Tensor) -> Tensor:
        x, v = self._inputs(keys, values)
        k = self.W_k(x)  # [B, L, d_key]
        q = self.W_q(self.key_embed(query))  # [B, d_key]
        a = torch.softmax(torch.einsum("bld,bd->bl", k, q) / math.sqrt(self.d_key), dim=-1)
        return torch.einsum("bl,blv->bv", a, v)

    def forward(self, keys: Tensor, values: Tensor, query: Tensor) -> Tensor:
        if self.memory_layer is None:
            return self.softmax_read(keys, values, query)
        if self.training:
            self.memory_layer.feature_map.redraw()  # FAVOR+: new random features every training forward
        return self.read(self.memory(keys, values), query)

    def max_positions(self):
        return None
