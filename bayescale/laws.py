"""Scaling-law forms as pure JAX functions, and the registry of laws.

Every law is computed in log space: ``log L`` is a log-sum-exp of per-term
logarithms, so ``A / N**alpha`` never underflows and the gradient stays finite
(Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", sec. 2).

A law sees its inputs *centred*: ``x = log(input) - centre``, where ``centre``
is the mean log input of the fitted data. Its intercepts are then the log-size
of each term at the centre of the data, which decorrelates intercept and
exponent in the posterior (the same reason brms centres predictors before it
puts a prior on the intercept). :meth:`Law.natural` maps the centred
parameters back to the published parameterisation (``E, A, alpha, ...``).

This module knows nothing of numpyro, pandas or xarray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
Params = Mapping[str, Array]


@dataclass(frozen=True)
class Law:
    """A scaling-law form.

    Attributes
    ----------
    name
        Registry key, as used by model cards (``law = "chinchilla"``).
    inputs
        Data columns the law reads, e.g. ``("params", "tokens")``.
    parameters
        Names of the sampled (centred) parameters, in a fixed order.
    reported
        Names of the published parameters that :meth:`natural` returns.
    terms
        The log-intercepts of the law's additive terms (``("e", "a_c", "b_c")``
        for Chinchilla): at the centre of the data, ``L = sum(exp(terms))``.
        Empty for laws that are not such a sum.
    slope_exponents
        Term -> exponent pairs whose exponent the sampler reaches through the term's
        slope at the centre, ``exponent * exp(term)`` (see :mod:`bayescale.model`).
    log_loss_fn
        ``(theta, x) -> log L``; ``theta`` maps parameter names to arrays that
        broadcast against the centred log inputs ``x`` (a dict keyed by input).
    natural_fn
        ``(theta, centre) -> dict`` of the published parameters (``E``, ``A``,
        ``alpha``, ...), where ``centre`` maps each input to its centring value.
    optimal_fn
        ``(natural, flops) -> (params, tokens)``: the compute-optimal allocation
        under ``flops = 6 N D``, or ``None`` where the law has no N/D trade-off.
    exponents
        For each input, the exponent it identifies: used to demand enough
        distinct values of that input in the data.
    reference
        Paper and equation the form comes from.
    """

    name: str
    inputs: tuple[str, ...]
    parameters: tuple[str, ...]
    reported: tuple[str, ...]
    terms: tuple[str, ...]
    slope_exponents: Mapping[str, str]
    log_loss_fn: Callable[[Params, Mapping[str, Array]], Array]
    natural_fn: Callable[[Params, Mapping[str, float]], dict]
    optimal_fn: Callable[[Mapping[str, np.ndarray], np.ndarray], tuple] | None
    exponents: Mapping[str, str]
    reference: str

    def log_loss(self, theta: Params, x: Mapping[str, Array]) -> Array:
        """Log loss at centred log inputs ``x`` (see module docstring)."""
        return self.log_loss_fn(theta, x)

    def natural(self, theta: Params, centre: Mapping[str, float]) -> dict:
        """Published-parameterisation values of centred parameters ``theta``."""
        return self.natural_fn(theta, centre)


# --- compute power law -------------------------------------------------------


def compute_power_law(theta: Params, x: Mapping[str, Array]) -> Array:
    """Log loss of L(C) = E + A * C**(-alpha).

    ``log L = logsumexp(a_c - alpha * x_C, e)`` with ``x_C = log C - centre_C``
    and ``a_c = log A - alpha * centre_C`` the log reducible loss at the
    centre of the data.

    References
    ----------
    Kaplan et al. (2020), "Scaling Laws for Neural Language Models", eq. 1.3
    (there without the irreducible term); Hoffmann et al. (2022) sec. 3 use
    the form with ``E``.
    """
    return jnp.logaddexp(theta["a_c"] - theta["alpha"] * x["flops"], theta["e"])


def _compute_power_law_natural(theta: Params, centre: Mapping[str, float]) -> dict:
    a = theta["a_c"] + theta["alpha"] * centre["flops"]
    return {"E": jnp.exp(theta["e"]), "A": jnp.exp(a), "alpha": theta["alpha"]}


# --- Chinchilla ----------------------------------------------------------------


def chinchilla(theta: Params, x: Mapping[str, Array]) -> Array:
    """Log loss of L(N, D) = E + A / N**alpha + B / D**beta.

    ``log L = logsumexp([a_c - alpha x_N, b_c - beta x_D, e])`` with centred
    log sizes ``x``; ``a_c``, ``b_c`` are the log of each reducible term at the
    centre of the data.

    References
    ----------
    Hoffmann et al. (2022), "Training Compute-Optimal Large Language Models",
    eq. 2; the log-sum-exp form is eq. 3 of Besiroglu et al. (2024),
    "Chinchilla Scaling: A replication attempt".
    """
    n_term = theta["a_c"] - theta["alpha"] * x["params"]
    d_term = theta["b_c"] - theta["beta"] * x["tokens"]
    return jnp.logaddexp(jnp.logaddexp(n_term, d_term), theta["e"])


def _chinchilla_natural(theta: Params, centre: Mapping[str, float]) -> dict:
    a = theta["a_c"] + theta["alpha"] * centre["params"]
    b = theta["b_c"] + theta["beta"] * centre["tokens"]
    return {
        "E": jnp.exp(theta["e"]),
        "A": jnp.exp(a),
        "alpha": theta["alpha"],
        "B": jnp.exp(b),
        "beta": theta["beta"],
    }


def chinchilla_optimal(natural: Mapping[str, np.ndarray], flops: np.ndarray) -> tuple:
    """Compute-optimal N and D for the Chinchilla law under C = 6 N D.

    N_opt = G (C/6)**(beta/(alpha+beta)), D_opt = (C/6) / N_opt, with
    G = (alpha A / (beta B))**(1/(alpha+beta)). Evaluated in log space.

    References
    ----------
    Hoffmann et al. (2022), eq. 4.
    """
    alpha, beta = natural["alpha"], natural["beta"]
    log_c6 = np.log(flops / 6.0)
    log_g = (np.log(alpha) + np.log(natural["A"]) - np.log(beta) - np.log(natural["B"])) / (alpha + beta)
    log_n = log_g + beta / (alpha + beta) * log_c6
    return np.exp(log_n), np.exp(log_c6 - log_n)


# --- Kaplan ------------------------------------------------------------------


def kaplan(theta: Params, x: Mapping[str, Array]) -> Array:
    """Log loss of L(N, D) = [(N_c / N)**(alpha_N / alpha_D) + D_c / D]**alpha_D.

    ``log L = alpha_D * logsumexp(r (n_c - x_N), d_c - x_D)`` with
    ``r = alpha_N / alpha_D`` and ``n_c``, ``d_c`` the log critical sizes
    measured from the centre of the data. The form has no irreducible loss.

    References
    ----------
    Kaplan et al. (2020), "Scaling Laws for Neural Language Models", eq. 1.5.
    """
    r = theta["alpha_N"] / theta["alpha_D"]
    inner = jnp.logaddexp(r * (theta["n_c"] - x["params"]), theta["d_c"] - x["tokens"])
    return theta["alpha_D"] * inner


def _kaplan_natural(theta: Params, centre: Mapping[str, float]) -> dict:
    return {
        "alpha_N": theta["alpha_N"],
        "alpha_D": theta["alpha_D"],
        "N_c": jnp.exp(theta["n_c"] + centre["params"]),
        "D_c": jnp.exp(theta["d_c"] + centre["tokens"]),
    }


def kaplan_optimal(natural: Mapping[str, np.ndarray], flops: np.ndarray) -> tuple:
    """Compute-optimal N and D for the Kaplan law under C = 6 N D.

    With D = C / (6N), L is monotone in t(N) = (N_c/N)**r + 6 N D_c / C; setting
    dt/dN = 0 gives N**(1+r) = r N_c**r C / (6 D_c), r = alpha_N / alpha_D.

    References
    ----------
    Derived from Kaplan et al. (2020), eq. 1.5.
    """
    r = natural["alpha_N"] / natural["alpha_D"]
    log_c6 = np.log(flops / 6.0)
    log_n = (np.log(r) + r * np.log(natural["N_c"]) + log_c6 - np.log(natural["D_c"])) / (1.0 + r)
    return np.exp(log_n), np.exp(log_c6 - log_n)


LAWS: dict[str, Law] = {
    law.name: law
    for law in (
        Law(
            name="compute-power-law",
            inputs=("flops",),
            parameters=("e", "a_c", "alpha"),
            reported=("E", "A", "alpha"),
            terms=("e", "a_c"),
            # One reducible term: the data's slope dL/dlog C at the centre is alpha * exp(a_c).
            slope_exponents={"a_c": "alpha"},
            log_loss_fn=compute_power_law,
            natural_fn=_compute_power_law_natural,
            optimal_fn=None,
            exponents={"flops": "alpha"},
            reference="Kaplan et al. (2020) eq. 1.3; Hoffmann et al. (2022) sec. 3",
        ),
        Law(
            name="chinchilla",
            inputs=("params", "tokens"),
            parameters=("e", "a_c", "alpha", "b_c", "beta"),
            reported=("E", "A", "alpha", "B", "beta"),
            terms=("e", "a_c", "b_c"),
            # Not for Chinchilla: where one exponent is well identified and the split of the
            # reducible loss is not (open_lm runs, docs/concepts.md), the slope becomes the
            # poorly identified coordinate; R-hat rose from 1.004 to 1.041 in a trial.
            slope_exponents={},
            log_loss_fn=chinchilla,
            natural_fn=_chinchilla_natural,
            optimal_fn=chinchilla_optimal,
            exponents={"params": "alpha", "tokens": "beta"},
            reference="Hoffmann et al. (2022) eq. 2; Besiroglu et al. (2024) eq. 3",
        ),
        Law(
            name="kaplan",
            inputs=("params", "tokens"),
            parameters=("alpha_N", "alpha_D", "n_c", "d_c"),
            reported=("alpha_N", "alpha_D", "N_c", "D_c"),
            terms=(),
            slope_exponents={},
            log_loss_fn=kaplan,
            natural_fn=_kaplan_natural,
            optimal_fn=kaplan_optimal,
            exponents={"params": "alpha_N", "tokens": "alpha_D"},
            reference="Kaplan et al. (2020) eq. 1.5",
        ),
    )
}


def get_law(name: str) -> Law:
    """Look up a law by name, with a list of the known ones on failure."""
    try:
        return LAWS[name]
    except KeyError:
        raise ValueError(f"unknown law {name!r}; known laws: {', '.join(sorted(LAWS))}") from None
