"""Emergence thresholds: when does a task take off?

For each task of a downstream fit and each posterior draw, the threshold is the compute
at which the task's expected accuracy first exceeds ``chance + delta`` (Wei et al. 2022
call a task emergent when that happens abruptly). Two ways to set ``delta``:

* ``fraction`` (the default, 0.1): a fraction of the task's own headroom, the rise from
  chance to its fitted ceiling. The threshold is then where the task has made 10% of the
  gain it will ever make: the onset of the rise. It exists in every draw, so the interval
  is always finite; a task that has not risen within the data gets a threshold posterior
  that lies beyond the data and is as wide as the data leave it, never a point.
* ``delta``: an absolute accuracy above chance (e.g. 0.05). In draws whose ceiling lies
  below ``chance + delta`` the task never gets there: the threshold is infinite, and the
  share of such draws is reported as ``p_never``. (For loss-linked cards a compute is also
  infinite where the threshold loss lies below the loss law's irreducible loss.)

Also reported: the midpoint of the rise (half the headroom), and ``p_emerged_by``, the
posterior probability that the threshold lies at or below a compute ``by_flops``. For
loss-linked cards every threshold is also given as a loss (the loss at which the rise
starts), and the compute is the loss law's inverse at that loss.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .downstream import DownstreamFit
from .predict import QUANTILES

#: Default threshold: this fraction of a task's headroom above chance (module docstring).
DEFAULT_FRACTION = 0.1


def emergence(
    fit: DownstreamFit,
    *,
    delta: float | None = None,
    fraction: float | None = None,
    by_flops: float | None = None,
    family: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Posterior of each task's emergence threshold and rise midpoint.

    Parameters
    ----------
    fit
        A fit of a downstream card (``bayescale.fit(runs, "downstream-sigmoid")``).
    delta
        Threshold as an absolute accuracy above chance; exclusive with ``fraction``.
    fraction
        Threshold as a fraction of each task's headroom (ceiling minus chance); the default,
        :data:`DEFAULT_FRACTION`, when neither is given.
    by_flops
        Compute at which to report ``p_emerged_by``; default: the largest fitted compute
        (has the task emerged within the data?).
    family
        A fitted family, ``"new"`` for an unseen family, or ``None``: the only family of a
        single-family fit, ``"new"`` with several (a family drawn from the population, so the
        interval includes the spread between families).
    seed
        Seed of a new family's draws.

    Returns
    -------
    pandas.DataFrame
        For each task, rows with ``quantity`` = ``threshold_flops`` and ``midpoint_flops``
        (and ``threshold_loss``, ``midpoint_loss`` for loss-linked cards), each with
        ``mean`` (of log10 compute, reported as compute, i.e. the geometric mean; infinite
        if any draw is), quantiles ``q2.5 ... q97.5`` (ordered, possibly ``inf`` above),
        ``p_never``, ``p_emerged_by`` and ``by_flops``; plus ``task``, ``family``,
        ``definition`` (the threshold in words).

    Raises
    ------
    ValueError
        If both ``delta`` and ``fraction`` are given, or either is outside (0, 1).
    """
    delta, fraction = threshold_level(delta, fraction)
    observed = fit.observed()
    by_flops = float(observed["flops"].max()) if by_flops is None else float(by_flops)
    offset = fit.family_offset(family, seed=seed)
    family_name = fit.resolve_family(family)
    rows = []
    for task in fit.tasks:
        theta = fit.task_draws(task)
        definition = f"accuracy above chance + {fraction:g} x (ceiling - chance)" if delta is None else f"accuracy above chance + {delta:g}"
        crossings = {
            "threshold": crossing(fit.spec.link, theta, offset, delta=delta, fraction=fraction),
            "midpoint": crossing(fit.spec.link, theta, offset, fraction=0.5),
        }
        for name, x in crossings.items():
            flops = _compute_at(fit, x)
            with np.errstate(divide="ignore"):
                log_flops = np.log10(flops)
            rows.append(_row(task, family_name, f"{name}_flops", flops, log_flops, flops <= by_flops, by_flops, definition))
            if fit.spec.predictor == "loss":
                loss = fit.centre["loss"] - x
                rows.append(_row(task, family_name, f"{name}_loss", loss, loss, flops <= by_flops, by_flops, definition))
    return pd.DataFrame(rows)


