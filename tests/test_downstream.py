"""Downstream accuracy: cards, input checks, links, predictions, emergence, CLI, plots.

One small fit (3 tasks, 2 families, 5 models each, by a backtest that holds out a sixth) is
made once and shared; recovery of known rises is in tests/recovery/test_downstream_recovery.py.
"""

import json
import re
import warnings

import jax
import matplotlib
import numpy as np
import pandas as pd
import pytest

import bayescale as bs
from bayescale.cli import EXIT_BAD_INPUT, main
from bayescale.datasets import simulate_evaluations
from bayescale.downstream import DownstreamSpec, evaluations, sum_zero_basis
from bayescale.links import LINKS
from bayescale.spec import card_text, load_card

TASKS = [
    dict(task="early", midpoint_flops=3e19, slope=1.5, chance=0.25, ceiling=0.9),
    dict(task="late", midpoint_flops=1e21, slope=4.0, chance=0.5, ceiling=0.85),
    dict(task="never", midpoint_flops=1e24, slope=3.0, chance=0.25, ceiling=0.8),
]
FLOPS = np.logspace(18.5, 21.5, 6)


@pytest.fixture(scope="module")
def evals():
    return simulate_evaluations(TASKS, FLOPS, families={"a": 0.0, "b": 0.2}, n_items=800, seed=3)


#: The backtest holds out each family's largest model; the fit below it serves every test here.
CUTOFF = 2e21
FITTED_MAX = FLOPS[FLOPS < CUTOFF].max()


