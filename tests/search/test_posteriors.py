"""Posterior updates and seeded draws against hand-computed values."""

import json

import numpy as np
import pytest

from trl_mars.search.posteriors import BetaPosterior, GaussianPosterior, make_posterior, posterior_from_dict


def test_beta_jeffreys_update_and_draw():
    p = BetaPosterior()
    assert (p.a, p.b) == (0.5, 0.5)
    for r in (1.0, 0.0, 0.5):
        p.update(r)
    assert (p.a, p.b, p.n) == (2.0, 2.0, 3)
    assert p.sample(np.random.default_rng(7)) == np.random.default_rng(7).beta(2.0, 2.0)
    draws = [p.sample(np.random.default_rng(s)) for s in range(4000)]
    assert abs(np.mean(draws) - 0.5) < 0.02


def test_gaussian_nig_posterior_matches_hand_computation():
    p = GaussianPosterior()
    assert p.params() == (0.0, 1.0, 1.0, 0.1)
    p.update(1.0)
    p.update(0.0)
    m, kappa, nu, tau2 = p.params()
    # n=2, mean=0.5, S=0.5: kappa'=3, nu'=3, m'=1/3, tau2'=(0.1 + 0.5 + 2*1*0.25/3)/3
    assert (kappa, nu) == (3.0, 3.0)
    assert m == pytest.approx(1 / 3)
    assert tau2 == pytest.approx((0.1 + 0.5 + 0.5 / 3) / 3)
    rng = np.random.default_rng(3)
    sigma2 = 1.0 / rng.gamma(1.5, 2.0 / (3 * tau2))
    expected = rng.normal(1 / 3, np.sqrt(sigma2 / 3))
    assert p.sample(np.random.default_rng(3)) == pytest.approx(expected)


def test_posteriors_roundtrip_json():
    for dist in ("beta", "gaussian"):
        p = make_posterior(dist)
        p.update(1.0)
        q = posterior_from_dict(json.loads(json.dumps(p.to_dict())))
        assert q == p and q.sample(np.random.default_rng(0)) == p.sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="beta"):
        make_posterior("uniform")
