"""The NUTS engine's start: each chain's mode search and Laplace whitening."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayescale import engine


def _spiked(height):
    """N(0, 1), except that above 0.5 the density rises without bound: a mode search started
    there climbs away, as one did on a hierarchical card (bayescale/engine.py, START_ATTEMPTS)."""

    def model(height=height):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.factor("spike", jnp.where(x > 0.5, height * (x - 0.5) ** 2, 0.0))

    return model


def _starts(monkeypatch, attempts):
    monkeypatch.setattr(engine, "START_ATTEMPTS", attempts)  # read when the program is traced
    sampler = engine.Sampler(_spiked(1e3), (), engine.Settings(num_chains=8, num_warmup=10, num_samples=10))
    _, (shift, scale) = sampler._start(jax.random.split(jax.random.PRNGKey(0), 8), ())
    return np.asarray(shift)[:, 0], np.asarray(scale)


def test_a_chain_whose_mode_search_runs_off_searches_again(monkeypatch):
    attempts = engine.START_ATTEMPTS
    once, _ = _starts(monkeypatch, 1)
    # Without retries, chains starting in (0.5, 2) (3/8 of uniform(-2, 2) starts) end far up the spike.
    assert np.sum(~(np.abs(once) < 1e-6)) >= 2, once
    shift, scale = _starts(monkeypatch, attempts)
    # With them every chain starts at the mode 0 (Newton is exact on a normal), with unit scale.
    np.testing.assert_allclose(shift, 0.0, atol=1e-6)
    np.testing.assert_allclose(scale.reshape(8), 1.0, rtol=1e-6)