def crossing(link, theta: dict, offset, *, delta: float | None = None, fraction: float | None = None) -> np.ndarray:
    """Where a task's rise crosses chance + ``delta``, or chance + ``fraction`` of its headroom.

    Parameters
    ----------
    link
        The card's link (:mod:`bayescale.links`).
    theta
        Draws of the task's ``midpoint``, ``slope``, ``chance`` and ``ceiling``
        (:meth:`~bayescale.DownstreamFit.task_draws`).
    offset
        Draws of the family's shift along the predictor (:meth:`~bayescale.DownstreamFit.family_offset`).
    delta, fraction
        The level, one of the two (as :func:`threshold_level` returns them).

    Returns
    -------
    numpy.ndarray
        The centred predictor value at the crossing, per draw (not finite where the ceiling
        stays below the level). The predictor is ``x + offset``, so the crossing is at the
        link's root less the offset.
    """
    level = fraction if delta is None else delta / (theta["ceiling"] - theta["chance"])
    return link.solve(level, theta["midpoint"], theta["slope"]) - offset


def threshold_level(delta: float | None, fraction: float | None) -> tuple[float | None, float | None]:
    """The emergence threshold's definition, checked: ``(delta, None)`` or ``(None, fraction)``,
    with :data:`DEFAULT_FRACTION` when neither is given.

    Raises
    ------
    ValueError
        If both are given, or either is outside (0, 1).
    """
    if delta is not None and fraction is not None:
        raise ValueError("give delta (an accuracy above chance) or fraction (of the headroom), not both")
    if delta is not None and not 0 < delta < 1:
        raise ValueError(f"delta is an accuracy above chance, between 0 and 1; got {delta}")
    if delta is None:
        fraction = DEFAULT_FRACTION if fraction is None else fraction
        if not 0 < fraction < 1:
            raise ValueError(f"fraction is a share of the headroom, between 0 and 1; got {fraction}")
    return delta, fraction


def _compute_at(fit: DownstreamFit, x: np.ndarray) -> np.ndarray:
    """Compute at which each draw's predictor equals ``x`` (``+inf`` where it never does)."""
    if fit.spec.predictor == "log_flops":
        with np.errstate(over="ignore"):
            return np.where(np.isfinite(x), 10.0 ** (x + fit.centre["log10_flops"]), np.inf)
    # Loss-linked: the loss law L(C) = E + A C^-alpha reaches loss L at C = (A / (L - E))^(1 / alpha),
    # and never where L <= E (below the irreducible loss).
    loss = fit.centre["loss"] - x
    natural = fit.spec.loss_model.law.natural(fit.draws(list(fit.spec.loss_model.law.parameters)), {"flops": fit.centre["flops"]})
    excess = loss - np.asarray(natural["E"])
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        log_flops = (np.log(np.asarray(natural["A"])) - np.log(excess)) / np.asarray(natural["alpha"])
        flops = np.where((excess > 0) & np.isfinite(x), np.exp(log_flops), np.inf)
    return flops


def _row(task, family, quantity, values, log_values, emerged, by_flops, definition) -> dict:
    finite = np.isfinite(values)
    never = float(np.mean(~finite))
    if quantity.endswith("flops"):
        mean = float(10.0 ** np.mean(log_values)) if finite.all() else float("inf")
    else:
        mean = float(np.mean(values))  # -inf where some draw never reaches the threshold
    row = {"task": task, "family": family, "quantity": quantity, "mean": mean}
    # With infinite draws, interpolating between a finite and an infinite draw gives nan;
    # the inverted-CDF quantile picks a draw, so the quantiles stay ordered (inf at the top).
    method = "linear" if finite.all() else "inverted_cdf"
    row.update({label: float(np.quantile(values, q, method=method)) for label, q in QUANTILES.items()})
    row.update(p_never=never, p_emerged_by=float(np.mean(emerged)), by_flops=by_flops, definition=definition)
    return row
