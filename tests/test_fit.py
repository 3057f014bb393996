import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.predict import QUANTILES
from conftest import CHINCHILLA_NATURAL


def test_small_fit_converges(small_fit):
    d = small_fit.diagnostics
    assert d.ok, d.problems
    assert d.divergences == 0 and d.max_r_hat < 1.01 and d.min_ess_bulk >= 400


def test_summary_reports_published_parameters(small_fit):
    table = small_fit.summary()
    assert table["parameter"].tolist() == ["E", "A", "alpha", "B", "beta", "sigma", "nu"]
    assert list(table.columns) == ["parameter", "mean", "sd", "q2.5", "q50", "q97.5", "r_hat", "ess_bulk", "ess_tail"]
    assert (table["q2.5"] <= table["q50"]).all() and (table["q50"] <= table["q97.5"]).all()


def test_provenance_travels_with_the_draws(small_fit, small_runs):
    attrs = small_fit.attrs
    assert attrs["model_card"] == bs.ModelSpec.load("chinchilla").text
    assert attrs["data_hash"] == small_runs.hash()
    assert attrs["bayescale_version"] == bs.__version__
    assert attrs["target_accept"] == bs.ModelSpec.load("chinchilla").target_accept  # the card's, as used
    assert set(small_fit.idata.groups()) >= {"posterior", "posterior_predictive", "sample_stats", "observed_data", "constant_data"}
    assert small_fit.idata.posterior_predictive["log_loss"].dims == ("chain", "draw", "obs")


def test_predict_quantiles_are_ordered_and_noise_widens_them(small_fit):
    exact = small_fit.predict(params=[1e9, 1e10], tokens=[2e10, 2e11])
    noisy = small_fit.predict(params=[1e9, 1e10], tokens=[2e10, 2e11], noise=True)
    labels = list(QUANTILES)
    assert (np.diff(exact[labels].to_numpy(), axis=1) >= 0).all()
    assert ((noisy["q97.5"] - noisy["q2.5"]) > (exact["q97.5"] - exact["q2.5"])).all()
    assert exact["quantity"].eq("loss").all()
    assert np.allclose(exact["flops"], 6 * exact["params"] * exact["tokens"])


def test_predict_interval_covers_the_true_law_out_of_sample(small_fit):
    """10x beyond the largest simulated model, the 95% interval of the law covers the truth."""
    n, d = np.array([1e10, 1e10]), np.array([2e11, 4e11])
    t = CHINCHILLA_NATURAL
    truth = t["E"] + t["A"] / n ** t["alpha"] + t["B"] / d ** t["beta"]
    table = small_fit.predict(params=n, tokens=d)
    assert ((table["q2.5"] < truth) & (truth < table["q97.5"])).all()


def test_predict_derives_the_missing_input(small_fit):
    by_flops = small_fit.predict(params=1e9, flops=6 * 1e9 * 2e10)
    direct = small_fit.predict(params=1e9, tokens=2e10)
    np.testing.assert_allclose(by_flops["q50"], direct["q50"], rtol=1e-12)


def test_predict_errors_name_the_fix(small_fit):
    with pytest.raises(ValueError, match="give tokens"):
        small_fit.predict(params=1e9)
    with pytest.raises(ValueError, match="family 'other' is not in the fitted data"):
        small_fit.predict(params=1e9, tokens=2e10, family="other")
    with pytest.raises(ValueError, match="finite and positive"):
        small_fit.predict(params=-1e9, tokens=2e10)


def test_optimal_allocation_spends_the_budget(small_fit):
    table = small_fit.optimal([1e21, 1e23], draws=True)
    assert table["quantity"].tolist() == ["params", "tokens", "tokens_per_param", "loss"] * 2
    for budget in (1e21, 1e23):
        rows = table[table["flops"] == budget].set_index("quantity")
        n, d = rows.loc["params", "draws"], rows.loc["tokens", "draws"]
        np.testing.assert_allclose(6 * n * d, budget, rtol=1e-10)
        np.testing.assert_allclose(rows.loc["tokens_per_param", "draws"], d / n, rtol=1e-12)
    # Larger budgets buy larger models.
    assert table.query("quantity == 'params' and flops == 1e23")["q50"].item() > table.query("quantity == 'params' and flops == 1e21")["q50"].item()


def test_optimal_loss_is_the_minimum_over_allocations(small_fit):
    """No allocation of the same budget has lower expected loss than the reported optimum (median draw)."""
    budget = 1e21
    opt = small_fit.optimal(budget).set_index("quantity")
    n_grid = opt.loc["params", "q50"] * np.geomspace(0.25, 4.0, 9)
    grid = small_fit.predict(params=n_grid, flops=budget)
    assert opt.loc["loss", "q50"] <= grid["q50"].min() + 1e-9


def test_save_and_load_round_trip_exactly(small_fit, tmp_path):
    path = small_fit.save(tmp_path / "fit.nc")
    loaded = bs.load(path)
    for name in small_fit.idata.posterior.data_vars:
        np.testing.assert_array_equal(loaded.idata.posterior[name].values, small_fit.idata.posterior[name].values)
    assert loaded.attrs == small_fit.attrs
    assert loaded.spec == small_fit.spec
    assert loaded.diagnostics == small_fit.diagnostics
    pd.testing.assert_frame_equal(loaded.summary(), small_fit.summary())
    pd.testing.assert_frame_equal(loaded.observed(), small_fit.observed())
    pd.testing.assert_frame_equal(loaded.predict(params=1e10, tokens=2e11, noise=True), small_fit.predict(params=1e10, tokens=2e11, noise=True))


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.nc"
    path.write_text("not a fit")
    with pytest.raises(ValueError, match="is not a bayescale fit"):
        bs.load(path)


def test_fit_rejects_several_families_before_sampling(small_runs):
    data = small_runs.data
    data["family"] = np.where(np.arange(len(data)) % 2, "a", "b")
    with pytest.raises(bs.DataError, match="2 families"):
        bs.fit(data, "chinchilla", progress=False)


def test_compute_law_has_no_allocation_to_optimise(small_fit):
    spec = bs.ModelSpec.load("compute-power-law")
    fake = bs.Fit(idata=small_fit.idata, spec=spec, diagnostics=small_fit.diagnostics)
    with pytest.raises(ValueError, match="no N/D trade-off"):
        fake.optimal(1e21)


def test_device_cpu_is_the_cpu_and_a_missing_gpu_names_the_fix(small_fit, small_runs):
    import jax

    again = bs.fit(small_runs, "chinchilla", seed=0, num_chains=4, num_warmup=500, num_samples=500, device="cpu", progress=False)
    # On a CPU-only machine device="cpu" is where the default fit ran: the same draws.
    if jax.default_backend() == "cpu":
        np.testing.assert_array_equal(again.draws()["alpha"], small_fit.draws()["alpha"])
    with pytest.raises(ValueError, match="device must be one of cpu, gpu, tpu"):
        bs.fit(small_runs, "chinchilla", device="mps", progress=False)
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(ValueError, match=r"no gpu device .*pip install 'bayescale\[gpu\]'.*or use device='cpu'"):
            bs.fit(small_runs, "chinchilla", device="gpu", progress=False)
