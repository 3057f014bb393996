"""Hierarchical cards: coordinates, the integrated run effect, structure and bad input."""

import html
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from bayescale import DataError, ModelSpec, SamplerWarning, backtest, fit
from bayescale.coordinates import card_log_prior, coordinate_names, from_parameters, to_parameters
from bayescale.datasets.simulate import checkpoint_grid, simulate_family_losses
from bayescale.hierarchy import groups_of, layout_of, run_log_likelihood, run_spread_problem
from bayescale.laws import get_law


@pytest.mark.parametrize("law_name", ["chinchilla", "compute-power-law", "kaplan"])
def test_coordinates_round_trip_and_jacobian(law_name):
    law = get_law(law_name)
    names = coordinate_names(law)
    u0 = jnp.asarray(np.random.default_rng(0).normal(0.0, 0.7, len(names)))

    def to_flat(u):
        theta, _ = to_parameters(law, dict(zip(names, u)))
        return jnp.stack([theta[p] for p in law.parameters])

    theta, log_jacobian = to_parameters(law, dict(zip(names, u0)))
    back = from_parameters(law, theta)
    np.testing.assert_allclose([back[n] for n in names], u0, rtol=1e-10, atol=1e-10)
    # The log Jacobian that makes the card's prior exact in these coordinates.
    jacobian = jax.jacfwd(to_flat)(u0)
    np.testing.assert_allclose(log_jacobian, np.log(abs(np.linalg.det(jacobian))), rtol=1e-10, atol=1e-10)


def test_card_log_prior_sums_the_cards_priors():
    spec = ModelSpec.load("chinchilla-hierarchical")
    law = spec.law
    priors = {name: prior.to_numpyro() for name, prior in spec.priors.items()}
    u = dict(zip(coordinate_names(law), jnp.array([1.0, -0.5, -1.0, np.log(0.3), np.log(0.35)])))
    theta, log_prior = card_log_prior(law, priors, u)
    expected = sum(priors[p].log_prob(theta[p]) for p in law.parameters) + np.log(theta["alpha"]) + np.log(theta["beta"])
    np.testing.assert_allclose(log_prior, expected, rtol=1e-12)


def test_run_effect_integrated_out_matches_the_multivariate_normal():
    rng = np.random.default_rng(1)
    run = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    residual = rng.normal(0, 0.02, run.size)
    sigma, sigma_run = 0.01, 0.015
    expected = 0.0
    for r in np.unique(run):
        rows = run == r
        n = rows.sum()
        covariance = sigma**2 * np.eye(n) + sigma_run**2 * np.ones((n, n))
        expected += multivariate_normal(np.zeros(n), covariance).logpdf(residual[rows])
    got = run_log_likelihood(jnp.asarray(residual), jnp.asarray(run), 4, sigma, sigma_run, jnp.ones(run.size, bool))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # Masked rows are left out, as if absent.
    mask = run != 1
    got = run_log_likelihood(jnp.asarray(residual), jnp.asarray(run), 4, sigma, sigma_run, jnp.asarray(mask))
    without = sum(
        multivariate_normal(np.zeros((run == r).sum()), sigma**2 * np.eye((run == r).sum()) + sigma_run**2).logpdf(residual[run == r])
        for r in (0, 2, 3)
    )
    np.testing.assert_allclose(got, without, rtol=1e-10)


def _two_families(sizes_b=2):
    sizes = {"a": [(n, 20 * n) for n in (2e7, 5e7, 1e8, 3e8)], "b": [(n, 20 * n) for n in (2e7, 5e7, 1e8, 3e8)[:sizes_b]]}
    grid = checkpoint_grid(sizes, seeds=2, checkpoints=3)
    theta = {"e": 0.55, "a_c": np.log(450), "alpha": 0.34, "b_c": np.log(2000), "beta": 0.32}
    return simulate_family_losses("chinchilla", grid, {"a": theta, "b": theta}, seed=0)


