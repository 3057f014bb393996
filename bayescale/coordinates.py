"""The sampler's coordinates of a law: unconstrained, and shaped by what data pin down.

A card states its priors on the law's parameters (``e, a_c, alpha, b_c, beta`` for
Chinchilla), but NUTS moves better in other coordinates (see :mod:`bayescale.model`):

* ``log_loss_centre``: the log total loss at the centre of the data, which the data pin
  far better than its split into terms;
* ``logit_share_<term>``: stick-breaking logits of each term's share of that loss (all
  terms but the last);
* ``log_slope_<term>`` for a law's slope exponents (the compute law's alpha is reached
  through ``alpha * exp(a_c)``, the slope the data see), ``log_<exponent>`` for the other
  exponents, and the remaining parameters as they are.

:func:`to_parameters` maps coordinates to the card's parameters and returns the log
Jacobian determinant of that map, so a card's prior is exact in these coordinates. The
hierarchical cards (:mod:`bayescale.hierarchy`) pool families *in these coordinates*:
each is unbounded, and a family's deviation in it reads plainly (a relative difference in
loss, in a share's odds, in an exponent).

This module is pure JAX, like :mod:`bayescale.laws`.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
from jax.nn import log_sigmoid

from .laws import Law

LOG_LOSS_CENTRE = "log_loss_centre"


def share_logit_names(law: Law) -> tuple[str, ...]:
    """Coordinates of the stick-breaking logits: one per term but the last."""
    return tuple(f"logit_share_{name}" for name in law.terms[:-1])


def coordinate_names(law: Law) -> tuple[str, ...]:
    """The sampler's coordinates of ``law``, in a fixed order (module docstring)."""
    names = [LOG_LOSS_CENTRE, *share_logit_names(law)] if law.terms else []
    slope_term = {exponent: term for term, exponent in law.slope_exponents.items()}
    for name in law.parameters:
        if name in law.terms:
            continue
        if name in slope_term:
            names.append(f"log_slope_{slope_term[name]}")
        elif name in law.exponents.values():
            names.append(f"log_{name}")
        else:
            names.append(name)
    return tuple(names)


def terms_from_shares(log_total, logits) -> list:
    """Log of each term from the log total and stick-breaking logits of the shares.

    Term k gets share sigmoid(z_k) of what terms 0..k-1 left; the last term takes the rest.
    The map (log total, logits) -> log terms has unit Jacobian determinant.
    """
    terms, log_rest = [], log_total
    for z in logits:
        terms.append(log_rest + log_sigmoid(z))
        log_rest = log_rest + log_sigmoid(-z)
    return [*terms, log_rest]


def to_parameters(law: Law, u: Mapping[str, jnp.ndarray]) -> tuple[dict, jnp.ndarray]:
    """The card's parameters at coordinates ``u``, and the map's log Jacobian determinant.

    Parameters
    ----------
    law
        The law.
    u
        One array per name of :func:`coordinate_names`, all of one shape.

    Returns
    -------
    (theta, log_jacobian)
        ``theta`` maps each of ``law.parameters`` to an array of that shape;
        ``log_jacobian`` is ``log |d theta / d u|``, to be added to the card's prior
        log-density of ``theta``.
    """
    theta: dict = {}
    if law.terms:
        logits = [u[name] for name in share_logit_names(law)]
        theta.update(zip(law.terms, terms_from_shares(u[LOG_LOSS_CENTRE], logits)))
    log_jacobian = jnp.zeros_like(u[coordinate_names(law)[0]])
    slope_term = {exponent: term for term, exponent in law.slope_exponents.items()}
    for name in law.parameters:
        if name in theta:
            continue
        if name in slope_term:
            # exponent = slope / exp(term): |d exponent / d log slope| = exponent.
            log_value = u[f"log_slope_{slope_term[name]}"] - theta[slope_term[name]]
        elif name in law.exponents.values():
            log_value = u[f"log_{name}"]
        else:
            theta[name] = u[name]
            continue
        theta[name] = jnp.exp(log_value)
        log_jacobian = log_jacobian + log_value
    return theta, log_jacobian


def card_log_prior(law: Law, priors: Mapping, u: Mapping[str, jnp.ndarray]) -> tuple[dict, jnp.ndarray]:
    """The card's parameters at ``u`` and the card's prior log-density expressed in coordinates.

    ``priors`` maps each law parameter to a numpyro distribution.
    """
    theta, log_jacobian = to_parameters(law, u)
    return theta, sum(priors[name].log_prob(theta[name]) for name in law.parameters) + log_jacobian


def from_parameters(law: Law, theta: Mapping[str, jnp.ndarray]) -> dict:
    """The inverse of :func:`to_parameters`: coordinates of the card's parameters ``theta``."""
    u: dict = {}
    if law.terms:
        log_rest = jnp.logaddexp.reduce(jnp.stack([jnp.asarray(theta[t]) for t in law.terms]), axis=0)
        u[LOG_LOSS_CENTRE] = log_rest
        for name, term in zip(share_logit_names(law), law.terms[:-1]):
            # share = exp(term - rest); logit = log(share) - log(1 - share)
            log_share = theta[term] - log_rest
            u[name] = log_share - jnp.log1p(-jnp.exp(log_share))
            log_rest = log_rest + jnp.log1p(-jnp.exp(log_share))
    slope_term = {exponent: term for term, exponent in law.slope_exponents.items()}
    for name in law.parameters:
        if name in law.terms:
            continue
        if name in slope_term:
            u[f"log_slope_{slope_term[name]}"] = jnp.log(theta[name]) + theta[slope_term[name]]
        elif name in law.exponents.values():
            u[f"log_{name}"] = jnp.log(theta[name])
        else:
            u[name] = theta[name]
    return u
