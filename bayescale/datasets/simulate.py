"""Simulate runs from a law with known parameters: the ground truth of recovery tests."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data import RunTable
from ..laws import get_law


def simulate_runs(
    law: str,
    theta: Mapping[str, float],
    *,
    params=None,
    tokens=None,
    flops=None,
    sigma: float = 0.01,
    seed: int = 0,
) -> RunTable:
    """Losses drawn from a law at given scales, with log-normal observation noise.

    Parameters
    ----------
    law
        A law name from :data:`bayescale.laws.LAWS`.
    theta
        The law's parameters at centre zero, i.e. with uncentred inputs: for
        Chinchilla ``e = log E``, ``a_c = log A``, ``alpha``, ``b_c = log B``, ``beta``.
    params, tokens, flops
        Scales of each observation (equal-length 1-D arrays), as the law needs them;
        ``flops`` is derived as ``6 N D`` when absent.
    sigma
        Standard deviation of the noise on log loss (0.01 is about 1% relative noise).
    seed
        Seed of the noise.

    Returns
    -------
    RunTable
    """
    form = get_law(law)
    columns = {name: np.asarray(values, dtype=float) for name, values in (("params", params), ("tokens", tokens), ("flops", flops)) if values is not None}
    if "flops" not in columns and {"params", "tokens"} <= set(columns):
        columns["flops"] = 6.0 * columns["params"] * columns["tokens"]
    log_loss = np.asarray(form.log_loss({k: float(v) for k, v in theta.items()}, {k: np.log(columns[k]) for k in form.inputs}))
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=log_loss.shape)
    return RunTable(pd.DataFrame({**columns, "loss": np.exp(log_loss + noise)}), source=f"simulated {law} runs")


def checkpoint_grid(
    sizes: Mapping[str, Sequence[tuple[float, float]]],
    *,
    seeds: int | Mapping[str, int] = 1,
    checkpoints: int = 1,
    first_fraction: float = 0.1,
) -> pd.DataFrame:
    """The inputs of a simulated sweep: families, sizes, seeds and checkpoints.

    Parameters
    ----------
    sizes
        Per family, ``(params, final tokens)`` of each run configuration.
    seeds
        Seeds per configuration (one number for all families, or per family).
    checkpoints
        Checkpoints per run, evenly spaced in log tokens from ``first_fraction`` of the
        final tokens to the final tokens (one: the final checkpoint only).
    first_fraction
        The first checkpoint's share of the run's final tokens.

    Returns
    -------
    pandas.DataFrame
        Columns ``family, params, seed, step, tokens, flops, is_final``.
    """
    fractions = np.geomspace(first_fraction, 1.0, checkpoints) if checkpoints > 1 else np.ones(1)
    rows = []
    for family, configs in sizes.items():
        n_seeds = seeds if isinstance(seeds, int) else seeds[family]
        for params, final_tokens in configs:
            for seed in range(n_seeds):
                for step, fraction in enumerate(fractions, start=1):
                    rows.append((family, float(params), seed, step, float(final_tokens) * fraction, step == len(fractions)))
    frame = pd.DataFrame(rows, columns=["family", "params", "seed", "step", "tokens", "is_final"])
    frame["flops"] = 6.0 * frame["params"] * frame["tokens"]
    return frame


def simulate_family_losses(
    law: str,
    grid: pd.DataFrame,
    family_theta: Mapping[str, Mapping[str, float]],
    *,
    centre: Mapping[str, float] | None = None,
    sigma: float = 0.005,
    sigma_run: float = 0.01,
    seed: int = 0,
) -> RunTable:
    """Losses of a sweep (:func:`checkpoint_grid`) from per-family laws, run effects and noise.

    Parameters
    ----------
    law
        A law name from :data:`bayescale.laws.LAWS`.
    grid
        The sweep's inputs, with ``family`` (and ``seed``) columns.
    family_theta
        Per family, the law's parameters centred at ``centre`` (default: uncentred inputs).
    centre
        Log input values at which ``family_theta`` are stated.
    sigma
        Standard deviation of checkpoint noise on log loss.
    sigma_run
        Standard deviation of each run's offset on log loss (seed-to-seed spread); a run is
        the rows sharing family, params and seed.
    seed
        Seed of the run offsets and the noise.

    Returns
    -------
    RunTable
    """
    form = get_law(law)
    rng = np.random.default_rng(seed)
    centre = centre or {name: 0.0 for name in form.inputs}
    log_loss = np.empty(len(grid))
    for family, rows in grid.groupby("family", sort=False).groups.items():
        part = grid.loc[rows]
        x = {name: np.log(part[name].to_numpy(dtype=float)) - centre[name] for name in form.inputs}
        log_loss[grid.index.get_indexer(rows)] = np.asarray(form.log_loss({k: float(v) for k, v in family_theta[family].items()}, x))
    run = grid.groupby([c for c in ("family", "params", "seed") if c in grid], sort=False).ngroup().to_numpy()
    log_loss += rng.normal(0.0, sigma_run, run.max() + 1)[run] + rng.normal(0.0, sigma, len(grid))
    return RunTable(grid.assign(loss=np.exp(log_loss)).reset_index(drop=True), source=f"simulated {law} families")


#: The population of :func:`simulate_sweep`, per law: a typical family's published parameters
#: and the family spreads in the sampler's coordinates. Chinchilla: near Epoch's fit (Besiroglu
#: et al. 2024); compute power law: E and alpha as in the compute card's prior notes.
SWEEP_TYPICAL = {
    "chinchilla": {"E": 1.8, "A": 450.0, "alpha": 0.34, "B": 2000.0, "beta": 0.32},
    "compute-power-law": {"E": 1.7, "A": 700.0, "alpha": 0.15},
}
SWEEP_SPREAD = {
    "chinchilla": {"log_loss_centre": 0.04, "logit_share_e": 0.25, "logit_share_a_c": 0.25, "log_alpha": 0.08, "log_beta": 0.08},
    "compute-power-law": {"log_loss_centre": 0.04, "logit_share_e": 0.25, "log_slope_a_c": 0.1},
}


def _centred(law_name: str, natural: dict, centre: dict) -> dict:
    """A typical family's published parameters -> the law's parameters at ``centre``."""
    if law_name == "chinchilla":
        return {
            "e": np.log(natural["E"]), "alpha": natural["alpha"], "beta": natural["beta"],
            "a_c": np.log(natural["A"]) - natural["alpha"] * centre["params"],
            "b_c": np.log(natural["B"]) - natural["beta"] * centre["tokens"],
        }
    return {"e": np.log(natural["E"]), "alpha": natural["alpha"], "a_c": np.log(natural["A"]) - natural["alpha"] * centre["flops"]}


def simulate_sweep(
    families: int = 12,
    sizes: int = 6,
    seeds: int = 3,
    checkpoints: int = 20,
    *,
    law: str = "chinchilla",
    smallest: float = 2e7,
    largest: float = 6e8,
    tokens_per_param: float = 20.0,
    sigma: float = 0.005,
    sigma_run: float = 0.01,
    seed: int = 0,
) -> tuple[RunTable, dict]:
    """A multi-family sweep drawn from a known population (the issue-3 workload).

    Each family's coordinates (:mod:`bayescale.coordinates`, at the centre of the whole
    sweep) are ``mu + SWEEP_SPREAD[law] * z`` with ``z ~ N(0, 1)``, ``mu`` those of
    ``SWEEP_TYPICAL[law]``; runs get a normal offset of sd ``sigma_run`` and checkpoints noise
    of sd ``sigma`` on log loss.

    Parameters
    ----------
    law
        ``"chinchilla"`` or ``"compute-power-law"``.

    Returns
    -------
    (RunTable, truth)
        ``truth`` holds ``mu`` and ``tau`` (by coordinate name), ``centre``, the families'
        coordinates ``u`` and law parameters ``theta`` (centred), ``sigma`` and ``sigma_run``.
    """
    from ..coordinates import coordinate_names, from_parameters, to_parameters

    if law not in SWEEP_TYPICAL:
        raise ValueError(f"simulate_sweep knows the laws {sorted(SWEEP_TYPICAL)}, not {law!r}")
    form = get_law(law)
    rng = np.random.default_rng(seed)
    names = [f"family_{i:02d}" for i in range(families)]
    configs = [(n, tokens_per_param * n) for n in np.geomspace(smallest, largest, sizes)]
    grid = checkpoint_grid({name: configs for name in names}, seeds=seeds, checkpoints=checkpoints)
    centre = {name: float(np.mean(np.log(grid[name]))) for name in form.inputs}
    mu = {k: float(v) for k, v in from_parameters(form, _centred(law, SWEEP_TYPICAL[law], centre)).items()}
    spread = SWEEP_SPREAD[law]
    u = {k: mu[k] + spread[k] * rng.standard_normal(families) for k in coordinate_names(form)}
    theta, _ = to_parameters(form, u)
    family_theta = {name: {k: float(np.asarray(v)[i]) for k, v in theta.items()} for i, name in enumerate(names)}
    runs = simulate_family_losses(law, grid, family_theta, centre=centre, sigma=sigma, sigma_run=sigma_run, seed=seed + 1)
    truth = {"mu": mu, "tau": dict(spread), "centre": centre, "u": u, "theta": family_theta, "sigma": sigma, "sigma_run": sigma_run}
    return runs, truth


def simulate_evaluations(
    tasks: Sequence[Mapping],
    flops: Sequence[float],
    *,
    families: Mapping[str, float] | None = None,
    n_items: int = 1000,
    concentration: float | None = None,
    link: str = "sigmoid",
    loss_law: Mapping[str, float] | None = None,
    loss_sigma: float = 0.005,
    seed: int = 0,
) -> RunTable:
    """Downstream scores of models at given compute, from known per-task rises.

    Parameters
    ----------
    tasks
        One mapping per task with ``task`` (name), ``slope``, ``chance``, ``ceiling`` and the
        middle of its rise: ``midpoint_flops`` (compute; slope per decade of compute) or, with
        ``loss_law``, ``midpoint_loss`` (loss; slope per nat of loss).
    flops
        Training compute of each evaluated model (every model is evaluated on every task).
    families
        Family name -> shift along the predictor (decades of compute, or nats of minus the
        loss; a family with +0.3 decades behaves like one with twice the compute). Default:
        one family, ``"default"``, unshifted.
    n_items
        Items per task; scores are counts out of this.
    concentration
        Beta-binomial concentration (over-dispersion); ``None`` for binomial scores.
    link
        An accuracy link of :mod:`bayescale.links`.
    loss_law
        Natural parameters ``E``, ``A``, ``alpha`` of a compute power law: accuracy then rises
        with minus the law's loss, and each row carries the model's observed ``loss``
        (log-normal noise ``loss_sigma``).
    loss_sigma
        Noise on the log of the observed loss.
    seed
        Seed of the scores and losses.

    Returns
    -------
    RunTable
        Columns ``task``, ``family``, ``flops``, ``chance``, ``correct``, ``n_items`` (and ``loss``).
    """
    from ..links import get_link

    rise = get_link(link)
    rng = np.random.default_rng(seed)
    families = families or {"default": 0.0}
    flops = np.asarray(flops, dtype=float)
    rows = []
    for family, shift in families.items():
        if loss_law is not None:
            loss = loss_law["E"] + loss_law["A"] * flops ** -loss_law["alpha"]
            observed_loss = loss * np.exp(rng.normal(0.0, loss_sigma, size=loss.shape))
        for spec in tasks:
            if loss_law is None:
                x, midpoint = np.log10(flops) + shift, np.log10(spec["midpoint_flops"])
            else:
                x, midpoint = -loss + shift, -spec["midpoint_loss"]
            p = np.asarray(rise.accuracy(x, midpoint, spec["slope"], spec["chance"], spec["ceiling"]))
            if concentration is not None:
                p = rng.beta(p * concentration, (1.0 - p) * concentration)
            columns = {"task": spec["task"], "family": family, "flops": flops, "chance": spec["chance"], "correct": rng.binomial(n_items, p), "n_items": n_items}
            if loss_law is not None:
                columns["loss"] = observed_loss
            rows.append(pd.DataFrame(columns))
    return RunTable(pd.concat(rows, ignore_index=True), source=f"simulated {link} evaluations")
