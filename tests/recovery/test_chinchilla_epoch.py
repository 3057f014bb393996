"""Real data: the Chinchilla runs as reconstructed by Epoch AI, against Epoch's published fit.

Reference: Besiroglu, Erdil, Barnett, You (2024), "Chinchilla Scaling: A replication attempt",
notebook data_analysis.ipynb: Huber loss (delta = 1e-3) on log loss, 5 outliers dropped, BFGS,
4000 bootstrap refits. Their 95% bootstrap intervals are quoted below (../shared/data/README.md).
"""

import warnings

import numpy as np
import pytest

import bayescale as bs
from bayescale.laws import chinchilla_optimal

pytestmark = pytest.mark.slow

EPOCH_ESTIMATE = {"A": 482.01, "B": 2085.43, "E": 1.8169, "alpha": 0.3478, "beta": 0.3658}
EPOCH_95 = {"A": (285.2, 743.6), "B": (1042.4, 5810.3), "E": (1.769, 1.871), "alpha": (0.317, 0.373), "beta": (0.331, 0.415)}


@pytest.fixture(scope="module")
def epoch_fit():
    runs = bs.datasets.load("chinchilla", drop_flagged_outliers=True)
    assert len(runs) == 240
    with warnings.catch_warnings():
        warnings.simplefilter("error", bs.SamplerWarning)
        return bs.fit(runs, "chinchilla", seed=0, progress=False)  # package defaults: 4 x (1000 + 1000)


def test_converges_with_defaults(epoch_fit):
    d = epoch_fit.diagnostics
    assert d.ok and d.divergences == 0 and d.max_r_hat < 1.01 and d.min_ess_bulk >= 400, d.problems


def test_adapted_sampler_takes_short_trajectories(epoch_fit):
    """Work per draw, not time: NUTS whitened by each chain's Laplace approximation takes 7
    leapfrog steps per draw here (median, seed 0); unwhitened, numpyro's 1e-3 mass-matrix shrinkage
    swamped log_loss_centre (sd 5e-4) and nearly every draw took 31 (docs/developer/design.md).
    15 leaves room for another tree depth but not for that regression."""
    steps = epoch_fit.idata.sample_stats["n_steps"].values
    assert np.median(steps) <= 15, np.percentile(steps, [5, 50, 95])


@pytest.mark.parametrize("name", sorted(EPOCH_95))
def test_median_inside_epoch_interval(epoch_fit, name):
    table = epoch_fit.summary().set_index("parameter")
    low, high = EPOCH_95[name]
    assert low < table.loc[name, "q50"] < high


@pytest.mark.parametrize("name", sorted(EPOCH_95))
def test_interval_is_plausibly_wide(epoch_fit, name):
    """Our 95% interval contains Epoch's point estimate and is not implausibly narrow.

    Measured here: our intervals are 0.3-0.7x the width of Epoch's bootstrap intervals (the
    Student-t posterior trusts the 240 points as independent; the bootstrap of an L1-like Huber
    estimator is wider). Hoffmann et al.'s own intervals were far narrower still, which is what
    Besiroglu et al. (2024, sec. 4) call implausible. A floor of 0.2x guards against that failure.
    """
    table = epoch_fit.summary().set_index("parameter")
    low, high = table.loc[name, "q2.5"], table.loc[name, "q97.5"]
    assert low < EPOCH_ESTIMATE[name] < high
    epoch_low, epoch_high = EPOCH_95[name]
    assert (high - low) > 0.2 * (epoch_high - epoch_low)


def test_compute_optimal_ratio_matches_epoch(epoch_fit):
    """Tokens per parameter at 5.88e23 FLOP (C = 6 N D).

    Epoch's point estimate implies 18.4 under C = 6 N D (computed with chinchilla_optimal, which
    tests/test_laws.py checks against a numerical minimum); the ~25.7 quoted in the data notes is
    not reproduced by that formula. Our posterior must centre near the former and cover both.
    """
    implied = chinchilla_optimal({k: np.array(v) for k, v in EPOCH_ESTIMATE.items()}, np.array(5.88e23))
    epoch_ratio = float(implied[1] / implied[0])
    row = epoch_fit.optimal(5.88e23).set_index("quantity").loc["tokens_per_param"]
    assert abs(row["q50"] / epoch_ratio - 1) < 0.15
    assert row["q2.5"] < epoch_ratio < row["q97.5"] and row["q2.5"] < 25.7 < row["q97.5"]
