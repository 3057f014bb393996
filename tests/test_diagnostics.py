"""The vectorised convergence checks against arviz's, which they replace for speed."""

import numpy as np
import pytest
from scipy.signal import lfilter

from bayescale._arviz import az
from bayescale.diagnostics import convergence


def _autoregressive(rng, phi: float, chains: int, draws: int) -> np.ndarray:
    """AR(1) chains x_t = phi x_(t-1) + e_t: autocorrelation of every strength and sign."""
    return lfilter([1.0], [1.0, -phi], rng.normal(size=(chains, draws)), axis=-1)


def _cases():
    rng = np.random.default_rng(1)
    yield "independent", _autoregressive(rng, 0.0, 4, 1000)
    yield "sticky", _autoregressive(rng, 0.9, 4, 1000)
    yield "very sticky", _autoregressive(rng, 0.99, 4, 1000)
    yield "antithetic", _autoregressive(rng, -0.6, 4, 1000)
    yield "odd draws, two chains", _autoregressive(rng, 0.5, 2, 101)
    # Rejected independence-sampler steps repeat a draw: ranks must average over ties.
    yield "ties", np.round(_autoregressive(rng, 0.3, 4, 1000))
    yield "chains apart", _autoregressive(rng, 0.95, 4, 1000) + np.arange(4)[:, None]
    yield "heavy tail", np.exp(3 * _autoregressive(rng, 0.7, 4, 500))
    yield "short", _autoregressive(rng, 0.2, 3, 7)
    yield "constant", np.ones((4, 1000))
    yield "one chain", _autoregressive(rng, 0.2, 1, 1000)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # arviz divides by a zero variance for "constant"
@pytest.mark.parametrize("name, draws", list(_cases()), ids=[name for name, _ in _cases()])
def test_convergence_matches_arviz(name, draws):
    r_hat, ess_bulk, ess_tail = convergence(draws[None])
    expected = (
        float(az.rhat(draws)) if draws.shape[0] > 1 else np.nan,
        float(az.ess(draws, method="bulk")),
        float(az.ess(draws, method="tail")),
    )
    # The same arithmetic in another order: agreement to rounding (1e-12 relative).
    np.testing.assert_allclose([r_hat[0], ess_bulk[0], ess_tail[0]], expected, rtol=1e-12, equal_nan=True)


def test_convergence_keeps_leading_axes_and_flags_non_finite_draws():
    rng = np.random.default_rng(2)
    draws = _autoregressive(rng, 0.5, 6 * 4, 200).reshape(2, 3, 4, 200)
    draws[1, 2, 0, 5] = np.nan
    r_hat, ess_bulk, ess_tail = convergence(draws)
    assert r_hat.shape == ess_bulk.shape == ess_tail.shape == (2, 3)
    assert np.isnan([r_hat[1, 2], ess_bulk[1, 2], ess_tail[1, 2]]).all()
    assert np.isfinite(np.delete(ess_bulk.reshape(-1), 5)).all()
    np.testing.assert_allclose(ess_bulk[0, 1], az.ess(draws[0, 1], method="bulk"), rtol=1e-12)
