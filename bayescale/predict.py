"""Questions a loss fit answers: posterior predictive loss, compute-optimal allocation.

Both are computed per posterior draw, so every reported interval carries the
full joint uncertainty of the parameters (no delta method, no plug-in).
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .hierarchy import NEW_FAMILY
from .laws import get_law
from .model import centred_inputs
from .spec import ModelSpec

#: Quantiles reported for predictions (DESIGN.md section 9).
QUANTILES = {"q2.5": 0.025, "q5": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95, "q97.5": 0.975}


def simulate_log_loss(
    spec: ModelSpec,
    posterior: Mapping[str, np.ndarray],
    x: Mapping[str, jnp.ndarray],
    *,
    noise: bool,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Log loss at centred log inputs ``x`` for each posterior draw.

    Parameters
    ----------
    spec
        The model card.
    posterior
        Draws of the card's sampled parameters, all of one shape ``S`` (e.g. ``(chains, draws)``).
    x
        Centred log inputs, each of shape ``(P,)`` (shared by all draws) or
        ``(prod(S), P)`` (one row per draw).
    noise
        Add the likelihood's observation noise (a new run's loss) rather than the
        noise-free law (the expected loss).
    rng
        NumPy random generator, needed when ``noise`` is true.

    Returns
    -------
    numpy.ndarray
        Shape ``S + (P,)``.
    """
    shape = np.shape(posterior[spec.law.parameters[0]])
    theta = {name: jnp.asarray(posterior[name]).reshape(-1, 1) for name in spec.law.parameters}
    x = {k: jnp.atleast_2d(jnp.asarray(v)) for k, v in x.items()}
    log_loss = np.asarray(_log_loss_program(spec.law.name)(theta, x))
    if noise:
        if rng is None:
            raise ValueError("simulating observation noise needs an rng (numpy.random.Generator)")
        # Noise is drawn with NumPy: jax.random.t would be one more program to compile per process.
        sigma = np.asarray(posterior["sigma"]).reshape(-1, 1)
        if spec.likelihood == "student_t":
            standard = rng.standard_t(np.asarray(posterior["nu"]).reshape(-1, 1), size=log_loss.shape)
        else:
            standard = rng.standard_normal(size=log_loss.shape)
        log_loss = log_loss + sigma * standard
    return log_loss.reshape(*shape, -1)


@functools.lru_cache(maxsize=None)
def _log_loss_program(law_name: str):
    """The law compiled as one program: op-by-op dispatch compiled each of some 50 small
    operations on first use, about 2 s of every fresh process."""
    return jax.jit(get_law(law_name).log_loss)


def _summarise(draws: np.ndarray) -> dict:
    """Mean and :data:`QUANTILES` of draws along axis 0."""
    out = {"mean": draws.mean(axis=0)}
    out.update({label: np.quantile(draws, q, axis=0) for label, q in QUANTILES.items()})
    return out


def _as_array(name: str, value) -> np.ndarray | None:
    if value is None:
        return None
    array = np.atleast_1d(np.asarray(value, dtype=float))
    if array.ndim != 1:
        raise ValueError(f"{name} must be a number or a 1-D list of numbers")
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must be finite and positive, got {value!r}")
    return array


def _complete_inputs(spec: ModelSpec, params, tokens, flops) -> dict[str, np.ndarray]:
    """Fill in the law's inputs from what was given, using C = 6 N D."""
    given = {"params": _as_array("params", params), "tokens": _as_array("tokens", tokens), "flops": _as_array("flops", flops)}
    present = {k: v for k, v in given.items() if v is not None}
    try:
        present = dict(zip(present, np.broadcast_arrays(*present.values())))
    except ValueError:
        raise ValueError("params, tokens and flops must have the same length (or be single numbers)") from None
    n, d, c = present.get("params"), present.get("tokens"), present.get("flops")
    if n is not None and d is not None and c is None:
        present["flops"] = 6.0 * n * d
    elif n is not None and c is not None and d is None:
        present["tokens"] = c / (6.0 * n)
    elif d is not None and c is not None and n is None:
        present["params"] = c / (6.0 * d)
    missing = [name for name in spec.law.inputs if name not in present]
    if missing:
        raise ValueError(
            f"card {spec.name!r} predicts from {', '.join(spec.law.inputs)}; give {' and '.join(missing)} "
            "(or two of params, tokens, flops, related by flops = 6 * params * tokens)"
        )
    return present


def check_family(fit, family: str | None) -> None:
    """Raise ``ValueError`` unless ``fit`` can predict for ``family`` (``None``: its only family)."""
    hierarchical = fit.spec.hierarchical
    if family is None:
        if hierarchical and len(fit.families) > 1:
            raise ValueError(
                f"this fit pools {len(fit.families)} families; name one with family= ({', '.join(fit.families[:6])}), "
                "or family='new' for a family not in the data"
            )
        return
    if family in fit.families or (hierarchical and family == NEW_FAMILY):
        return
    if hierarchical:
        raise ValueError(f"family {family!r} is not in the fitted data ({', '.join(fit.families)}); use family='new' for an unseen family")
    raise ValueError(
        f"family {family!r} is not in the fitted data ({', '.join(fit.families)}); card "
        f"{fit.spec.name!r} has no population of families to draw a new one from (use a hierarchical card)"
    )


