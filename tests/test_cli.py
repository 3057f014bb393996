"""The command line: results on stdout in the documented JSON shapes, errors as one line and exit 2."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from bayescale.cli import EXIT_BAD_INPUT, main

QUANTILE_KEYS = {"mean", "q2.5", "q5", "q25", "q50", "q75", "q95", "q97.5"}


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture()
def saved_fit(small_fit, tmp_path):
    return small_fit.save(tmp_path / "fit.nc")


def test_summary_json_shape(capsys, saved_fit):
    status, out, _ = run(capsys, "summary", saved_fit, "--format", "json")
    assert status == 0
    payload = json.loads(out)
    assert set(payload["parameters"]) == {"E", "A", "alpha", "B", "beta", "sigma", "nu"}
    assert set(payload["parameters"]["alpha"]) == {"mean", "sd", "q2.5", "q50", "q97.5", "r_hat", "ess_bulk"}
    assert {"divergences", "max_r_hat", "min_ess_bulk"} <= set(payload["diagnostics"])


def test_predict_json_shape(capsys, saved_fit):
    status, out, _ = run(capsys, "predict", saved_fit, "--params", 1e9, 2e9, "--tokens", 2e10, 4e10, "--format", "json")
    assert status == 0
    rows = json.loads(out)["rows"]
    assert len(rows) == 2 and rows[0]["quantity"] == "loss"
    assert QUANTILE_KEYS | {"params", "tokens", "flops"} <= set(rows[0])


def test_optimal_json_and_table(capsys, saved_fit):
    status, out, _ = run(capsys, "optimal", saved_fit, "--flops", 5.88e23, "--format", "json")
    rows = json.loads(out)["rows"]
    assert status == 0 and [r["quantity"] for r in rows] == ["params", "tokens", "tokens_per_param", "loss"]
    assert QUANTILE_KEYS <= set(rows[0])
    status, out, _ = run(capsys, "optimal", saved_fit, "--flops", 5.88e23)
    assert status == 0 and "tokens_per_param" in out


def test_fit_command_writes_a_loadable_fit(capsys, small_runs, tmp_path):
    csv = tmp_path / "runs.csv"
    small_runs.data.to_csv(csv, index=False)
    out_path = tmp_path / "cli-fit.nc"
    status, out, err = run(capsys, "fit", csv, "--model", "chinchilla", "--out", out_path, "--num-chains", 4, "--num-warmup", 500, "--num-samples", 500, "--format", "json")
    assert status == 0, err
    assert json.loads(out)["diagnostics"]["divergences"] == 0
    assert out_path.exists() and "fitting card 'chinchilla'" in err


@pytest.fixture()
def runs_csv(tmp_path):
    def write(**changes):
        data = {"params": [1e8, 2e8, 4e8, 8e8], "tokens": [2e9, 4e9, 8e9, 1.6e10], "loss": [3.2, 3.0, 2.8, 2.6]}
        data.update(changes)
        frame = pd.DataFrame({k: v for k, v in data.items() if v is not None})
        path = tmp_path / "bad.csv"
        frame.to_csv(path, index=False)
        return path

    return write


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"loss": None}, "has no 'loss' column"),
        ({"params": [1e8, -2e8, 4e8, 8e8]}, r"'params' has 1 non-positive values \(lines 3 of"),
        ({"loss": [3.2, np.nan, 2.8, 2.6]}, r"'loss' has 1 missing or non-numeric values \(lines 3 of"),
        ({"params": [1e8] * 4}, "single value of 'params'"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, runs_csv, tmp_path, changes, message):
    status, out, err = run(capsys, "fit", runs_csv(**changes), "--out", tmp_path / "x.nc")
    assert status == EXIT_BAD_INPUT and out == ""
    assert err.startswith("bayescale: error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_unknown_card_is_one_clear_line(capsys, runs_csv, tmp_path):
    status, _, err = run(capsys, "fit", runs_csv(), "--model", "chinchila", "--out", tmp_path / "x.nc")
    assert status == EXIT_BAD_INPUT and "no model card named 'chinchila'" in err


def test_missing_fit_file_is_one_clear_line(capsys, tmp_path):
    status, _, err = run(capsys, "summary", tmp_path / "nope.nc")
    assert status == EXIT_BAD_INPUT and "no such file" in err
