"""The demo: fit the bundled Chinchilla data and write what a user would look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import datasets
from .fit import fit

#: Scales worth predicting: Chinchilla (70B params, 1.4T tokens) and Gopher (280B, 300B),
#: Hoffmann et al. (2022) Table 1.
DEMO_TARGETS = pd.DataFrame({"model": ["Chinchilla", "Gopher"], "params": [7.0e10, 2.8e11], "tokens": [1.4e12, 3.0e11]})
#: Chinchilla's training budget, 5.76e23 FLOP (Hoffmann et al. 2022, Table 3), and a decade either side.
DEMO_BUDGETS = np.array([5.76e22, 5.76e23, 5.76e24])


def run_demo(out: Path, *, num_chains: int = 4, num_warmup: int = 1000, num_samples: int = 1000, seed: int = 0) -> dict[str, Path]:
    """Fit the Chinchilla card to Epoch AI's reconstruction of the Chinchilla runs.

    Writes ``fit.nc``, ``summary.csv``, ``predictions.csv``, ``optimal.csv`` and
    ``fit.png`` to ``out`` and prints the key numbers to stdout.

    Parameters
    ----------
    out
        Output folder (created if missing).
    num_chains, num_warmup, num_samples, seed
        Sampler settings (see :func:`bayescale.fit`).

    Returns
    -------
    dict
        Paths of the files written, by name.
    """
    from .plots import plot_fit

    out.mkdir(parents=True, exist_ok=True)
    runs = datasets.load("chinchilla", drop_flagged_outliers=True)
    result = fit(runs, "chinchilla", seed=seed, num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples)
    summary = result.summary()
    predictions = result.predict(params=DEMO_TARGETS["params"], tokens=DEMO_TARGETS["tokens"])
    predictions.insert(0, "model", DEMO_TARGETS["model"].to_numpy())
    optimal = result.optimal(DEMO_BUDGETS)
    paths = {
        "fit": result.save(out / "fit.nc"),
        "summary": out / "summary.csv",
        "predictions": out / "predictions.csv",
        "optimal": out / "optimal.csv",
        "figure": out / "fit.png",
    }
    summary.to_csv(paths["summary"], index=False)
    predictions.to_csv(paths["predictions"], index=False)
    optimal.to_csv(paths["optimal"], index=False)
    plot_fit(result).savefig(paths["figure"], dpi=120)

    ratio = optimal[(optimal["quantity"] == "tokens_per_param") & np.isclose(optimal["flops"], 5.76e23)].iloc[0]
    lines = ["", "Chinchilla law fitted to Epoch AI's reconstruction of Hoffmann et al. (2022), 240 runs:"]
    for _, row in summary.iterrows():
        lines.append(f"  {row['parameter']:>6} = {row['q50']:.4g}  (95% interval {row['q2.5']:.4g} to {row['q97.5']:.4g})")
    for _, row in predictions.iterrows():
        lines.append(f"  {row['model']} loss: {row['q50']:.3f} nats (95% interval {row['q2.5']:.3f} to {row['q97.5']:.3f})")
    lines.append(f"  compute-optimal tokens per parameter at 5.76e23 FLOP: {ratio['q50']:.1f} (95% interval {ratio['q2.5']:.1f} to {ratio['q97.5']:.1f})")
    lines.append(f"  diagnostics: {'no problems found' if result.diagnostics.ok else '; '.join(result.diagnostics.problems)}")
    lines.append(f"  wrote {', '.join(str(p) for p in paths.values())}")
    print("\n".join(lines))
    return paths
