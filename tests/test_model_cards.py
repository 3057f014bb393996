"""Every bundled card loads, compiles and gives plausible prior-predictive losses."""

import jax
import numpy as np
import pytest
from numpyro.infer import Predictive

from bayescale import ModelSpec, available_cards
from bayescale.model import centred_inputs, make_model

# A typical small-run sweep: 1e8-parameter models on 2e9 tokens at the data centre.
CENTRE = {"params": np.log(1e8), "tokens": np.log(2e9), "flops": np.log(6 * 1e8 * 2e9)}
POINTS = {"params": np.array([1e7, 1e8, 1e9]), "tokens": np.array([2e8, 2e9, 2e10])}
POINTS["flops"] = 6 * POINTS["params"] * POINTS["tokens"]


def test_bundled_cards_are_listed():
    assert {"chinchilla", "compute-power-law", "kaplan"} <= set(available_cards())


@pytest.mark.parametrize("name", ["chinchilla", "compute-power-law", "kaplan"])
def test_card_prior_predictive_is_plausible(name):
    spec = ModelSpec.load(name)
    assert all(prior.why for prior in spec.priors.values()), "every prior states its reason"
    centre = {k: CENTRE[k] for k in spec.law.inputs}
    x = centred_inputs(POINTS, centre)
    draws = Predictive(make_model(spec), num_samples=2000)(jax.random.PRNGKey(0), x)
    assert draws["log_loss"].shape == (2000, 3)
    # The law's loss under the prior (the Student-t noise, with nu drawn as low as ~0.3,
    # has tails too heavy for quantiles of the noisy draws to say anything about the law).
    theta = {name: np.asarray(draws[name])[:, None] for name in spec.law.parameters}
    loss = np.exp(np.asarray(spec.law.log_loss(theta, {k: v[None, :] for k, v in x.items()})))
    # Language-model losses in nats lie between ~1 (large models) and ~10 (ln of a
    # vocabulary of ~20k, a uniform guess); a weakly informative prior puts its median
    # there and most of its mass within a factor of a few either side.
    median = np.median(loss, axis=0)
    assert np.all((median > 1.0) & (median < 10.0)), median
    inner = np.quantile(loss, [0.05, 0.95], axis=0)
    assert np.all(inner[0] > 0.2) and np.all(inner[1] < 100.0), inner
    # Observation noise on log loss: typically a few percent.
    assert 0.01 < np.median(np.asarray(draws["sigma"])) < 0.1


def test_unknown_card_lists_bundled_ones():
    with pytest.raises(ValueError, match="no model card named 'chinchila'; bundled cards: chinchilla"):
        ModelSpec.load("chinchila")


def test_card_from_path(tmp_path):
    text = ModelSpec.load("chinchilla").text.replace('loc = 0.5', 'loc = 0.6', 1)
    path = tmp_path / "mine.toml"
    path.write_text(text)
    assert ModelSpec.load(path).priors["e"].arguments["loc"] == 0.6


@pytest.mark.parametrize(
    "edit, message",
    [
        (('distribution = "LogNormal"', 'distribution = "LogNormale"'), "unknown prior distribution"),
        (("scale = 0.6", "sigma = 0.6"), "unknown arguments"),
        (('kind = "student_t"', 'kind = "cauchy"'), "likelihood.kind must be one of"),
        (("[priors.beta]", "[priors.gamma]"), r"needs priors for \['beta'\]"),
        (('law = "chinchilla"', "law = chinchilla"), "not valid TOML"),
    ],
)
def test_bad_card_is_named(edit, message):
    text = ModelSpec.load("chinchilla").text.replace(*edit, 1)
    with pytest.raises(ValueError, match=message):
        ModelSpec.from_toml(text)
