"""ModelSpec + data -> numpyro model function.

One function serves prior predictive, fitting and posterior predictive: the
observed log losses are passed as ``log_loss=None`` to simulate (numpyro
practice). Inputs arrive as centred log values (see :mod:`bayescale.laws`),
so the data-dependent part is computed once, outside the model.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from .data import RunTable
from .spec import ModelSpec


def centre_of(runs: RunTable, spec: ModelSpec) -> dict[str, float]:
    """Mean log value of each law input in ``runs``: the centring point of the fit."""
    data = runs.data
    return {name: float(np.mean(np.log(data[name].to_numpy(dtype=float)))) for name in spec.law.inputs}


def centred_inputs(values: Mapping[str, np.ndarray], centre: Mapping[str, float]) -> dict[str, jnp.ndarray]:
    """Centred log inputs ``log(value) - centre`` for each input of the law."""
    return {name: jnp.asarray(np.log(np.asarray(values[name], dtype=float)) - centre[name]) for name in centre}


def make_model(spec: ModelSpec):
    """Build the numpyro model function for a card.

    Parameters
    ----------
    spec
        The parsed model card.

    Returns
    -------
    callable
        ``model(x, log_loss=None)``: ``x`` maps each law input to centred log
        values (one per observation); ``log_loss`` are the observed log losses,
        or ``None`` to simulate them.
    """
    law = spec.law
    priors = {name: prior.to_numpyro() for name, prior in spec.priors.items()}

    def model(x: Mapping[str, jnp.ndarray], log_loss: jnp.ndarray | None = None):
        theta = {name: numpyro.sample(name, priors[name]) for name in law.parameters}
        sigma = numpyro.sample("sigma", priors["sigma"])
        mean = law.log_loss(theta, x)
        if spec.likelihood == "student_t":
            # Student-t on log loss: the Bayesian counterpart of the Huber loss used by
            # Hoffmann et al. (2022) and Besiroglu et al. (2024), with the tail weight learned.
            noise = dist.StudentT(numpyro.sample("nu", priors["nu"]), mean, sigma)
        else:
            noise = dist.Normal(mean, sigma)
        with numpyro.plate("obs", mean.shape[0]):
            numpyro.sample("log_loss", noise, obs=log_loss)

    return model
