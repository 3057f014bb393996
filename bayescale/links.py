"""Accuracy links: how a downstream task's accuracy rises with a predictor of scale.

Every link here has the form (DESIGN.md section 4)::

    accuracy = chance + (ceiling - chance) * g(x; midpoint, slope)

where ``x`` is the predictor (log10 training compute, or minus the loss), ``chance`` the
accuracy of guessing, ``ceiling`` the accuracy the task saturates at, and ``g`` rises from 0
to 1: the fraction of the headroom above chance that the model has reached. The links
differ in the shape of ``g``:

* ``sigmoid``: ``g = sigmoid(slope * (x - midpoint))``, the logistic rise used for
  emergent abilities (Wei et al. 2022, "Emergent abilities of large language models";
  Ruan et al. 2024, "Observational scaling laws", eq. 3) and, on minus the loss, for
  loss-to-accuracy links (Gadre et al. 2024 discuss both);
* ``exponential``: ``g = exp(-slope * softplus(midpoint - x))``. On ``x = -L`` and far
  below the ceiling this is Gadre et al. (2024, "Language models scale reliably with
  over-training and on downstream tasks", eq. 4), ``Err = eps - k exp(-gamma L)``, with
  ``gamma = slope`` and ``k`` absorbed into ``midpoint``; the softplus lets ``g`` reach the
  ceiling smoothly instead of passing 1 (where Gadre et al.'s form would leave [0, 1]).

An emergence threshold is the predictor value at which accuracy first exceeds
``chance + delta``: the root of ``g(x) = delta / (ceiling - chance)``, which each link
solves in closed form (:meth:`Link.solve`); where the ceiling lies below ``chance + delta``
the task never gets there, and the threshold is infinite.

This module knows nothing of numpyro, pandas or xarray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Link:
    """An accuracy link ``g`` (see module docstring).

    Attributes
    ----------
    name
        Registry key, as model cards name it (``link = "sigmoid"``).
    fraction_fn
        ``(x, midpoint, slope) -> g``, the fraction of the headroom reached (JAX).
    solve_fn
        ``(fraction, midpoint, slope) -> x`` with ``g(x) = fraction`` for ``0 < fraction < 1``
        (NumPy).
    reference
        Paper and equation the form comes from.
    """

    name: str
    fraction_fn: Callable
    solve_fn: Callable
    reference: str

    def accuracy(self, x, midpoint, slope, chance, ceiling):
        """Expected accuracy at predictor ``x``; all arguments broadcast."""
        return chance + (ceiling - chance) * self.fraction_fn(x, midpoint, slope)

    def solve(self, fraction, midpoint, slope) -> np.ndarray:
        """The predictor value where ``g`` reaches ``fraction`` of the headroom; ``+inf``
        where ``fraction >= 1`` (the ceiling is never passed) and ``-inf`` where it is <= 0."""
        fraction = np.asarray(fraction, dtype=float)
        inside = (fraction > 0) & (fraction < 1)
        safe = np.where(inside, fraction, 0.5)
        with np.errstate(over="ignore", divide="ignore"):
            x = self.solve_fn(safe, np.asarray(midpoint, dtype=float), np.asarray(slope, dtype=float))
        return np.where(inside, x, np.where(fraction >= 1, np.inf, -np.inf))


def _sigmoid(x, midpoint, slope):
    # The logistic primitive, not exp(-softplus(-u)): the same values, and a lone task's log
    # density (fit_many's batches) took 26% less time to evaluate.
    return jax.nn.sigmoid(slope * (x - midpoint))


def _sigmoid_solve(fraction, midpoint, slope):
    return midpoint + np.log(fraction / (1.0 - fraction)) / slope


def _exponential(x, midpoint, slope):
    return jnp.exp(-slope * jnp.logaddexp(0.0, midpoint - x))


def _exponential_solve(fraction, midpoint, slope):
    # softplus(midpoint - x) = -log(fraction) / slope, and softplus^-1(s) = log(expm1(s)).
    return midpoint - np.log(np.expm1(-np.log(fraction) / slope))


LINKS: dict[str, Link] = {
    "sigmoid": Link("sigmoid", _sigmoid, _sigmoid_solve, "Wei et al. (2022); Ruan et al. (2024) eq. 3"),
    "exponential": Link("exponential", _exponential, _exponential_solve, "Gadre et al. (2024) eq. 4"),
}


def get_link(name: str) -> Link:
    """The link registered as ``name``; ``ValueError`` naming the choices otherwise."""
    if name not in LINKS:
        raise ValueError(f"unknown accuracy link {name!r}; choose one of {', '.join(LINKS)}")
    return LINKS[name]
