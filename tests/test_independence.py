"""Independence Metropolis-Hastings with an adapted proposal (bayescale.independence)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayescale as bs
from bayescale import independence
from bayescale._arviz import az
from bayescale.diagnostics import diagnose


def banana(z):
    """``z0 ~ N(0, 1)``, ``z1 | z0 ~ N((z0^2 - 1) / 2, 1/4)``: curved and skewed, with
    E[z1] = 0, Var[z1] = 1/4 Var[z0^2] + 1/4 = 3/4 and E[z0^2 z1] = (E[z0^4] - E[z0^2]) / 2 = 1."""
    return 0.5 * z[0] ** 2 + 0.5 * ((z[1] - 0.5 * (z[0] ** 2 - 1.0)) / 0.5) ** 2


@pytest.fixture(scope="module")
def banana_draws():
    # The Laplace approximation at the mode (0, -1/2) has covariance diag(1, 1/4): its z1
    # mean is off by 1/2 and its variance by 3x, so the adaptation has to find the curve.
    sample = jax.jit(
        lambda key: independence.sample(
            banana, jnp.array([0.0, -0.5]), jnp.diag(jnp.array([1.0, 0.25])), key, num_chains=4, num_samples=1000
        )
    )
    draws, accept_prob, log_weights = sample(jax.random.PRNGKey(0))
    return np.asarray(draws), np.asarray(accept_prob), np.asarray(log_weights)


def test_independence_chains_recover_a_curved_posterior(banana_draws):
    draws, accept_prob, log_weights = banana_draws
    assert draws.shape == (4, 1000, 2)
    ess = [float(az.ess(draws[..., i])) for i in range(2)]
    assert min(ess) > 1000, ess  # seeds 0-3: 3,480-3,890
    assert max(float(az.rhat(draws[..., i])) for i in range(2)) < 1.01
    assert independence.pareto_k(log_weights) < independence.MAX_PARETO_K  # seeds 0-3: 0.09-0.64
    assert 0.5 < accept_prob.mean() < 1.0  # seeds 0-3: 0.81-0.83
    flat = draws.reshape(-1, 2)
    # Tolerances are 5 Monte Carlo standard errors at the asserted ESS floor of 1,000:
    # sd(z0) = 1, sd(z1) = 0.87, sd(z1^2) ~ 2.1 (chi-square-like tail), sd(z0^2 z1) = 4.4.
    assert abs(flat[:, 0].mean()) < 5 * 1.0 / np.sqrt(1000)
    assert abs(flat[:, 1].mean()) < 5 * 0.87 / np.sqrt(1000)
    assert flat[:, 1].var() == pytest.approx(0.75, abs=5 * 2.1 / np.sqrt(1000))
    assert np.mean(flat[:, 0] ** 2 * flat[:, 1]) == pytest.approx(1.0, abs=5 * 4.4 / np.sqrt(1000))


def test_standard_student_t_draws_have_the_t_distribution():
    """Each coordinate is a t with DEGREES_OF_FREEDOM, and the squared radius over d an
    F(d, nu) (the coordinates share one chi-square): Kolmogorov-Smirnov at 200,000 draws,
    where a chi-square with one normal too few (nu - 1 degrees of freedom) gives p < 1e-30."""
    from scipy import stats

    nu, d = independence.DEGREES_OF_FREEDOM, 3
    x = np.asarray(independence._standard_student_t(jax.random.PRNGKey(0), 200_000, d))
    for j in range(d):
        assert stats.kstest(x[:, j], stats.t(nu).cdf).pvalue > 1e-3  # seed 0: 0.08-0.32 (radius: 0.63)
    assert stats.kstest(np.sum(x**2, axis=1) / d, stats.f(d, nu).cdf).pvalue > 1e-3


def test_pareto_k_reads_the_tail_of_the_weights():
    """Weights ``u^-k`` for uniform ``u`` have an upper tail of Pareto shape ``k``; a draw with
    zero weight (outside the support: log weight -inf) must not break the estimate."""
    u = np.random.default_rng(0).uniform(size=(2, 20000))
    log_weights = -np.array([[0.3], [0.9]]) * np.log(u)
    log_weights[0, 0] = -np.inf
    k = independence.pareto_k(log_weights)
    # The estimate's sd at 20,000 draws (tail of ~420) is about 0.05.
    np.testing.assert_allclose(k, [0.3, 0.9], atol=0.15)


def test_a_heavy_pareto_k_is_reported_with_the_fix():
    posterior = {"theta": np.random.default_rng(1).normal(size=(4, 500))}
    idata = az.from_dict(posterior=posterior, sample_stats={"diverging": np.zeros((4, 500), bool)})
    idata.attrs["pareto_k"] = 0.85
    report = diagnose(idata, ["theta"])
    assert report.pareto_k == 0.85 and not report.ok
    assert any("Pareto k 0.85" in p and 'sampler="nuts"' in p for p in report.problems)
    idata.attrs["pareto_k"] = 0.2
    assert diagnose(idata, ["theta"]).ok
    del idata.attrs["pareto_k"]
    assert np.isnan(diagnose(idata, ["theta"]).pareto_k)  # NUTS: no proposal to check


def test_an_unknown_sampler_names_the_choices():
    runs = bs.datasets.simulate_evaluations([dict(task="a", midpoint_flops=1e21, slope=2.0, chance=0.25, ceiling=0.9)], np.logspace(19, 23, 6), seed=0)
    with pytest.raises(ValueError, match='"auto" or "nuts"'):
        bs.fit_many(runs.data, by="task", model="downstream-sigmoid", sampler="imh", progress=False)


def test_divergence_advice_raises_the_target_acceptance_the_fit_used():
    """The advice names a target_accept above the one recorded in the fit (halfway to 1), so
    it never suggests a lower one (it once said 0.95 to fits made at 0.95)."""
    from bayescale.diagnostics import higher_target_accept

    diverging = np.zeros((4, 500), bool)
    diverging[0, 10] = True
    idata = az.from_dict(posterior={"theta": np.random.default_rng(1).normal(size=(4, 500))}, sample_stats={"diverging": diverging})
    for used, advised in ((0.8, 0.9), (0.95, 0.975), (0.98, 0.99)):
        idata.attrs["target_accept"] = used
        assert higher_target_accept(used) == advised
        assert any(f"Try target_accept={advised} (CLI --target-accept {advised})" in p for p in diagnose(idata, ["theta"]).problems)
    del idata.attrs["target_accept"]  # a fit saved before the setting was recorded
    assert any("Try target_accept=0.95" in p for p in diagnose(idata, ["theta"]).problems)
