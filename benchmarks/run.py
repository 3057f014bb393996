"""Speed and intervals on the bundled Chinchilla data: bayescale against the Hoffmann/Epoch method.

The alternative, measured in the same run on the same 240 points: Huber loss (delta = 1e-3) on
log loss, L-BFGS-B from a grid of starting points, then bootstrap refits (Besiroglu et al. 2024).
The full-data fit searches the grid; each bootstrap refit starts from the full-data optimum with
tolerances tight enough to move (with L-BFGS-B's default ftol a warm start stops at once, the
Huber objective being ~1e-3, and the bootstrap reports near-zero widths). Results go to benchmarks/results/chinchilla.json and .md.

Usage: python benchmarks/run.py [--bootstrap 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import scipy.optimize
from scipy.special import logsumexp

import bayescale as bs

RESULTS = Path(__file__).resolve().parent / "results"
#: A coarse version of Epoch AI's grid of starts (their notebook uses 4500 points).
GRID = list(itertools.product([0.0, 1.0], [0.0, 5.0, 10.0], [0.0, 5.0, 10.0], [0.2, 0.5], [0.2, 0.5]))


def huber_objective(theta, log_n, log_d, log_loss, delta=1e-3):
    """Huber loss of the log-space Chinchilla law and its exact gradient."""
    e, a, b, alpha, beta = theta
    terms = np.stack([np.full_like(log_n, e), a - alpha * log_n, b - beta * log_d])
    predicted = logsumexp(terms, axis=0)
    r = predicted - log_loss
    value = np.sum(np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)))
    weight = np.clip(r, -delta, delta) * np.exp(terms - predicted)  # dH/dr * softmax share of each term
    grad = np.array([weight[0].sum(), weight[1].sum(), weight[2].sum(), -(weight[1] * log_n).sum(), -(weight[2] * log_d).sum()])
    return value, grad


def _minimise(start, log_n, log_d, log_loss):
    # Tight tolerances: the default ftol stops at once on an objective of ~1e-3, which is what
    # makes warm-started bootstraps report near-zero widths.
    return scipy.optimize.minimize(huber_objective, start, args=(log_n, log_d, log_loss), jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})


def huber_fit(log_n, log_d, log_loss, starts=GRID):
    """Best Huber fit over the starting points; returns (natural parameters, raw optimum)."""
    best = min((_minimise(start, log_n, log_d, log_loss) for start in starts), key=lambda result: result.fun)
    e, a, b, alpha, beta = best.x
    return {"E": np.exp(e), "A": np.exp(a), "alpha": alpha, "B": np.exp(b), "beta": beta}, best.x


def main(args) -> dict:
    runs = bs.datasets.load("chinchilla", drop_flagged_outliers=True)
    data = runs.data
    log_n, log_d, log_loss = (np.log(data[c].to_numpy(dtype=float)) for c in ("params", "tokens", "loss"))

    started = time.perf_counter()
    fit = bs.fit(runs, "chinchilla", seed=args.seed, progress=False)
    bayes_seconds = time.perf_counter() - started
    summary = fit.summary().set_index("parameter")

    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    point, optimum = huber_fit(log_n, log_d, log_loss)
    refits = []
    for _ in range(args.bootstrap):
        i = rng.integers(0, len(log_n), len(log_n))
        # Warm start from the full-data optimum; the tight tolerances make it move.
        refits.append(huber_fit(log_n[i], log_d[i], log_loss[i], starts=[optimum])[0])
    boot_seconds = time.perf_counter() - started

    names = ["E", "A", "alpha", "B", "beta"]
    result = {
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "bayescale": {
            "seconds": bayes_seconds,
            "min_ess_bulk": fit.diagnostics.min_ess_bulk,
            "ess_per_second": fit.diagnostics.min_ess_bulk / bayes_seconds,
            "intervals": {n: [summary.loc[n, "q2.5"], summary.loc[n, "q97.5"]] for n in names},
        },
        "huber_bootstrap": {
            "seconds": boot_seconds,
            "resamples": args.bootstrap,
            "grid_starts_full_data_fit": len(GRID),
            "point": point,
            "intervals": {n: list(np.quantile([r[n] for r in refits], [0.025, 0.975])) for n in names},
        },
    }
    result["time_ratio_bayescale_over_bootstrap"] = bayes_seconds / boot_seconds
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chinchilla.json").write_text(json.dumps(result, indent=2, default=float))
    lines = [
        "| method | wall time (s) | 95% interval of alpha | 95% interval of beta |",
        "|---|---|---|---|",
        f"| bayescale NUTS (4 x 1000 draws, fresh process) | {bayes_seconds:.1f} | {result['bayescale']['intervals']['alpha'][0]:.3f} - {result['bayescale']['intervals']['alpha'][1]:.3f} | {result['bayescale']['intervals']['beta'][0]:.3f} - {result['bayescale']['intervals']['beta'][1]:.3f} |",
        f"| Huber + L-BFGS-B ({len(GRID)} starts), {args.bootstrap} warm-started bootstrap refits | {boot_seconds:.1f} | {result['huber_bootstrap']['intervals']['alpha'][0]:.3f} - {result['huber_bootstrap']['intervals']['alpha'][1]:.3f} | {result['huber_bootstrap']['intervals']['beta'][0]:.3f} - {result['huber_bootstrap']['intervals']['beta'][1]:.3f} |",
        "",
        f"Time ratio bayescale / bootstrap: {result['time_ratio_bayescale_over_bootstrap']:.2f}. Machine: {result['machine']}.",
    ]
    (RESULTS / "chinchilla.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
