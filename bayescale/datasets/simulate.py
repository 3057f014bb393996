"""Simulate runs from a law with known parameters: the ground truth of recovery tests."""

from __future__ import annotations

from typing import Mapping

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
