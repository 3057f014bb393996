"""Backtests: fit below a compute cutoff, score predictions above it."""

import json

import numpy as np
import pytest
from scipy import stats

import bayescale as bs
from bayescale.backtest import crps_from_draws
from bayescale.cli import main
from conftest import CHINCHILLA_TRUTH, chinchilla_grid

#: Sampler settings shared by the tests here, so they reuse one compiled program.
SETTINGS = dict(num_chains=4, num_warmup=500, num_samples=500)


def test_crps_matches_the_normal_closed_form():
    """Gneiting & Raftery (2007) eq. 5 for a Normal; 40,000 draws give ~0.3% Monte Carlo error."""
    draws = np.random.default_rng(0).normal(1.0, 2.0, 40_000)
    for observed in (1.0, 3.5, -4.0):
        z = (observed - 1.0) / 2.0
        exact = 2.0 * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
        assert crps_from_draws(draws, observed) == pytest.approx(exact, rel=0.01)


@pytest.fixture(scope="module")
def wide_runs():
    """Six sizes over two decades, as in conftest, plus the next decade to predict."""
    n, d = chinchilla_grid(sizes=8, low=3e7, high=3e10)
    return bs.datasets.simulate_runs("chinchilla", CHINCHILLA_TRUTH, params=n, tokens=d, sigma=0.01, seed=2)


def test_simulated_backtest_is_accurate_and_calibrated(wide_runs):
    cutoff = 6 * 3e9 * 3e9 * 64 * 1.01  # the largest fitted run: 3e9 params at 64 tokens/param
    result = bs.backtest(wide_runs, "chinchilla", cutoff_flops=cutoff, seed=0, progress=False, **SETTINGS)
    assert result.fit.diagnostics.ok, result.fit.diagnostics.problems
    rows = result.rows
    assert len(rows) + len(result.fit.observed()) == len(wide_runs)
    assert (rows["flops"] >= cutoff).all()
    overall = result.summary().iloc[0]
    # Up to 10x beyond the fitted compute with 1% noise: median errors of ~1% are what the noise allows.
    assert overall["median_abs_rel_error"] < 0.02, rows
    # The model is the truth here, so 95% intervals should cover nearly all held-out points;
    # allowing one miss in the held-out rows keeps the test from failing on a single 2.5% tail event.
    assert rows["covered_95"].sum() >= len(rows) - 1, rows
    assert (rows["crps"] > 0).all() and overall["mean_rel_width_95"] > 0


def test_cutoffs_that_leave_nothing_name_the_fix(wide_runs):
    flops = wide_runs.data["flops"]
    with pytest.raises(bs.DataError, match="raise the cutoff"):
        bs.backtest(wide_runs, cutoff_flops=flops.min(), progress=False)
    with pytest.raises(bs.DataError, match="lower the cutoff"):
        bs.backtest(wide_runs, cutoff_flops=flops.max() * 2, progress=False)


def test_cli_backtest_reports_summary_and_rows(wide_runs, tmp_path, capsys):
    wide_runs.data.to_csv(tmp_path / "runs.csv", index=False)
    cutoff = 6 * 3e9 * 3e9 * 64 * 1.01
    argv = ["backtest", str(tmp_path / "runs.csv"), "--cutoff-flops", str(cutoff), "--num-warmup", "500", "--num-samples", "500", "--format", "json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["summary"][0]["family"] == "all"
    assert {"observed", "q50", "covered_95", "crps"} <= set(payload["rows"][0])
    assert main(["backtest", str(tmp_path / "runs.csv"), "--cutoff-flops", "1"]) == 2