def predict_loss(fit, params=None, tokens=None, flops=None, family=None, *, noise=False, draws=False, seed=0) -> pd.DataFrame:
    """Posterior predictive loss at new scales.

    Parameters
    ----------
    fit
        A :class:`~bayescale.Fit` of a loss card.
    params, tokens, flops
        Scales to predict at: numbers or 1-D lists of equal length. Give what the law
        reads (``params`` and ``tokens`` for Chinchilla, ``flops`` for the compute law);
        a missing one is derived from the other two by ``flops = 6 * params * tokens``.
    family
        Family to predict for: a fitted family, or for a hierarchical card ``"new"``, a
        family not in the data, drawn from the population (so its interval is honestly wider).
    noise
        If true, the loss a new run would *observe* (law plus observation noise);
        if false (default), the law's expected loss, whose interval reflects
        parameter uncertainty only.
    draws
        Add a ``draws`` column holding each row's posterior draws.
    seed
        Seed of the observation-noise draws.

    Returns
    -------
    pandas.DataFrame
        One row per scale: the inputs, ``family``, ``quantity`` (``"loss"``),
        ``mean`` and the quantiles ``q2.5, q5, q25, q50, q75, q95, q97.5``.
    """
    sampled = fit.parameter_draws(family, seed=seed)
    inputs = _complete_inputs(fit.spec, params, tokens, flops)
    x = centred_inputs(inputs, fit.centre)
    log_loss = simulate_log_loss(fit.spec, sampled, x, noise=noise, rng=np.random.default_rng(seed))
    with np.errstate(over="ignore"):
        # With noise and Student-t nu <= 1 the predictive loss has no mean: draws may reach inf,
        # and so may "mean"; the quantiles stay meaningful.
        loss = np.exp(log_loss)
    frame = pd.DataFrame({**inputs, "family": family or fit.families[0], "quantity": "loss", **_summarise(loss)})
    if draws:
        frame["draws"] = list(loss.T)
    return frame


def optimal_sizes(law, theta: Mapping[str, np.ndarray], centre: Mapping[str, float], budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compute-optimal params and tokens, each of shape ``(S, B)``, for ``S`` draws of the law's
    (centred) parameters and ``B`` budgets: the law's closed form (:attr:`Law.optimal_fn`) per draw."""
    natural = {k: np.asarray(v)[:, None] for k, v in law.natural(theta, centre).items()}
    return law.optimal_fn(natural, np.asarray(budgets)[None, :])


def optimal_allocation(fit, flops, *, family=None, draws=False, seed=0) -> pd.DataFrame:
    """Compute-optimal model size and tokens at training budgets, per posterior draw.

    Parameters
    ----------
    fit
        A :class:`~bayescale.Fit` of a card whose law trades N against D (Chinchilla, Kaplan).
    flops
        Budget(s) C in FLOP, with ``C = 6 N D``.
    family
        As for :func:`predict_loss`.
    draws
        Add a ``draws`` column holding each row's posterior draws.
    seed
        Seed of the population draws for ``family="new"``.

    Returns
    -------
    pandas.DataFrame
        For each budget, rows with ``quantity`` = ``params``, ``tokens``, ``tokens_per_param``
        and ``loss`` (the expected loss at the optimum), each with ``mean`` and quantiles.

    Raises
    ------
    ValueError
        If the card's law has no N/D trade-off (the compute power law).
    """
    law = fit.spec.law
    if law.optimal_fn is None:
        raise ValueError(
            f"card {fit.spec.name!r} models loss as a function of compute alone, so it has no N/D "
            "trade-off to optimise; fit a card with params and tokens (e.g. chinchilla)"
        )
    budgets = _as_array("flops", flops)
    theta = fit.parameter_draws(family, seed=seed)
    n_opt, d_opt = optimal_sizes(law, theta, fit.centre, budgets)
    x_opt = centred_inputs({"params": n_opt, "tokens": d_opt}, fit.centre)
    loss = np.exp(simulate_log_loss(fit.spec, theta, x_opt, noise=False))
    quantities = {"params": n_opt, "tokens": d_opt, "tokens_per_param": d_opt / n_opt, "loss": loss}
    rows = []
    for j, budget in enumerate(budgets):
        for quantity, values in quantities.items():
            row = {"flops": budget, "quantity": quantity, **{k: float(v) for k, v in _summarise(values[:, j]).items()}}
            if draws:
                row["draws"] = values[:, j]
            rows.append(row)
    return pd.DataFrame(rows)

