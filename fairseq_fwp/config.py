"""The ``--fwp-*`` options shared by every fairseq-fwp model (one dataclass, one parser),
and the checks that need to know the model: which attentions it has (``--fwp-replace``),
its head size d_key (``--fwp-dpfp-nu``), and the build-time warning for the delta rule
without sum normalisation."""

import logging
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Sequence, Tuple

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.utils import safe_getattr

FEATURE_MAPS = ("softmax", "linear", "favor", "dpfp")
UPDATE_RULES = ("sum", "delta")
ATTENTIONS = ("encoder_self", "decoder_self", "cross")
# The --fwp-replace default: every attention the model has (also how a language model,
# which only has decoder_self, reads the full list, e.g. in checkpoints written before
# fwp_lm had its own default).
ALL_ATTENTIONS = ",".join(ATTENTIONS)

logger = logging.getLogger(__name__)
_WARNED = set()  # messages already logged by warn_once (once per process)


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time it is seen in this process."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def max_dpfp_nu(d_key: int) -> int:
    """Largest DPFP nu whose 2*nu*d_key features are all distinct and not identically zero.

    DPFP (Eq. 37) multiplies x' = [relu(x); relu(-x)] (n = 2*d_key entries) with its
    roll by j = 1..nu, so roll j gives the products x'_i x'_{i-j}: the unordered pairs at
    cyclic distance min(j, n - j). Rolls j and n - j give the same pairs (duplicated
    columns), and j = d_key pairs relu(x_i) with relu(-x_i), which is identically 0.
    So rolls 1..d_key-1 are the only ones that add new, non-zero features."""
    return int(d_key) - 1


def dpfp_distinct_columns(nu: int, d_key: int) -> int:
    """Number of distinct columns (as functions of x) among DPFP-nu's 2*nu*d_key features;
    the all-zero column of roll j = d_key counts once. See :func:`max_dpfp_nu`."""
    n = 2 * int(d_key)
    distances = {min(j % n, n - j % n) for j in range(1, int(nu) + 1)}
    # distance 0 (j a multiple of n) gives the squares x'_i^2: n new columns
    return sum(1 if dist == d_key else n for dist in distances)


def check_dpfp_nu(nu: int, d_key: int) -> None:
    """Refuse a ``--fwp-dpfp-nu`` whose features repeat at head size ``d_key``."""
    nu, d_key = int(nu), int(d_key)
    top = max_dpfp_nu(d_key)
    if top < 1:
        raise ValueError(
            f"--fwp-feature-map dpfp needs a head size d_key >= 2, got d_key {d_key}: with one key "
            f"dimension DPFP's only product relu(x)*relu(-x) is always 0; use fewer attention heads "
            f"or another feature map"
        )
    if nu > top:
        raise ValueError(
            f"--fwp-dpfp-nu {nu} is too large for head size d_key {d_key}: rolls beyond "
            f"d_key - 1 = {top} only repeat features (roll d_key is identically 0, roll j > d_key "
            f"duplicates roll 2*d_key - j; {dpfp_distinct_columns(nu, d_key)} distinct of "
            f"d_dot = {2 * nu * d_key} columns); the largest meaningful value is --fwp-dpfp-nu {top} "
            f"(d_dot = {2 * top * d_key}), or use fewer attention heads for a larger d_key"
        )


def warn_delta_without_sum_norm(update_rule: str, sum_norm: bool) -> None:
    """Warn (once per process) that the delta rule without ``--fwp-sum-norm`` diverges.

    The delta update W <- W (I - beta phi(k) phi(k)^T) + beta v phi(k)^T is non-expansive
    only while beta * |phi(k)|^2 <= 2; sum normalisation (Eq. 29) keeps |phi(k)|_2 <= 1.
    Without it |phi(k)|^2 grows with d_dot and the fast weights blow up (the paper,
    Sec. 6.3: "the models diverged otherwise"). Still allowed, for ablations."""
    if str(update_rule) == "delta" and not sum_norm:
        warn_once(
            "--fwp-update-rule delta without --fwp-sum-norm: the delta update is only stable when "
            "phi(k) is sum-normalised (Eq. 29, which keeps beta*|phi(k)|^2 <= 1); otherwise |phi(k)|^2 "
            "grows with d_dot, the update amplifies the fast weights at every step and training diverges "
            "to NaN, soonest on long sequences (the paper, Sec. 6.3: 'the models diverged otherwise'). "
            "Add --fwp-sum-norm unless this is a deliberate ablation."
        )


