import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

from bayescale import ModelSpec
from bayescale.coordinates import LOG_LOSS_CENTRE, share_logit_names, terms_from_shares
from bayescale.model import make_model


@pytest.mark.parametrize("k", [2, 3])
def test_share_map_has_unit_jacobian(k):
    """The card's priors carry over exactly only if |det d(terms)/d(log total, logits)| = 1."""

    def terms(v):
        return jnp.stack(terms_from_shares(v[0], list(v[1:])))

    point = jnp.array([0.9, -0.4, 1.3][:k])
    assert abs(float(jnp.linalg.det(jax.jacfwd(terms)(point)))) == pytest.approx(1.0, abs=1e-12)


def test_terms_add_up_to_the_total():
    log_terms = terms_from_shares(jnp.log(3.0), [0.3, -1.1])
    assert float(jnp.exp(jnp.stack(log_terms)).sum()) == pytest.approx(3.0, rel=1e-12)


@pytest.mark.parametrize("card, shapes", [("chinchilla", (0.4, -0.2)), ("compute-power-law", (0.4,))])
def test_sampler_density_is_the_cards_posterior(card, shapes):
    """In the sampler's coordinates u, the model's log-density must equal the card's prior and
    likelihood at the card's parameters T(u) plus log|det dT/du| (change of variables), with the
    Jacobian computed numerically here, not taken from the implementation."""
    spec = ModelSpec.load(card)
    model = make_model(spec)
    x = {k: jnp.array([-1.0, 0.0, 1.0]) for k in spec.law.inputs}
    y = jnp.log(jnp.array([3.0, 2.7, 2.6]))
    sites = [LOG_LOSS_CENTRE, *share_logit_names(spec.law), *(f"log_slope_{t}" for t in spec.law.slope_exponents)]
    sites += [n for n in spec.law.parameters if n not in spec.law.terms and n not in spec.law.slope_exponents.values()]
    u = jnp.array([np.log(2.7), *shapes, *[-1.5] * len(spec.law.slope_exponents), *[0.3] * (len(sites) - 1 - len(shapes) - len(spec.law.slope_exponents))])
    noise = {"sigma": 0.02, "nu": 5.0}

    def card_params(vector):
        _, trace = log_density(model, (x, y), {}, {**dict(zip(sites, vector)), **noise})
        return jnp.stack([trace[n]["value"] for n in spec.law.parameters])

    got, trace = log_density(model, (x, y), {}, {**dict(zip(sites, u)), **noise})
    theta = dict(zip(spec.law.parameters, card_params(u)))
    expected = sum(spec.priors[n].to_numpyro().log_prob(theta[n]) for n in spec.law.parameters)
    expected += sum(spec.priors[n].to_numpyro().log_prob(v) for n, v in noise.items())
    expected += trace["log_loss"]["fn"].log_prob(y).sum()
    np.testing.assert_allclose(trace["log_loss"]["fn"].loc, spec.law.log_loss(theta, x), rtol=1e-12)
    _, log_det = jnp.linalg.slogdet(jax.jacfwd(card_params)(u))
    np.testing.assert_allclose(got, expected + log_det, rtol=1e-10)


def test_masked_rows_leave_the_density_unchanged():
    """Padding rows of a batched data set (bayescale.parallel) must contribute nothing."""
    model = make_model(ModelSpec.load("chinchilla"))
    x = {k: jnp.array([-1.0, 0.0, 1.0]) for k in ("params", "tokens")}
    y = jnp.log(jnp.array([3.0, 2.7, 2.6]))
    point = {LOG_LOSS_CENTRE: 1.0, "logit_share_e": 0.4, "logit_share_a_c": -0.2, "alpha": 0.3, "beta": 0.3, "sigma": 0.02, "nu": 5.0}
    padded_x = {k: jnp.concatenate([v, jnp.array([0.0, 7.0])]) for k, v in x.items()}
    padded_y = jnp.concatenate([y, jnp.array([1.0, -3.0])])
    mask = jnp.array([True, True, True, False, False])
    plain, _ = log_density(model, (x, y), {}, point)
    padded, _ = log_density(model, (padded_x, padded_y, mask), {}, point)
    np.testing.assert_allclose(padded, plain, rtol=1e-12)
