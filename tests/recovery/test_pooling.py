"""Hierarchical recovery: population, family spreads, seed spread and each family's law.

A sweep drawn from a known population (bayescale.datasets.simulate.simulate_sweep: 6
families x 5 sizes over 1.5 decades (2e7-6e8 parameters, the issue-3 workload's range) x 3
seeds x 8 checkpoints, 720 rows) is fitted with each hierarchical card's default settings
(chinchilla: two worlds; compute law: one). Gates, all at the fixed seeds below:

* no divergences and R-hat < 1.01 (the diagnostics' own thresholds);
* the run-to-run (seed) spread's 95% interval covers its truth;
* of the population quantities (Chinchilla: 5 means, 3 learned spreads, 2 noise scales;
  compute law: 3, 3 and 2) all but two are covered by their 95% intervals: for a calibrated
  posterior the count is about Binomial(10, 0.95), so a correct sampler fails with
  probability 1.2% (P[X <= 7]; compute law P[Binomial(8, 0.95) <= 5] = 0.6%);
* of the family parameters (6 families x E, A, alpha, B, beta: 30; compute law x E, A,
  alpha: 18) at least 26 of 30 (P[Binomial(30, 0.95) <= 25] = 1.6%) or 15 of 18
  (P[Binomial(18, 0.95) <= 14] = 1.1%) are covered (the families share the population's
  uncertainty, so the count is more variable than binomial; the gate leaves room for that).

Known limit, measured and not hidden: over 1.2 decades of sizes (largest=3e8) both
chinchilla worlds miss the R-hat gate at the defaults (1.012 and 1.013; no divergences): the
population's E-alpha ridge is long there (docs/developer/design.md, "Hierarchical geometry",
steps 8-9). Before the spreads' prior became Gamma(4) and beta's spread fixed, world 1 also
diverged (3 divergences).
"""

import warnings

import numpy as np
import pytest

import bayescale as bs
from bayescale.datasets.simulate import simulate_sweep
from bayescale.laws import get_law

pytestmark = pytest.mark.slow


def _covered(table, name, value):
    row = table.loc[name]
    return bool(row["q2.5"] <= value <= row["q97.5"])


@pytest.mark.parametrize(
    "law, card, world",
    [("chinchilla", "chinchilla-hierarchical", 0), ("chinchilla", "chinchilla-hierarchical", 1), ("compute-power-law", "compute-power-law-hierarchical", 0)],
)
def test_pooled_fit_recovers_population_families_and_seed_spread(law, card, world):
    runs, truth = simulate_sweep(families=6, sizes=5, seeds=3, checkpoints=8, law=law, seed=world)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.SamplerWarning)  # gated explicitly below
        fit = bs.fit(runs, card, seed=0, progress=False)
    d = fit.diagnostics
    assert d.divergences == 0, d.problems
    assert d.max_r_hat < 1.01, d.problems
    table = fit.summary().set_index("parameter")
    assert _covered(table, "sigma_run", truth["sigma_run"]), table.loc["sigma_run"]

    posterior = fit.idata.posterior
    population = 0
    for k, name in enumerate(posterior["coordinate"].values):
        draws = posterior["mu"].values[..., k].reshape(-1)
        population += bool(np.quantile(draws, 0.025) <= truth["mu"][name] <= np.quantile(draws, 0.975))
    pooled = posterior["pooled_coordinate"].values
    population += sum(_covered(table, f"tau[{name}]", truth["tau"][name]) for name in pooled)
    population += _covered(table, "sigma", truth["sigma"]) + _covered(table, "sigma_run", truth["sigma_run"])
    # At most two misses (module docstring: P[Binomial(10, 0.95) <= 7] = 1.2%, P[Binomial(8, 0.95) <= 5] = 0.6%).
    assert population >= len(posterior["coordinate"]) + len(pooled) + 2 - 2, population

    natural = {}
    for family, theta in truth["theta"].items():
        published = get_law(law).natural(theta, truth["centre"])
        natural.update({f"{k}[{family}]": float(v) for k, v in published.items()})
    families = sum(_covered(table, name, value) for name, value in natural.items())
    # At most 4 misses of 30 (chinchilla) or 3 of 18 (compute law): module docstring.
    assert families >= len(natural) - (4 if len(natural) >= 30 else 3), families
