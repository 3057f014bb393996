"""`make demo` runs `bayescale demo`; here with tiny sampler settings."""

import pandas as pd

import bayescale as bs
from bayescale.cli import main


def test_demo_writes_its_outputs(tmp_path, capsys, recwarn):
    status = main(["demo", "--out", str(tmp_path), "--num-chains", "2", "--num-warmup", "100", "--num-samples", "100"])
    out = capsys.readouterr().out
    assert status == 0
    for name in ("fit.nc", "summary.csv", "predictions.csv", "optimal.csv", "fit.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "compute-optimal tokens per parameter" in out
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert predictions["model"].tolist() == ["Chinchilla", "Gopher"]
    assert bs.load(tmp_path / "fit.nc").attrs["model_name"] == "chinchilla"
