"""ModelSpec + data -> numpyro model function.

One function serves prior predictive simulation and fitting: the observed log
losses are passed as ``log_loss=None`` to simulate (numpyro practice). Inputs
arrive as centred log values (see :mod:`bayescale.laws`), so the data-dependent
part is computed once, outside the model.

Geometry. For a sum-of-terms law such as Chinchilla, the data pin the *total*
loss at the centre of the data, ``L_c = E + A_c + B_c``, far better than its
split into terms, so in the card's coordinates (``e``, ``a_c``, ``b_c``) the
posterior is a thin curved shell ``exp(e) + exp(a_c) + exp(b_c) = L_c`` along which
the exponents bend too (the E-A-alpha ridge; see docs/concepts.md). NUTS samples
instead ``log L_c`` and stick-breaking logits of each term's share of it. That
map has a unit Jacobian determinant, so the card's priors on ``e``, ``a_c``,
``b_c`` carry over exactly as a ``numpyro.factor``; the shell becomes a flat
direction of the new coordinates. For the compute power law, which has a single
reducible term, the exponent is reached through the term's log slope at the
centre as well (:attr:`bayescale.laws.Law.slope_exponents`), which straightens
the remaining alpha-share ridge.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from .coordinates import LOG_LOSS_CENTRE, share_logit_names, terms_from_shares
from .data import RunTable
from .spec import ModelSpec


def centre_of(runs: RunTable, spec: ModelSpec) -> dict[str, float]:
    """Mean log value of each law input in ``runs``: the centring point of the fit."""
    data = runs.data
    return {name: float(np.mean(np.log(data[name].to_numpy(dtype=float)))) for name in spec.law.inputs}


def centred_inputs(values: Mapping[str, np.ndarray], centre: Mapping[str, float]) -> dict[str, jnp.ndarray]:
    """Centred log inputs ``log(value) - centre`` for each input of the law."""
    return {name: jnp.asarray(np.log(np.asarray(values[name], dtype=float)) - centre[name]) for name in centre}


def _flat():
    # numpyro cannot sample an improper site; fitting never needs to (the optimiser and NUTS
    # start from init_to_uniform), and simulation draws the card's priors directly instead.
    return dist.ImproperUniform(dist.constraints.real, (), ())


def make_model(spec: ModelSpec):
    """Build the numpyro model function for a card.

    Parameters
    ----------
    spec
        The parsed model card.

    Returns
    -------
    callable
        ``model(x, log_loss=None, mask=None)``: ``x`` maps each law input to centred
        log values (one per observation); ``log_loss`` are the observed log losses,
        or ``None`` to simulate them from the prior; ``mask`` (booleans) leaves out
        the padding rows of a data set batched with larger ones (:mod:`bayescale.parallel`).
        It returns the law's parameters, so that a downstream card can fit it jointly
        (:mod:`bayescale.downstream`).
    """
    law = spec.law
    priors = {name: prior.to_numpyro() for name, prior in spec.priors.items()}
    reparameterised = len(law.terms) >= 2

    def model(x: Mapping[str, jnp.ndarray], log_loss: jnp.ndarray | None = None, mask: jnp.ndarray | None = None):
        theta = {}
        if reparameterised and log_loss is not None:
            # Flat base measure on (log L_c, logits); the unit Jacobian means adding the card's
            # prior log-densities of the terms gives exactly the card's prior (module docstring).
            log_total = numpyro.sample(LOG_LOSS_CENTRE, _flat())
            logits = [numpyro.sample(name, _flat()) for name in share_logit_names(law)]
            for name, value in zip(law.terms, terms_from_shares(log_total, logits)):
                theta[name] = numpyro.deterministic(name, value)
                numpyro.factor(f"prior_{name}", priors[name].log_prob(value))
            for term, exponent in law.slope_exponents.items():
                # The data pin the slope exponent * exp(term) better than the exponent, which would
                # otherwise trade off against the shares along a curved ridge: sample the log slope.
                # Jacobian: |d exponent / d log slope| = exponent.
                log_slope = numpyro.sample(f"log_slope_{term}", _flat())
                theta[exponent] = numpyro.deterministic(exponent, jnp.exp(log_slope - theta[term]))
                numpyro.factor(f"prior_{exponent}", priors[exponent].log_prob(theta[exponent]) + jnp.log(theta[exponent]))
        for name in law.parameters:
            if name not in theta:
                theta[name] = numpyro.sample(name, priors[name])
        sigma = numpyro.sample("sigma", priors["sigma"])
        mean = law.log_loss(theta, x)
        if spec.likelihood == "student_t":
            # Student-t on log loss: the Bayesian counterpart of the Huber loss used by
            # Hoffmann et al. (2022) and Besiroglu et al. (2024), with the tail weight learned.
            noise = dist.StudentT(numpyro.sample("nu", priors["nu"]), mean, sigma)
        else:
            noise = dist.Normal(mean, sigma)
        with numpyro.plate("obs", mean.shape[0]), numpyro.handlers.mask(mask=True if mask is None else mask):
            numpyro.sample("log_loss", noise, obs=log_loss)
        return theta

    return model
