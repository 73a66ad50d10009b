"""Feature maps phi: R^d_key -> R^d_dot that linearise attention (paper Sec. 5).

Each is a small module behind one interface: ``d_dot`` (output size), ``forward(x)``
(phi), ``sum_normalized(x)`` (Eq. 29) and ``redraw()`` (new random features; only
FAVOR+ has any). Feature maps compute in float32 (float64 inputs: float64, so a float64
model is float64 throughout and can serve as a reference).

Random features are drawn once per training forward of a *model*, never inside an
attention: the fairseq encoder and decoder call :func:`redraw_features` on themselves
at the top of their training forward, so every call of a layer within that forward
(including the recomputation of a ``--checkpoint-activations`` layer in the backward
pass) sees the same features.
"""

import math
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from fwp_kernels.state import EPS, acc_dtype


class FeatureMap(nn.Module):
    """phi: R^d_key -> R^d_dot, kappa'(k, q) = phi(k) . phi(q) (Sec. 3.2)."""

    def __init__(self, d_key: int):
        super().__init__()
        self.d_key = d_key

    @property
    def d_dot(self) -> int:
        raise NotImplementedError

    def sum_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Sum normalisation phi'(x) = phi(x) / sum_j phi(x)_j (Eq. 29)."""
        phi = self(x)
        return phi / (phi.sum(-1, keepdim=True) + EPS)

    def redraw(self) -> None:
        """Draw new random features (once per training forward, see :func:`redraw_features`); no-op by default."""

    def extra_repr(self) -> str:
        return f"d_key={self.d_key}, d_dot={self.d_dot}"


class EluPlusOne(FeatureMap):
    """Linear Transformer map phi(x) = elu(x) + 1 (Katharopoulos et al. 2020), d_dot = d_key."""

    @property
    def d_dot(self) -> int:
        return self.d_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x.to(acc_dtype(x.dtype))) + 1.0


class Dpfp(FeatureMap):
    """DPFP-nu (Eq. 37): x' = [relu(x), relu(-x)], phi = concat_{j=1..nu} x' * roll(x', j); d_dot = 2 nu d_key."""

    def __init__(self, d_key: int, nu: int = 1):
        if nu < 1:
            raise ValueError(f"--fwp-dpfp-nu must be >= 1, got {nu}")
        super().__init__(d_key)
        self.nu = nu

    @property
    def d_dot(self) -> int:
        return 2 * self.nu * self.d_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(acc_dtype(x.dtype))
        xp = torch.cat([F.relu(x), F.relu(-x)], -1)
        return torch.cat([xp * xp.roll(j, dims=-1) for j in range(1, self.nu + 1)], -1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nu={self.nu}"


class Favor(FeatureMap):
    """FAVOR+ (Eq. 31-32): phi(x) = exp(-|x|^2/2) / sqrt(2m) [exp(Rx), exp(-Rx)], d_dot = 2m.

    R (m x d_key) holds orthogonal Gaussian random features. They are redrawn once per
    training forward of the model (:func:`redraw_features`) and fixed at evaluation; R
    is a persistent buffer, so a checkpoint restores exactly the features validation
    used. Draws come from a private generator seeded by (``seed``, ``draws``), so every
    distributed rank draws the same R and a resumed run continues the same sequence of
    draws. ``seed``, ``draws`` and ``features`` are copied, never averaged, by EMA and
    checkpoint averaging (:func:`unaveraged_state_keys`).
    """

    def __init__(self, d_key: int, m: int = 64, seed: int = 0):
        if m < 1:
            raise ValueError(f"--fwp-favor-features must be >= 1, got {m}")
        super().__init__(d_key)
        self.m = m
        self.register_buffer("seed", torch.tensor(int(seed), dtype=torch.long))
        self.register_buffer("draws", torch.tensor(0, dtype=torch.long))
        self.register_buffer("features", self._draw(0))

    @property
    def d_dot(self) -> int:
        return 2 * self.m

    def _draw(self, index: int) -> torch.Tensor:
        """Orthogonal random features: blocks of Q from QR of Gaussians, rows rescaled to chi norms."""
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + index)
        d, m = self.d_key, self.m
        blocks = []
        for _ in range(math.ceil(m / d)):
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
            blocks.append(q.t())
        rows = torch.cat(blocks, 0)[:m]
        norms = torch.randn(m, d, generator=g).norm(dim=1, keepdim=True)
        return rows * norms

    def redraw(self) -> None:
        self.draws += 1
        self.features.copy_(self._draw(int(self.draws)).to(self.features.device))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(acc_dtype(x.dtype))
        proj = x @ self.features.to(x.dtype).t()  # the buffer is half after model.half() (--fp16)
        base = -0.5 * (x * x).sum(-1, keepdim=True) - 0.5 * math.log(2 * self.m)
        return torch.cat([proj, -proj], -1) + base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self._logits(x))

    def sum_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 29 computed stably: phi is exp(logits), so phi / sum(phi) = softmax(logits)."""
        return torch.softmax(self._logits(x), -1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", m={self.m}"


def redraw_features(module: nn.Module) -> None:
    """Redraw the random features of every feature map in ``module`` (FAVOR+; others have none).

    Called once per training forward of a model (our fairseq encoder and decoder do it
    themselves). Code that uses ``FastWeightAttention`` outside them calls it at the top
    of its own training forward."""
    for m in module.modules():
        if isinstance(m, FeatureMap):
            m.redraw()


def unaveraged_state_keys(module: nn.Module, prefix: str = "") -> List[str]:
    """State-dict keys of ``module`` that must be copied, not averaged, by EMA or checkpoint
    averaging: every feature map's buffers (FAVOR+'s ``seed``, ``draws`` and ``features``).
    An average of independent random draws is not a draw, and seed/counter are integers."""
    keys = []
    for name, m in module.named_modules(prefix=prefix.rstrip(".")):
        if isinstance(m, FeatureMap):
            keys += [f"{name}.{b}" if name else b for b, _ in m.named_buffers(recurse=False)]
    return keys


FEATURE_MAP_CLASSES = {"linear": EluPlusOne, "favor": Favor, "dpfp": Dpfp}


def build_feature_map(name: str, d_key: int, *, dpfp_nu: int = 1, favor_features: int = 64) -> FeatureMap:
    """Build phi by its ``--fwp-feature-map`` name."""
    if name == "linear":
        return EluPlusOne(d_key)
    if name == "dpfp":
        return Dpfp(d_key, dpfp_nu)
    if name == "favor":
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # same on every rank: model init is seeded
        return Favor(d_key, favor_features, seed=seed)
    raise ValueError(f"--fwp-feature-map: unknown feature map {name!r}; valid: {', '.join(FEATURE_MAP_CLASSES)}")