def test_groups_mark_runs_and_families():
    runs = _two_families()
    groups = groups_of(runs, ModelSpec.load("chinchilla-hierarchical"))
    assert groups["run_rows"].sum() == len(runs) and len(groups["run_rows"]) == (4 + 2) * 2
    assert set(groups["run_rows"]) == {3.0}
    assert groups["run_effect"] == 1.0
    assert groups["centring"].shape == (2, len(layout_of(ModelSpec.load("chinchilla-hierarchical")).varying))


def test_a_family_with_one_observation_is_refused():
    runs = _two_families()
    data = runs.data
    data = data[(data["family"] == "a") | (data.index == data.index[-1])]
    with pytest.raises(DataError, match="families b have a single observation"):
        fit(data, "chinchilla-hierarchical", num_warmup=10, num_samples=10, progress=False)


@pytest.mark.parametrize(
    "edit, message",
    [
        (('[pooling.log_beta]\nmode = "fixed"', '[pooling.log_beta]\nmode = "partial"'), "mode must be one of"),
        (('[pooling.log_loss_centre]\nmode = "pooled"\nscale = 0.1', '[pooling.log_loss_centre]\nmode = "pooled"'), "needs a positive 'scale'"),
        (("[pooling.log_beta]", "[pooling.beta]"), "missing \\['log_beta'\\]; unknown \\['beta'\\]"),
        (('kind = "normal"', 'kind = "student_t"'), "needs likelihood.kind"),
        (("[likelihood.sigma_run]", "[likelihood.sigma_seed]"), "needs priors for \\['sigma_run'\\]"),
        (("target_accept = 0.99", "target_accept = 1.5"), "\\[sampler\\] takes target_accept"),
        (('[pooling.log_alpha]\nmode = "fixed"\nscale = 0.1', '[pooling.log_alpha]\nmode = "shared"\nscale = 0.1'), "a shared coordinate has no spread"),
    ],
)
def test_bad_pooling_sections_name_the_fix(edit, message):
    text = ModelSpec.load("chinchilla-hierarchical").text.replace(*edit)
    with pytest.raises(ValueError, match=message):
        ModelSpec.from_toml(text)


@pytest.fixture(scope="module")
def small_pooled_fit():
    # Structure, not convergence: a short run on a small sweep, so the sampler's warnings are
    # expected and silenced here (convergence and recovery: tests/recovery/test_pooling.py).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplerWarning)
        return fit(_two_families(), "chinchilla-hierarchical", num_chains=2, num_warmup=150, num_samples=150, seed=0, progress=False)


def test_pooled_fit_reports_population_families_and_spreads(small_pooled_fit, tmp_path):
    summary = small_pooled_fit.summary()
    names = set(summary["parameter"])
    assert {"alpha[population]", "alpha[a]", "alpha[b]", "tau[logit_share_e]", "sigma", "sigma_run"} <= names
    assert small_pooled_fit.idata.posterior["alpha"].dims == ("chain", "draw", "family")
    again = __import__("bayescale").load(small_pooled_fit.save(tmp_path / "pooled.nc"))
    np.testing.assert_allclose(again.summary()["mean"], summary["mean"])


def test_a_new_family_is_predicted_more_widely_than_a_fitted_one(small_pooled_fit):
    fitted = small_pooled_fit.predict(params=1e9, tokens=2e10, family="a")
    new = small_pooled_fit.predict(params=1e9, tokens=2e10, family="new")
    width = lambda frame: float(frame["q97.5"].iloc[0] - frame["q2.5"].iloc[0])  # noqa: E731
    # A new family carries the population spread on top of the parameter uncertainty.
    assert width(new) > width(fitted)
    with pytest.raises(ValueError, match="name one with family="):
        small_pooled_fit.predict(params=1e9, tokens=2e10)
    with pytest.raises(ValueError, match="use family='new'"):
        small_pooled_fit.predict(params=1e9, tokens=2e10, family="c")


def test_posterior_predictive_replicates_the_observed_runs(small_pooled_fit):
    observed = small_pooled_fit.idata.observed_data["log_loss"].values
    replicated = small_pooled_fit.idata.posterior_predictive["log_loss"].values.reshape(-1, observed.size)
    inside = (np.quantile(replicated, 0.025, axis=0) <= observed) & (observed <= np.quantile(replicated, 0.975, axis=0))
    # Replicates of the observed runs (run effects drawn given the data): nearly all points
    # fall inside their 95% band; 80% leaves room for a short, unconverged run.
    assert inside.mean() > 0.8


