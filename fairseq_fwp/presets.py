"""The paper's model settings as ``--fwp-*`` flags: one table for every recipe, the demo and
the benchmarks (Schlag, Irie & Schmidhuber 2021, "Linear Transformers Are Secretly Fast
Weight Programmers").

A model is a feature map phi (Sec. 5) and an update rule with its normalisation
(Sec. 3-4). ``flags(phi, rule)`` writes the two in that order::

    flags("linear", "sum")            # Linear Transformer
    flags("linear", "delta")          # Delta Net
    flags("favor", "sum", m=64)       # Performer, m random features
    flags("dpfp", "sum", nu=2)        # DPFP, nu rolls
    flags("softmax")                  # the softmax baseline (no fast weights)

``PRESETS`` names the settings the recipes share (with a label for tables);
:func:`lmtool_flags` is the language-model variant of the authors' code, which always
sum-normalises and switches the attention normalisation separately (WikiText-103).

Nothing here imports torch or fairseq beyond the package itself: the flags are plain strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

FEATURE_MAPS = ("softmax", "linear", "favor", "dpfp")


@dataclass(frozen=True)
class UpdateRule:
    """An update rule with its normalisation flags."""

    name: str
    flags: Tuple[str, ...]
    doc: str


RULES: Dict[str, UpdateRule] = {r.name: r for r in (
    UpdateRule("sum", ("--fwp-update-rule", "sum", "--fwp-attn-norm"),
               "Linear Transformer: purely additive outer products (Eq. 17), reads divided by "
               "z.phi(q) (attention normalisation, Eq. 18-19)"),
    UpdateRule("delta", ("--fwp-update-rule", "delta", "--fwp-sum-norm"),
               "Delta Net: the delta rule with a learned write strength beta (Eq. 20-25) and sum "
               "normalisation of phi(k), phi(q) (Eq. 29)"),
    UpdateRule("delta-nosn", ("--fwp-update-rule", "delta"),
               "the delta rule (Eq. 20-25) without sum normalisation (the synthetic task's "
               "ablation, Fig. 3)"),
    UpdateRule("fwm", ("--fwp-update-rule", "delta", "--fwm"),
               "the Fast Weight Memory update of Schlag et al. (2021) (synthetic task only, "
               "fwp_retrieval's --fwm; Fig. 3)"),
)}


def feature_map_flags(phi: str, *, m: Optional[int] = None, nu: Optional[int] = None) -> List[str]:
    """``--fwp-feature-map phi`` and its size: FAVOR+ m random features (Eq. 31-32,
    d_dot = 2m), DPFP nu rolls (Eq. 37, d_dot = 2 nu d_key); elu+1 (``linear``) has
    d_dot = d_key; ``softmax`` is fairseq's own attention."""
    if phi not in FEATURE_MAPS:
        raise ValueError(f"unknown feature map {phi!r}; valid: {', '.join(FEATURE_MAPS)}")
    out = ["--fwp-feature-map", phi]
    if phi == "favor":
        if m is None:
            raise ValueError("favor needs m (number of random features)")
        out += ["--fwp-favor-features", str(m)]
    elif phi == "dpfp":
        if nu is None:
            raise ValueError("dpfp needs nu")
        out += ["--fwp-dpfp-nu", str(nu)]
    return out


def flags(phi: str, rule: Optional[str] = None, *, m: Optional[int] = None,
          nu: Optional[int] = None) -> List[str]:
    """The flags of feature map ``phi`` with update ``rule`` (one of ``RULES``; none for
    softmax, which has no fast weights)."""
    if (phi == "softmax") != (rule is None):
        raise ValueError("softmax takes no update rule; every other feature map needs one")
    return feature_map_flags(phi, m=m, nu=nu) + (list(RULES[rule].flags) if rule else [])


def lmtool_flags(phi: str, rule: str = "sum", *, attn_norm: bool, m: Optional[int] = None,
                 nu: Optional[int] = None) -> List[str]:
    """The language-model setting of the authors' code (IDSIA/lmtool-fwp, Sec. 6.3): phi(k)
    and phi(q) always sum-normalised (Eq. 29, "the models diverged otherwise"), attention
    normalisation (Eq. 18-19) switched on its own (Table 3); softmax is the baseline."""
    out = ["--fwp-feature-map", phi]
    if phi == "softmax":
        return out
    out += ["--fwp-update-rule", rule, "--fwp-sum-norm"]
    if attn_norm:
        out.append("--fwp-attn-norm")
    if phi == "favor":
        out += ["--fwp-favor-features", str(m)]
    if phi == "dpfp":
        out += ["--fwp-dpfp-nu", str(nu)]
    return out


@dataclass(frozen=True)
class Preset:
    """A named model of the paper: its label in tables and its flags."""

    name: str
    label: str
    phi: str
    rule: Optional[str] = None

    def flags(self, *, m: Optional[int] = None, nu: Optional[int] = None) -> List[str]:
        return flags(self.phi, self.rule, m=m, nu=nu)


PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("softmax", "Softmax (baseline)", "softmax"),
    Preset("linear", "Linear Transformer", "linear", "sum"),  # Eq. 17-19
    Preset("delta", "Delta Net", "linear", "delta"),  # Eq. 20-25 and 29
    Preset("performer", "Performer", "favor", "sum"),  # FAVOR+, Eq. 31-32; m given
    Preset("dpfp", "DPFP", "dpfp", "sum"),  # Eq. 37; nu given
)}


def preset(name: str, *, m: Optional[int] = None, nu: Optional[int] = None) -> List[str]:
    """The flags of the named preset (``m`` for ``performer``, ``nu`` for ``dpfp``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name].flags(m=m, nu=nu)
