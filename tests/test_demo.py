"""`make demo` runs `bayescale demo`; here with tiny sampler settings."""

import pandas as pd

import bayescale as bs
from bayescale.cli import main


def test_demo_writes_its_outputs(tmp_path, capsys, recwarn):
    status = main(["demo", "--out", str(tmp_path), "--num-chains", "2", "--num-warmup", "100", "--num-samples", "100"])
    out = capsys.readouterr().out
    assert status == 0
    for name in ("fit.nc", "summary.csv", "predictions.csv", "optimal.csv", "fit.png", "backtest.csv", "design.csv", "report.html"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "compute-optimal tokens per parameter" in out and "backtest (fit below 1e+21 FLOP" in out
    report = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Backtest: would it have been right?" in report and "Next runs to train" in report
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert predictions["model"].tolist() == ["Chinchilla", "Gopher"]
    assert bs.load(tmp_path / "fit.nc").attrs["model_name"] == "chinchilla"
