"""Real data: Pythia's downstream accuracies, predicted above a compute cutoff.

The bundled ``pythia_evals`` (Biderman et al. 2023, EleutherAI/pythia evals, Apache-2.0)
holds zero-shot accuracies of both Pythia suites on 8 tasks. Fit the final checkpoints of
the models up to 1.4B with ``downstream-sigmoid``; predict the 2.8B, 6.9B and 12B models'
accuracies (48 held-out evaluations), as issue 4 asks.

Gates and why:

* no divergences, R-hat < 1.01 (the diagnostics' thresholds), with 2,000 draws per chain:
  with 1,000 the tail ESS of lambada's coordinates was 150-200 (its rise has not saturated
  within the data, so its ceiling and midpoint trade off along a curved ridge);
* the 90% predictive intervals cover at least 80% of the held-out accuracies: the level issue 4
  sets for held-out emergent tasks (measured here: 100%);
* mean absolute error at most 0.035: measured 0.022 at this seed (0.021-0.023 over the runs
  made while building it; benchmarks/results/downstream.md). Predicting each family's 1.4B
  accuracy (persistence) scores 0.040 and a straight line in log compute through the two
  largest fitted models 0.047 there, so the gate fails a fit no better than those;
* every task gets an ordered emergence interval.
"""

import warnings

import numpy as np
import pytest

import bayescale as bs

pytestmark = pytest.mark.slow

#: Between the 1.4B model (2.5e21 FLOP = 6 x 1.4e9 x 3e11) and the 2.8B model (5.0e21).
CUTOFF = 2.79e21


def test_pythia_accuracies_above_1_4b():
    data = bs.datasets.load("pythia_evals").data
    data = data[data["is_final"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = bs.backtest(data, "downstream-sigmoid", cutoff_flops=CUTOFF, seed=0, num_samples=2000, progress=False)
    assert result.fit.diagnostics.divergences == 0
    assert result.fit.diagnostics.max_r_hat < 1.01
    overall = result.summary().iloc[0]
    assert overall["n"] == 48
    assert overall["coverage_90"] >= 0.8, overall
    assert overall["mean_abs_error"] <= 0.035, overall
    table = bs.emergence(result.fit)
    assert set(table["task"]) == set(data["task"])
    quantiles = table[["q2.5", "q5", "q25", "q50", "q75", "q95", "q97.5"]].to_numpy()
    assert np.all(np.diff(quantiles, axis=1) >= 0)
