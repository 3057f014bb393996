"""Shared fixtures. One small fit is made once per session and reused, because JAX
compilation dominates test time on 2 cores."""

import warnings

import jax
import numpy as np
import pytest

import bayescale as bs

# Strict JAX (as in Optimistix's tests): an N x D broadcast that silently promotes ranks is a bug.
jax.config.update("jax_numpy_rank_promotion", "raise")

#: A Chinchilla truth close to Epoch AI's fit (Besiroglu et al. 2024), at centre zero.
CHINCHILLA_TRUTH = {"e": np.log(1.8), "a_c": np.log(480.0), "alpha": 0.34, "b_c": np.log(2000.0), "beta": 0.36}
#: The same truth on the published scale.
CHINCHILLA_NATURAL = {"E": 1.8, "A": 480.0, "alpha": 0.34, "B": 2000.0, "beta": 0.36}


def chinchilla_grid(sizes=6, ratios=(4.0, 16.0, 64.0), low=3e7, high=3e9):
    """Model sizes log-spaced in [low, high], each trained at several tokens-per-parameter ratios."""
    n = np.repeat(np.geomspace(low, high, sizes), len(ratios))
    d = n * np.tile(np.asarray(ratios), sizes)
    return n, d


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Free each module's compiled programs after it: a whole suite's programs held at once
    exceeded the kernel's limit on memory maps and crashed the run (bayescale.engine.clear_samplers)."""
    yield
    from bayescale.engine import clear_samplers

    clear_samplers()


@pytest.fixture(scope="session")
def small_runs():
    n, d = chinchilla_grid()
    return bs.datasets.simulate_runs("chinchilla", CHINCHILLA_TRUTH, params=n, tokens=d, sigma=0.01, seed=1)


@pytest.fixture(scope="session")
def small_fit(small_runs):
    """A quick but converged fit (4 chains x 500 draws, 18 runs over two decades of N) shared by
    predict/save/CLI tests. Measured over seeds 0-5: 4 chains gave R-hat <= 1.007 and bulk ESS
    >= 960 every time; 2 chains x 500 left bulk or tail ESS under 400 for 3 of 6 seeds."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sampler warning here means the fixture itself is unsound
        return bs.fit(small_runs, "chinchilla", seed=0, num_chains=4, num_warmup=500, num_samples=500, progress=False)
