"""Thompson-sampling posteriors for AB-MCTS-A: Beta (paper) and Normal-Inverse-Gamma (authors' code).

Both keep only sufficient statistics, draw with a caller-owned ``numpy.random.Generator`` (so a run is
reproducible and resumable) and serialise to plain dicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import numpy as np

DistType = Literal["beta", "gaussian"]


class Posterior(Protocol):
    n: int

    def update(self, reward: float) -> None: ...

    def sample(self, rng: np.random.Generator) -> float: ...

    def to_dict(self) -> dict: ...


@dataclass
class BetaPosterior:
    """Beta(a, b) with the Jeffreys prior a = b = 1/2; a reward r in [0, 1] adds r to a and 1 - r to b."""

    a: float = 0.5
    b: float = 0.5
    n: int = 0

    def update(self, reward: float) -> None:
        r = min(max(float(reward), 0.0), 1.0)
        self.a += r
        self.b += 1.0 - r
        self.n += 1

    def mean(self) -> float:
        return self.a / (self.a + self.b)

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.beta(self.a, self.b))

    def to_dict(self) -> dict:
        return {"dist": "beta", **asdict(self)}


@dataclass
class GaussianPosterior:
    """Normal-Inverse-Gamma posterior over the mean reward, prior (m, kappa, nu, tau2) = (0, 1, 1, 0.1).

    After n rewards with mean x̄ and sum of squared deviations S:
    kappa' = kappa + n, nu' = nu + n, m' = (kappa m + n x̄) / kappa',
    tau2' = (nu tau2 + S + n kappa (m - x̄)^2 / kappa') / nu'.
    A draw is sigma^2 ~ InvGamma(nu'/2, nu' tau2'/2), then mu ~ N(m', sigma^2 / kappa').
    """

    m: float = 0.0
    kappa: float = 1.0
    nu: float = 1.0
    tau2: float = 0.1
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def update(self, reward: float) -> None:
        self.n += 1
        self.total += float(reward)
        self.total_sq += float(reward) ** 2

    def params(self) -> tuple[float, float, float, float]:
        """Posterior (m', kappa', nu', tau2')."""
        if self.n == 0:
            return self.m, self.kappa, self.nu, self.tau2
        mean = self.total / self.n
        ss = max(self.total_sq - self.n * mean**2, 0.0)
        kappa = self.kappa + self.n
        nu = self.nu + self.n
        m = (self.kappa * self.m + self.n * mean) / kappa
        tau2 = (self.nu * self.tau2 + ss + self.n * self.kappa * (self.m - mean) ** 2 / kappa) / nu
        return m, kappa, nu, tau2

    def mean(self) -> float:
        return self.params()[0]

    def sample(self, rng: np.random.Generator) -> float:
        m, kappa, nu, tau2 = self.params()
        sigma2 = 1.0 / rng.gamma(nu / 2.0, 2.0 / (nu * tau2))  # InvGamma(nu/2, nu tau2/2)
        return float(rng.normal(m, np.sqrt(sigma2 / kappa)))

    def to_dict(self) -> dict:
        return {"dist": "gaussian", **asdict(self)}


def make_posterior(dist: DistType) -> BetaPosterior | GaussianPosterior:
    """A fresh posterior with the prior of ``dist``."""
    if dist == "beta":
        return BetaPosterior()
    if dist == "gaussian":
        return GaussianPosterior()
    raise ValueError(f"posterior dist must be 'beta' or 'gaussian', got {dist!r}")


def posterior_from_dict(data: dict) -> BetaPosterior | GaussianPosterior:
    fields = {k: v for k, v in data.items() if k != "dist"}
    return BetaPosterior(**fields) if data["dist"] == "beta" else GaussianPosterior(**fields)