@pytest.fixture(scope="module")
def backtest_result(evals):
    """One fit (4 chains x 500 draws, enough for the structural checks here; recovery is gated
    elsewhere), made by a backtest so that one compiled program serves every test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bs.backtest(evals, "downstream-sigmoid", cutoff_flops=CUTOFF, seed=0, num_warmup=500, num_samples=500, progress=False)


@pytest.fixture(scope="module")
def downstream_fit(backtest_result):
    return backtest_result.fit


# --- links and helpers (no fitting) --------------------------------------------------


@pytest.mark.parametrize("name", sorted(LINKS))
def test_link_solve_inverts_the_link(name):
    link = LINKS[name]
    midpoint, slope = np.array([0.3, -1.0, 2.0]), np.array([0.5, 2.0, 7.0])
    for fraction in (0.05, 0.1, 0.5, 0.9):
        x = link.solve(fraction, midpoint, slope)
        reached = np.asarray(link.fraction_fn(x, midpoint, slope))
        np.testing.assert_allclose(reached, fraction, rtol=1e-9)
    assert np.all(np.isposinf(link.solve(1.2, midpoint, slope)))  # a ceiling below the threshold: never


def test_sum_zero_basis_gives_deviations_from_the_mean():
    basis = sum_zero_basis(5)
    np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(basis.sum(axis=0), 0.0, atol=1e-12)
    # B B' is the centring projection I - J/F: B c has the law of u - mean(u).
    np.testing.assert_allclose(basis @ basis.T, np.eye(5) - 1.0 / 5, atol=1e-12)


def test_bundled_downstream_cards_parse():
    for name in ("downstream-sigmoid", "loss-to-accuracy", "downstream-exponential"):
        spec = load_card(name)
        assert isinstance(spec, DownstreamSpec) and spec.name == name
    assert load_card("loss-to-accuracy").loss_model.name == "compute-power-law"
    with pytest.raises(ValueError, match="downstream card"):
        bs.ModelSpec.load("downstream-sigmoid")


def test_card_errors_name_the_fix():
    text, _ = card_text("downstream-sigmoid")
    with pytest.raises(ValueError, match="predictor must be one of"):
        DownstreamSpec.from_toml(text.replace('predictor = "log_flops"', 'predictor = "params"'))
    with pytest.raises(ValueError, match="loss_model"):
        DownstreamSpec.from_toml(text.replace('predictor = "log_flops"', 'predictor = "loss"'))
    with pytest.raises(ValueError, match="chance.default"):
        DownstreamSpec.from_toml(text.replace("default = 0.25", "default = 1.0"))
    loss_card = card_text("loss-to-accuracy")[0].replace('loss_model = "compute-power-law"', 'loss_model = "chinchilla"')
    with pytest.raises(ValueError, match="law of compute alone"):
        DownstreamSpec.from_toml(loss_card)


def _frame(**changes):
    frame = pd.DataFrame({"task": ["t"] * 3 + ["u"] * 3, "flops": [1e19, 1e20, 1e21] * 2, "correct": [300, 400, 600, 500, 520, 700], "n_items": 1000})
    return frame.assign(**changes)


def test_input_errors_name_the_fix():
    spec = load_card("downstream-sigmoid")
    with pytest.raises(bs.DataError, match="no 'task' column"):
        evaluations(bs.RunTable(_frame().drop(columns="task")), spec)
    with pytest.raises(bs.DataError, match="single compute"):
        evaluations(bs.RunTable(_frame(flops=[1e19, 1e20, 1e21, 1e20, 1e20, 1e20])), spec)
    with pytest.raises(bs.DataError, match="no headroom"):
        evaluations(bs.RunTable(_frame(chance=1.0)), spec)
    with pytest.raises(bs.DataError, match="several 'chance' values"):
        evaluations(bs.RunTable(_frame(chance=[0.25, 0.25, 0.5, 0.5, 0.5, 0.5])), spec)
    with pytest.raises(bs.DataError, match="no 'n_items'"):
        evaluations(bs.RunTable(_frame().drop(columns="n_items")), spec)
    with pytest.raises(bs.DataError, match="exceeds 'n_items'"):
        bs.RunTable(_frame(correct=[300, 400, 1600, 500, 520, 700]))
    with pytest.raises(bs.DataError, match=r"outside \[0, 1\]"):
        bs.RunTable(_frame(accuracy=[0.3, 0.4, 60.0, 0.5, 0.52, 0.7]).drop(columns="correct"))
    with pytest.raises(bs.DataError, match="every row needs the evaluated model's 'loss'"):
        evaluations(bs.RunTable(_frame()), load_card("loss-to-accuracy"))


def test_accuracy_without_item_counts_warns_and_says_why():
    frame = _frame(accuracy=[0.3, 0.4, 0.6, 0.5, 0.52, 0.7]).drop(columns=["correct", "n_items"])
    with pytest.warns(UserWarning, match="Add an 'n_items' column"):
        arranged = evaluations(bs.RunTable(frame), load_card("downstream-sigmoid"))
    assert not arranged.counted


def test_accuracy_with_item_counts_becomes_counts():
    frame = _frame(accuracy=[0.3, 0.4, 0.6, 0.5, 0.52, 0.7]).drop(columns="correct")
    arranged = evaluations(bs.RunTable(frame), load_card("downstream-sigmoid"))
    assert arranged.counted and arranged.frame["correct"].tolist() == [300, 400, 600, 500, 520, 700]
    np.testing.assert_allclose(arranged.chance, [0.25, 0.25])  # the card's default


# --- the shared fit -------------------------------------------------------------------


def test_fit_structure(downstream_fit):
    assert isinstance(downstream_fit, bs.DownstreamFit)
    assert downstream_fit.tasks == ["early", "late", "never"] and downstream_fit.families == ["a", "b"]
    summary = downstream_fit.summary()
    for name in ("midpoint_flops[late]", "slope[late]", "ceiling[late]", "tau[midpoint]", "family_offset[a]", "concentration"):
        assert name in set(summary["parameter"])
    assert {"mean", "sd", "q2.5", "q50", "q97.5", "r_hat", "ess_bulk", "ess_tail"} <= set(summary.columns)
    attrs = downstream_fit.attrs
    assert attrs["model_name"] == "downstream-sigmoid" and len(attrs["data_hash"]) == 64 and attrs["bayescale_version"]
    # Family offsets are deviations from the fitted families' mean.
    offsets = np.stack([downstream_fit.family_offset(f) for f in downstream_fit.families])
    np.testing.assert_allclose(offsets.sum(axis=0), 0.0, atol=1e-9)


def test_observed_evaluations_are_the_fitted_rows(downstream_fit, evals):
    """observed() is what a report's backtest refits, so it must return the fitted rows exactly."""
    fitted = evals.data[evals.data["flops"] < CUTOFF].sort_values(["task", "family", "flops"]).reset_index(drop=True)
    observed = downstream_fit.observed().sort_values(["task", "family", "flops"]).reset_index(drop=True)
    assert len(observed) == len(fitted)
    np.testing.assert_allclose(observed["flops"], fitted["flops"])
    np.testing.assert_allclose(observed["accuracy"] * observed["n_items"], fitted["correct"], atol=1e-9)
    assert (observed[["task", "family"]].to_numpy() == fitted[["task", "family"]].to_numpy()).all()


