"""The NUTS engine's start: each chain's mode search and Laplace whitening."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayescale import engine


def _spiked():
    """N(0, 1), except that above 0.5 the density rises without bound: a mode search started
    there climbs away, as one did on a hierarchical card (bayescale/engine.py, START_ATTEMPTS)."""
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.factor("spike", jnp.where(x > 0.5, 1e3 * (x - 0.5) ** 2, 0.0))


def test_a_chain_whose_mode_search_runs_off_searches_again(monkeypatch):
    sampler = engine.Sampler(_spiked, (), engine.Settings(num_chains=8, num_warmup=10, num_samples=10))
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    attempts = engine.START_ATTEMPTS
    monkeypatch.setattr(engine, "START_ATTEMPTS", 1)
    _, (once, _) = sampler._started(keys, ())
    # Without retries, chains starting in (0.5, 2) (3/8 of uniform(-2, 2) starts) end far up the spike.
    assert np.sum(~(np.abs(np.asarray(once)[:, 0]) < 1e-6)) >= 2, once
    monkeypatch.setattr(engine, "START_ATTEMPTS", attempts)
    _, (shift, scale) = sampler._started(keys, ())
    # With them every chain starts at the mode 0 (Newton is exact on a normal), with unit scale;
    # chains that started well keep their start.
    np.testing.assert_allclose(np.asarray(shift)[:, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(scale).reshape(8), 1.0, rtol=1e-6)
    good = np.abs(np.asarray(once)[:, 0]) < 1e-6
    np.testing.assert_array_equal(np.asarray(shift)[good], np.asarray(once)[good])