def test_fit_many_refuses_a_hierarchical_card():
    with pytest.raises(ValueError, match="use bayescale.fit"):
        __import__("bayescale").fit_many(_two_families(), by="family", model="chinchilla-hierarchical", progress=False)


def test_family_and_noise_plots(small_pooled_fit):
    from bayescale.plots import plot_families, plot_noise

    ax = plot_families(small_pooled_fit).axes[0]
    # One band per fitted family (filled) and the dashed bounds of a new family.
    assert len(ax.collections) == 2 * len(small_pooled_fit.families)  # band + data points each
    assert {line.get_label() for line in ax.lines} >= {"a", "b", "a new family, 95%"}
    assert len(plot_noise(small_pooled_fit).axes[0].patches) == 120


def test_leave_one_family_out_backtest_predicts_the_larger_sizes():
    # Family a keeps its 2 smallest sizes, b stays whole: the same shapes as small_pooled_fit,
    # so the compiled program is reused. Structure here; accuracy on real suites is measured
    # in benchmarks/results/real_pooling.md and tests/recovery/test_extrapolation_real.py.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplerWarning)
        result = backtest(_two_families(sizes_b=4), "chinchilla-hierarchical", family="a", keep_sizes=2, num_chains=2, num_warmup=150, num_samples=150, seed=0, progress=False)
    rows = result.rows
    assert set(rows["family"]) == {"a"} and sorted(rows["params"].unique()) == [1e8, 3e8]
    assert len(rows) == 2 * 2 * 3  # held-out sizes x seeds x checkpoints
    np.testing.assert_allclose(sorted(rows["params_ratio"].unique()), [2.0, 6.0])
    assert "family 'a'" in result.held_out and set(result.fit.families) == {"a", "b"}


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(), "give either cutoff_flops"),
        (dict(cutoff_flops=1e20, family="a"), "not both or neither"),
        (dict(family="c"), "family 'c' is not in the data"),
        (dict(family="b", keep_sizes=2), "leaves nothing to predict; lower keep_sizes below 2"),
        (dict(family="a", keep_sizes=0), "keep at least one size"),
    ],
)
def test_bad_backtest_splits_name_the_fix(options, message):
    with pytest.raises(DataError, match=message):
        backtest(_two_families(), "chinchilla-hierarchical", progress=False, **options)


def test_an_implausible_seed_spread_is_explained():
    assert run_spread_problem(np.full(100, 0.01)) is None
    message = run_spread_problem(np.full(100, 0.16))
    assert "16%" in message and "final" in message


def test_suggest_runs_for_a_pooled_family(small_pooled_fit):
    from bayescale import suggest_runs

    candidates = {"params": [1e8, 3e8, 1e9], "tokens": [2e9, 6e9, 2e10]}
    for family in ("b", "new"):
        design = suggest_runs(small_pooled_fit, candidates, 1e21, {"params": 7e9, "tokens": 1.4e11}, family=family)
        assert design.candidates["selected"].any() and design.width_95_after < design.width_95_before


def test_pooled_report_and_refittable_observations(small_pooled_fit, tmp_path):
    from bayescale.report import write_report

    observed = small_pooled_fit.observed()
    # The run ids come back, so the observations refit to the same run structure (a report's backtest).
    assert observed.groupby("run")["family"].nunique().max() == 1
    assert observed["run"].nunique() == len(np.unique(small_pooled_fit.idata.constant_data["run_index"].values))
    text = write_report(small_pooled_fit, tmp_path / "pooled.html").read_text(encoding="utf-8")
    # The short fixture run has sampler problems: each is in the warning box, in words.
    assert 'class="box warn"' in text
    for problem in small_pooled_fit.diagnostics.problems:
        assert html.escape(problem) in text
    assert "for a new family drawn from the population" in text
