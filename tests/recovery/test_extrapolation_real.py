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
