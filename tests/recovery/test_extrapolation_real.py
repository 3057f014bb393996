"""Extrapolation on a real public suite, used as a new user would: the CLI on small models,
predictions for models 4x larger.

Data: Li, Kudugunta, Zettlemoyer (2025), "(Mis)Fitting: A Survey of Scaling Laws", open_lm runs
(../shared/data/misfitting_losses.csv; no licence, so read from shared/ and not shipped). Final
checkpoints only, and for each (size, run length) the best of the 3-4 peak learning rates, as a
user picks the tuned run. Fit: the 8 sizes up to 296M parameters (57M-296M, 72 runs). Predict:
the 1.18B-parameter runs (4.0x the largest fitted size), compared with their observed loss.

A 5x range of sizes leaves a long E-alpha ridge (E from 0.6 to 2.4 at 96% posterior mass),
which NUTS crosses slowly, and chains that wander into its narrow low-E end adapt badly.
Measured over seeds 0-5 (4 CPU devices, the CSV path below): the default 4 x (1,000 + 1,000)
at target_accept 0.8 failed the diagnostics (R-hat > 1.01 or bulk/tail ESS < 400) for 4 of 6
seeds; 4 x (2,000 + 2,000) at 0.95 for 1 of 6 (tail ESS 289); 8 x (2,000 + 2,000) at 0.95 for
none (R-hat <= 1.005, ESS >= 1,418). The fit below uses that last setting, following the
sampler's advice. Making such ridges easy at the defaults is the geometry work of the pooling
issue.
"""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayescale import SamplerWarning
from bayescale.cli import main

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "misfitting_losses.csv"


@pytest.mark.skipif(not DATA.exists(), reason="needs ../shared/data/misfitting_losses.csv")
def test_cli_extrapolates_4x_within_2_percent(tmp_path, capsys):
    runs = pd.read_csv(DATA)
    final = runs[runs["is_final"]]
    tuned = final.loc[final.groupby(["params", "run_total_tokens"])["loss"].idxmin()]
    small, large = tuned[tuned["params"] <= 3e8], tuned[tuned["params"] >= 1e9]
    small[["params", "tokens", "loss"]].to_csv(tmp_path / "small.csv", index=False)

    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplerWarning)
        assert main(["fit", str(tmp_path / "small.csv"), "--model", "chinchilla", "--out", str(tmp_path / "fit.nc"), "--num-chains", "8", "--num-warmup", "2000", "--num-samples", "2000", "--target-accept", "0.95", "--format", "json"]) == 0
    fitted = capsys.readouterr()
    assert json.loads(fitted.out)["diagnostics"]["problems"] == []
    assert not re.search("warning", fitted.err), fitted.err

    argv = ["predict", str(tmp_path / "fit.nc"), "--params", *map(str, large["params"]), "--tokens", *map(str, large["tokens"]), "--noise", "--format", "json"]
    assert main(argv) == 0
    rows = pd.DataFrame(json.loads(capsys.readouterr().out)["rows"])
    truth = large["loss"].to_numpy()
    relative_error = np.abs(rows["q50"].to_numpy() / truth - 1)
    # Measured: 1.2% median error; both truths inside the 95% predictive interval.
    assert np.median(relative_error) <= 0.02, relative_error
    assert ((rows["q2.5"] < truth) & (truth < rows["q97.5"])).all(), rows


def _misfitting_families():
    """Final losses as three families (peak learning rates), >= 5 tokens/param, verbatim
    repeats dropped: the same selection as benchmarks/run.py's real-pooling workload."""
    raw = pd.read_csv(DATA)
    final = raw[raw["is_final"] & raw["peak_lr"].isin([0.001, 0.002, 0.004])]
    data = pd.DataFrame({"family": "lr" + final["peak_lr"].map("{:g}".format), "params": final["params"], "tokens": final["tokens"], "loss": final["loss"]})
    return data[data["tokens"] >= 5 * data["params"]].drop_duplicates().reset_index(drop=True)


@pytest.mark.skipif(not DATA.exists(), reason="needs ../shared/data/misfitting_losses.csv")
@pytest.mark.parametrize("family", ["lr0.001", "lr0.002", "lr0.004"])
def test_a_family_with_two_sizes_borrows_from_two_others(family):
    """Issue 3's real-data check, on the data we have: the family keeps its two smallest sizes,
    pooled with the other two learning rates; at 4-20x its largest kept size the median error
    must be <= 3% with every observation inside the 95% interval (docs/results.md), and the
    fit must pass every diagnostic."""
    from bayescale import backtest

    # 4 x 4,000 draws: the error is of the posterior median, a Monte Carlo estimate. At the
    # default 4 x 1,000 it varied by 2.7-3.3% across 8 seeds for lr 4e-3 (one held-out row);
    # at 4 x 4,000 its posterior value is 2.98% (2.92-3.02%, 3 seeds), lr 1e-3 2.7%, lr 2e-3 2.5%.
    # target_accept 0.995, as the sampler advises: at the card's 0.99, lr 4e-3 left one
    # divergent transition in 16,000 draws for 3 of seeds 0-5 (at a draw inside the bulk, so
    # a rare too-long step, not a region the chains cannot reach); at 0.995 none in seeds 0-5
    # for lr 4e-3 and 0-2 for the others, with R-hat <= 1.0013 and the same errors.
    result = backtest(_misfitting_families(), "chinchilla-hierarchical", family=family, keep_sizes=2, seed=0, num_samples=4000, target_accept=0.995, progress=False)
    assert result.fit.diagnostics.ok, result.fit.diagnostics.problems
    far = result.rows[(result.rows["params_ratio"] >= 4) & (result.rows["params_ratio"] < 20)]
    assert len(far) > 0
    # 3% plus 0.2 points: four Monte Carlo sd of the lr 4e-3 estimate at these draws (0.05 points),
    # which sits at the line; an error of the method itself would show as more.
    assert far["abs_rel_error"].median() <= 0.032, far
    assert far["covered_95"].all(), far