def test_predict_accuracy(downstream_fit):
    table = downstream_fit.predict(flops=[1e20, 1e22], task="late", family="a")
    assert list(table["quantity"]) == ["accuracy"] * 2
    quantiles = table[["q2.5", "q5", "q25", "q50", "q75", "q95", "q97.5"]].to_numpy()
    assert np.all(np.diff(quantiles, axis=1) >= 0)
    # Expected accuracy stays between the task's chance and 1, and rises with compute here.
    assert np.all(quantiles >= 0.5 - 1e-9) and np.all(quantiles <= 1.0)
    assert table["q50"].iloc[1] > table["q50"].iloc[0]
    noisy = downstream_fit.predict(flops=1e22, task="late", family="a", noise=True)
    assert noisy["q97.5"].iloc[0] - noisy["q2.5"].iloc[0] > table["q97.5"].iloc[1] - table["q2.5"].iloc[1]
    new = downstream_fit.predict(flops=1e22, task="late", family="new")
    assert new["q97.5"].iloc[0] - new["q2.5"].iloc[0] >= table["q97.5"].iloc[1] - table["q2.5"].iloc[1]
    every = downstream_fit.predict(flops=1e21, family="b")
    assert list(every["task"]) == downstream_fit.tasks


def test_unnamed_family_is_a_new_one(downstream_fit):
    unnamed = downstream_fit.predict(flops=1e21, task="late")
    pd.testing.assert_frame_equal(unnamed, downstream_fit.predict(flops=1e21, task="late", family="new"))
    assert bs.emergence(downstream_fit)["family"].unique().tolist() == ["new"]


def test_predict_errors_name_the_fix(downstream_fit):
    with pytest.raises(ValueError, match="family='new'"):
        downstream_fit.predict(flops=1e21, task="late", family="c")
    with pytest.raises(ValueError, match="not in the fitted data"):
        downstream_fit.predict(flops=1e21, task="nope", family="a")
    with pytest.raises(ValueError, match="positive"):
        downstream_fit.predict(flops=-1.0, task="late", family="a")


def test_emergence_intervals_are_ordered_and_honest(downstream_fit):
    table = bs.emergence(downstream_fit, family="a")
    assert set(table["task"]) == {"early", "late", "never"}
    quantiles = table[["q2.5", "q5", "q25", "q50", "q75", "q95", "q97.5"]].to_numpy()
    assert np.all(np.diff(quantiles, axis=1) >= 0)
    threshold = table[table["quantity"] == "threshold_flops"].set_index("task")
    # The task that rises within the data has emerged by its largest compute; the task whose
    # rise lies three decades beyond the data has not, and its interval reaches past the data.
    assert threshold.loc["late", "p_emerged_by"] > 0.95
    assert threshold.loc["never", "p_emerged_by"] < 0.2
    assert threshold.loc["never", "q95"] > FITTED_MAX
    assert threshold.loc["never", "q95"] / threshold.loc["never", "q5"] > threshold.loc["late", "q95"] / threshold.loc["late", "q5"]
    # An absolute delta above some draws' ceilings gives infinite thresholds, counted in p_never.
    strict = bs.emergence(downstream_fit, delta=0.45, family="a")
    never = strict[(strict["quantity"] == "threshold_flops") & (strict["task"] == "late")].iloc[0]
    assert never["p_never"] > 0.5 and np.isposinf(never["q97.5"])
    with pytest.raises(ValueError, match="not both"):
        bs.emergence(downstream_fit, delta=0.1, fraction=0.1)