@dataclass
class FwpAttentionConfig(FairseqDataclass):
    """Which fast weight attention replaces fairseq's softmax attention (paper Sec. 3-5)."""

    fwp_feature_map: ChoiceEnum(FEATURE_MAPS) = field(
        default="linear",
        metadata={
            "help": "feature map phi of the linearised attention (Sec. 5): "
            "softmax = fairseq's standard attention (baseline); linear = elu(x)+1 "
            "(Katharopoulos et al., d_dot = d_key); favor = FAVOR+ random features "
            "(Eq. 31-32, d_dot = 2m); dpfp = deterministic parameter-free projection "
            "(Eq. 37, d_dot = 2*nu*d_key)"
        },
    )
    fwp_update_rule: ChoiceEnum(UPDATE_RULES) = field(
        default="sum",
        metadata={
            "help": "fast weight update rule: sum = purely additive outer products "
            "(linear Transformer, Eq. 17); delta = delta rule with a learned write "
            "strength beta = sigmoid(W_beta x) per head and position (Eq. 20-25)"
        },
    )
    fwp_sum_norm: bool = field(
        default=False,
        metadata={"help": "sum normalisation phi(x)/sum_j phi(x)_j of keys and queries (Eq. 29)"},
    )
    fwp_attn_norm: bool = field(
        default=False,
        metadata={
            "help": "attention normalisation: divide reads by z.phi(q) with z = sum of "
            "phi(k) (Eq. 18-19; for the delta rule also the retrieved value, Eq. 26-28)"
        },
    )
    fwp_dpfp_nu: int = field(
        default=1, metadata={"help": "DPFP nu >= 1: number of rolls, d_dot = 2*nu*d_key (Eq. 37)"}
    )
    fwp_favor_features: int = field(
        default=64,
        metadata={"help": "FAVOR+ number of random features m >= 1, d_dot = 2m (Eq. 31-32)"},
    )
    fwp_replace: str = field(
        default=ALL_ATTENTIONS,
        metadata={
            "help": "comma-separated attentions that use the fast weight attention: any "
            "of encoder_self, decoder_self, cross that the model has (the others stay "
            "softmax; the full list means all of them); language models only have decoder_self"
        },
    )

    @classmethod
    def from_args(cls, args, available: Sequence[str] = ATTENTIONS) -> "FwpAttentionConfig":
        """Read the ``fwp_*`` options from a Namespace/DictConfig/TransformerConfig and validate
        them for a model whose attentions are ``available``."""
        cfg = cls()
        for f in fields(cls):
            value = safe_getattr(args, f.name, None)
            if value is not None:
                setattr(cfg, f.name, value)
        cfg.validate(available)
        return cfg

    def validate(self, available: Sequence[str] = ATTENTIONS) -> None:
        """Raise ValueError naming the flag for any invalid setting (``available``: the
        attentions the model has, for ``--fwp-replace``)."""
        fm = str(self.fwp_feature_map)
        if fm not in FEATURE_MAPS:
            raise ValueError(f"--fwp-feature-map: unknown feature map {fm!r}; valid: {', '.join(FEATURE_MAPS)}")
        rule = str(self.fwp_update_rule)
        if rule not in UPDATE_RULES:
            raise ValueError(f"--fwp-update-rule: unknown update rule {rule!r}; valid: {', '.join(UPDATE_RULES)}")
        if fm == "softmax" and rule != "sum":
            raise ValueError(
                "--fwp-update-rule delta needs a linearised attention: --fwp-feature-map softmax "
                "has no fast weights; use linear, favor or dpfp"
            )
        if int(self.fwp_dpfp_nu) < 1:
            raise ValueError(f"--fwp-dpfp-nu must be an integer >= 1 (d_dot = 2*nu*d_key), got {self.fwp_dpfp_nu}")
        if int(self.fwp_favor_features) < 1:
            raise ValueError(
                f"--fwp-favor-features must be an integer >= 1 (m random features, d_dot = 2m), got {self.fwp_favor_features}"
            )
        self.replaced_attentions(available)

    def replaced_attentions(self, available: Sequence[str] = ATTENTIONS) -> Tuple[str, ...]:
        """The attentions named by ``--fwp-replace``, for a model whose attentions are
        ``available`` (a subset of ATTENTIONS). The full list ALL_ATTENTIONS (the default)
        means every available attention. With a linearised feature map an empty list, or a
        name the model does not have, is refused: the model would silently keep softmax
        attention there. (With ``--fwp-feature-map softmax`` nothing is replaced anyway.)"""
        available = tuple(available)
        parts = tuple(p.strip() for p in str(self.fwp_replace).split(",") if p.strip())
        bad = [p for p in parts if p not in ATTENTIONS]
        if bad:
            raise ValueError(
                f"--fwp-replace: unknown attention(s) {', '.join(bad)}; valid: comma-separated "
                f"subset of {', '.join(available)}"
            )
        if set(parts) == set(ATTENTIONS):
            return available
        if str(self.fwp_feature_map) == "softmax":
            return parts
        if not parts:
            raise ValueError(
                f"--fwp-replace is empty: no attention would use --fwp-feature-map "
                f"{self.fwp_feature_map} and the model would be a plain softmax Transformer; name at "
                f"least one of {', '.join(available)} (for the softmax baseline use --fwp-feature-map softmax)"
            )
        missing = [p for p in parts if p not in available]
        if missing:
            raise ValueError(
                f"--fwp-replace {self.fwp_replace}: this model has no {', '.join(missing)} attention; "
                f"it has {', '.join(available)}"
            )
        return parts

    def replaces(self, which: str) -> bool:
        """True when attention ``which`` (encoder_self, decoder_self, cross) is a fast weight one."""
        return str(self.fwp_feature_map) != "softmax" and which in self.replaced_attentions()

    def fill_namespace(self, args) -> None:
        """Write the resolved values back so that checkpoints store them explicitly."""
        for f in fields(self):
            value = getattr(self, f.name)
            setattr(args, f.name, str(value) if isinstance(value, Enum) else value)
