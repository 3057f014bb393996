import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from bayescale.laws import LAWS, chinchilla_optimal, get_law, kaplan_optimal

N = np.array([1e8, 1e9, 1e10])
D = np.array([2e9, 2e10, 2e11])


def test_chinchilla_matches_the_sum_form():
    theta = {"e": np.log(1.69), "a_c": np.log(406.4), "alpha": 0.34, "b_c": np.log(410.7), "beta": 0.28}
    expected = 1.69 + 406.4 / N**0.34 + 410.7 / D**0.28  # Hoffmann et al. (2022) eq. 2 with their fit
    got = np.exp(get_law("chinchilla").log_loss(theta, {"params": jnp.log(N), "tokens": jnp.log(D)}))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_kaplan_matches_the_power_form():
    theta = {"alpha_N": 0.076, "alpha_D": 0.095, "n_c": np.log(8.8e13), "d_c": np.log(5.4e13)}
    expected = ((8.8e13 / N) ** (0.076 / 0.095) + 5.4e13 / D) ** 0.095  # Kaplan et al. (2020) eq. 1.5
    got = np.exp(get_law("kaplan").log_loss(theta, {"params": jnp.log(N), "tokens": jnp.log(D)}))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_compute_law_matches_the_sum_form():
    c = 6 * N * D
    theta = {"e": np.log(1.7), "a_c": np.log(30.0), "alpha": 0.05}
    got = np.exp(get_law("compute-power-law").log_loss(theta, {"flops": jnp.log(c)}))
    np.testing.assert_allclose(got, 1.7 + 30.0 * c**-0.05, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_centring_is_a_reparameterisation(name):
    """The law at centred inputs with centred parameters equals the law with natural parameters."""
    law = LAWS[name]
    rng = np.random.default_rng(0)
    theta = {p: rng.uniform(0.1, 0.5) for p in law.parameters}
    centre = {k: float(rng.uniform(15, 25)) for k in law.inputs}
    logs = {"params": np.log(N), "tokens": np.log(D), "flops": np.log(6 * N * D)}
    centred = law.log_loss(theta, {k: logs[k] - centre[k] for k in law.inputs})
    natural = law.natural(theta, centre)
    uncentred = law.natural(theta, dict.fromkeys(law.inputs, 0.0))
    assert set(natural) == set(law.reported)
    # Re-centring at zero must give the same natural parameters' curve: rebuild theta at centre 0.
    zero = dict(theta)
    if name == "chinchilla":
        zero.update(a_c=np.log(natural["A"]), b_c=np.log(natural["B"]))
    elif name == "compute-power-law":
        zero.update(a_c=np.log(natural["A"]))
    else:
        zero.update(n_c=np.log(natural["N_c"]), d_c=np.log(natural["D_c"]))
    np.testing.assert_allclose(law.log_loss(zero, {k: logs[k] for k in law.inputs}), centred, rtol=1e-12)
    assert uncentred.keys() == natural.keys()


def _numerical_optimum(loss_fn, flops):
    result = scipy.optimize.minimize_scalar(lambda log_n: loss_fn(np.exp(log_n), flops / (6 * np.exp(log_n))), bounds=(10, 40), method="bounded", options={"xatol": 1e-10})
    return np.exp(result.x)


def test_chinchilla_optimum_matches_numerical_minimum():
    nat = {"A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}  # Epoch AI's estimates
    n_opt, d_opt = chinchilla_optimal({k: np.array(v) for k, v in nat.items()}, np.array(5.88e23))
    expected = _numerical_optimum(lambda n, d: nat["A"] / n ** nat["alpha"] + nat["B"] / d ** nat["beta"], 5.88e23)
    np.testing.assert_allclose(n_opt, expected, rtol=1e-6)
    np.testing.assert_allclose(6 * n_opt * d_opt, 5.88e23, rtol=1e-12)


def test_kaplan_optimum_matches_numerical_minimum():
    nat = {"alpha_N": 0.076, "alpha_D": 0.095, "N_c": 8.8e13, "D_c": 5.4e13}
    n_opt, _ = kaplan_optimal({k: np.array(v) for k, v in nat.items()}, np.array(1e21))
    loss = lambda n, d: ((nat["N_c"] / n) ** (nat["alpha_N"] / nat["alpha_D"]) + nat["D_c"] / d) ** nat["alpha_D"]  # noqa: E731
    np.testing.assert_allclose(n_opt, _numerical_optimum(loss, 1e21), rtol=1e-6)


def test_log_space_stays_finite_in_float32():
    """The log-sum-exp form keeps N**-alpha finite where the sum form underflows (Besiroglu et al. 2024)."""
    theta = {k: jnp.float32(v) for k, v in {"e": 0.5, "a_c": 6.0, "alpha": 0.35, "b_c": 7.5, "beta": 0.37}.items()}
    x = {"params": jnp.log(jnp.float32(1e12)) * jnp.ones(2, jnp.float32), "tokens": jnp.log(jnp.float32(1e13)) * jnp.ones(2, jnp.float32)}
    assert np.all(np.isfinite(np.asarray(get_law("chinchilla").log_loss(theta, x))))


def test_unknown_law_lists_known_ones():
    with pytest.raises(ValueError, match="known laws: chinchilla, compute-power-law, kaplan"):
        get_law("chinchila")