def test_save_load_and_cli(downstream_fit, tmp_path, capsys):
    path = downstream_fit.save(tmp_path / "evals.nc")
    loaded = bs.load(path)
    assert isinstance(loaded, bs.DownstreamFit) and loaded.tasks == downstream_fit.tasks
    pd.testing.assert_frame_equal(loaded.predict(flops=1e21, task="late", family="a"), downstream_fit.predict(flops=1e21, task="late", family="a"))
    assert main(["predict", str(path), "--flops", "1e21", "1e22", "--task", "late", "--family", "a", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 2 and rows[0]["quantity"] == "accuracy" and {"q5", "q50", "q95", "task", "flops"} <= set(rows[0])
    assert main(["emergence", str(path), "--family", "a", "--delta", "0.45", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]  # Infinity is kept (Python's json reads it)
    assert {row["task"] for row in rows} == {"early", "late", "never"}
    assert all(row["q5"] <= row["q50"] <= row["q95"] for row in rows)
    assert main(["emergence", str(path), "--fraction", "2"]) == EXIT_BAD_INPUT
    assert "fraction" in capsys.readouterr().err
    assert main(["predict", str(path), "--params", "1e9", "--tokens", "1e10"]) == EXIT_BAD_INPUT
    assert "--flops" in capsys.readouterr().err
    pd.DataFrame({"flops": np.logspace(18, 22, 9)}).to_csv(tmp_path / "models.csv", index=False)
    design = ["design", str(path), "--candidates", str(tmp_path / "models.csv"), "--budget-flops", "3e22", "--target-kind", "emergence"]
    assert main([*design, "--task", "late", "--family", "a", "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert "late" in payload["target"] and payload["spent"] <= 3e22 and payload["width_95_after"] < payload["width_95_before"]
    assert main(design) == EXIT_BAD_INPUT and "--task" in capsys.readouterr().err


def test_plots(downstream_fit):
    matplotlib.use("Agg")
    from bayescale import plots

    figure = plots.plot_accuracy(downstream_fit)
    assert len([ax for ax in figure.axes if ax.get_visible()]) == 3
    figure = plots.plot_emergence(bs.emergence(downstream_fit, family="a"))
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["early", "late", "never"]


def test_backtest_of_accuracies(backtest_result):
    rows = backtest_result.rows
    assert len(rows) == 2 * 3  # the largest model of each family, on 3 tasks
    assert {"task", "observed", "abs_error", "covered_90", "crps", "width_95"} <= set(rows.columns)
    summary = backtest_result.summary()
    assert {"mean_abs_error", "coverage_90", "mean_width_95"} <= set(summary.columns)
    assert summary["mean_abs_error"].iloc[0] < 0.15


def test_fit_from_accuracies_without_item_counts(evals):
    """The Beta fallback fits and predicts (tiny settings: this checks the path, not calibration)."""
    data = evals.data
    data = data[data["family"] == "a"].assign(accuracy=data["correct"] / data["n_items"]).drop(columns=["correct", "n_items"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bs.fit(data, "downstream-sigmoid", seed=0, num_chains=2, num_warmup=200, num_samples=200, progress=False)
    assert "n_items" not in fit.observed()
    table = fit.predict(flops=[1e19, 1e21], task="late", noise=True)
    assert np.all((table["q2.5"] >= 0) & (table["q97.5"] <= 1)) and table["q50"].iloc[1] > table["q50"].iloc[0]


def test_report_of_a_downstream_fit(backtest_result, tmp_path):
    from bayescale.report import write_report

    text = write_report(backtest_result.fit, tmp_path / "downstream.html", backtest=backtest_result).read_text(encoding="utf-8")
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    assert headings == ["Data and posterior", "Parameters and diagnostics", "Emergence", "Predicted accuracy", "Backtest: would it have been right?", "Provenance"]
    assert text.count("data:image/png;base64,") == 3  # accuracy panels, emergence, backtest
    # The task that never rises within the data has emergence draws beyond any compute, shown as words.
    assert "never" in text


def test_lone_task_prior_matches_the_population_prediction():
    """Mean and variance of w ~ Normal(mu, tau), mu and tau from the card's priors, by Monte Carlo:
    2e5 draws put the standard error of a variance near 0.3%, so 3% is a loose, honest bound."""
    spec = load_card("downstream-sigmoid")
    mean, spread = spec.lone_task_prior()
    rng = np.random.default_rng(0)
    for j, name in enumerate(("midpoint", "log_slope", "ceiling_logit")):
        args = spec.priors[name].arguments
        mu = rng.normal(args["loc"], args["scale"], 200_000)
        tau = rng.gamma(4.0, spec.task_spread[name].scale / 4.0, 200_000)
        w = rng.normal(mu, tau)
        assert w.mean() == pytest.approx(mean[j], abs=0.02)
        assert w.std() == pytest.approx(spread[j], rel=0.03)


def test_log_rising_is_exact_where_the_lgamma_difference_cancels():
    """Against the product it stands for, summed in float64 (k <= 1000 terms: error ~1e-13)."""
    from bayescale.downstream import log_rising

    for x in (1e-3, 0.3, 5.0, 9.99, 10.0, 50.0, 1e4, 1e8, 1e14):
        for k in (0, 1, 7, 300, 1000):
            exact = np.log(x + np.arange(k)).sum()
            assert float(log_rising(x, float(k))) == pytest.approx(exact, rel=1e-10, abs=1e-10), (x, k)
            # The sampler follows its gradient too: d/dx = sum of 1 / (x + i).
            slope = jax.grad(log_rising)(x, float(k))
            assert float(slope) == pytest.approx(np.sum(1.0 / (x + np.arange(k))), rel=1e-8, abs=1e-12), (x, k)


def test_beta_binomial_kernel_is_the_log_pmf_less_the_binomial_coefficient():
    """Against the Beta-binomial's product form, summed in float64, and against numpyro's
    log_prob (whose lgamma differences agree to ~1e-7 here), up to the binomial coefficient."""
    import numpyro.distributions as dist
    from scipy.special import gammaln

    from bayescale.downstream import beta_binomial_kernel

    k, n = np.array([0.0, 3.0, 250.0, 1000.0, 600.0]), np.array([10.0, 50.0, 1000.0, 1000.0, 1000.0])
    a, b = np.array([0.5, 20.0, 150.0, 299.0, 5.5e13]), np.array([2.0, 80.0, 150.0, 1.0, 4.5e13])
    got = np.asarray(beta_binomial_kernel(k, n, a, b))
    rising = lambda x, m: np.log(x + np.arange(m)).sum()  # noqa: E731
    exact = [rising(ai, int(ki)) + rising(bi, int(ni - ki)) - rising(ai + bi, int(ni)) for ki, ni, ai, bi in zip(k, n, a, b)]
    np.testing.assert_allclose(got, exact, rtol=1e-10)
    coefficient = gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)
    np.testing.assert_allclose(got[:4] + coefficient[:4], np.asarray(dist.BetaBinomial(a[:4], b[:4], n[:4]).log_prob(k[:4])), rtol=1e-6)


def test_padding_rows_leave_a_lone_tasks_density_unchanged():
    """Masked padding (bayescale.parallel) adds nothing to the log density."""
    from numpyro.infer.util import log_density

    from bayescale.downstream import centre_of_evaluations, make_downstream_model, model_inputs

    spec = load_card("downstream-sigmoid")
    runs = simulate_evaluations(TASKS[:1], FLOPS, n_items=800, seed=3)
    evals = evaluations(runs, spec)
    inputs = {k: np.asarray(v) for k, v in model_inputs(evals, spec, centre_of_evaluations(evals, spec)).items()}
    model = make_downstream_model(spec, 1, 1, pooled=False)
    params = {"task_raw": np.array([[-1.0, 0.5, 1.2]]), "concentration": 150.0}
    plain = log_density(model, ({**inputs, "mask": np.ones(len(FLOPS), bool)},), {}, params)[0]
    padded = {k: np.pad(v, (0, 3), mode="edge") if v.shape[:1] == (len(FLOPS),) else v for k, v in inputs.items()}
    padded["mask"] = np.arange(len(FLOPS) + 3) < len(FLOPS)
    assert float(log_density(model, (padded,), {}, params)[0]) == pytest.approx(float(plain), rel=1e-12)


# --- which models to evaluate next (bayescale.design, emergence target) ----------------


def test_suggest_runs_for_an_emergence_threshold(downstream_fit):
    """A model far below every rise (accuracy at chance, whatever the parameters) teaches
    nothing about where a task rises; models near the threshold teach most."""
    candidates = pd.DataFrame({"flops": np.logspace(15, 23, 17)})
    design = bs.suggest_runs(downstream_fit, candidates, 3e22, {"kind": "emergence", "task": "late"}, family="a", num_draws=400)
    table = design.candidates
    assert "late" in design.target and "compute" in design.target
    assert design.spent <= 3e22 and 0 < design.width_95_after < design.width_95_before
    threshold = bs.emergence(downstream_fit, family="a").query("task == 'late' and quantity == 'threshold_flops'")["q50"].iloc[0]
    near = table.loc[(table["flops"] / threshold).between(0.3, 3.0), "expected_gain"].max()
    # 1e15 FLOP is 5 decades below the fitted threshold (~3e20): its slope of ~4 per decade
    # leaves the sigmoid within e^-20 of chance, so it teaches nothing, and is valued at none.
    assert table["expected_gain"].iloc[0] == 0.0 and near > 0.05
    from bayescale.plots import plot_design

    ax = plot_design(design).axes[0]  # models given by compute alone: drawn along compute
    assert ax.get_xlabel().startswith("training compute") and len(ax.texts) == int(table["selected"].sum())
    # The width is in decades of compute, as bayescale.emergence's log10 interval. The two
    # interpolate between neighbouring draws at each quantile on different scales (log10 compute
    # here, compute there), so they agree to the draws' spacing there (1.2e-6 relative in this
    # fit), not to rounding; a width in other units (natural log) would be 2.3x off.
    emerged = bs.emergence(downstream_fit, family="a").query("task == 'late' and quantity == 'threshold_flops'")
    assert design.width_95_before == pytest.approx(np.log10(emerged["q97.5"].iloc[0] / emerged["q2.5"].iloc[0]), rel=1e-4)


def test_emergence_design_with_a_binomial_card(downstream_fit):
    """A card with binomial scores (no over-dispersion) simulates and scores counts binomially:
    a model at chance is still worth nothing, and one near the fitted threshold (~3e20) something."""
    import dataclasses

    binomial = dataclasses.replace(downstream_fit, spec=dataclasses.replace(downstream_fit.spec, likelihood="binomial"))
    candidates = pd.DataFrame({"flops": [1e15, 3e20, 1e21]})
    table = bs.suggest_runs(binomial, candidates, 2e21, {"kind": "emergence", "task": "late"}, family="a", num_draws=400).candidates
    assert table["expected_gain"].iloc[0] == 0.0 and table["expected_gain"].iloc[1:].max() > 0.05


def test_emergence_design_errors_name_the_fix(downstream_fit, small_fit):
    candidates = pd.DataFrame({"flops": [1e20, 1e21]})
    with pytest.raises(ValueError, match="fitted task"):
        bs.suggest_runs(downstream_fit, candidates, 1e22, {"kind": "emergence", "task": "absent"}, family="a")
    with pytest.raises(ValueError, match="emergence target"):
        bs.suggest_runs(downstream_fit, candidates, 1e22, {"params": 1e9, "tokens": 2e10})
    with pytest.raises(ValueError, match="not both"):
        bs.suggest_runs(downstream_fit, candidates, 1e22, {"kind": "emergence", "task": "late", "delta": 0.1, "fraction": 0.1}, family="a")
    with pytest.raises(ValueError, match="downstream-sigmoid"):
        bs.suggest_runs(small_fit, candidates.assign(params=1e9, tokens=2e10).drop(columns="flops"), 1e22, {"kind": "emergence", "task": "late"})
