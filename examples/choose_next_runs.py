"""Choose next runs: which candidate runs most narrow a target's prediction per FLOP.

Six small simulated runs are fitted; 40 candidates (8 sizes x 5 tokens-per-parameter ratios)
are valued by the information each would give about the loss of a 70B model on 1.4T tokens,
and a batch is chosen under a budget. Run: ``python examples/choose_next_runs.py [--out DIR]``.
"""

import numpy as np
import pandas as pd

import bayescale as bs
from bayescale import plots

from _settings import parse, sampler

#: A Chinchilla truth close to Epoch AI's fit (Besiroglu et al. 2024), at centre zero.
TRUTH = {"e": np.log(1.8), "a_c": np.log(480.0), "alpha": 0.34, "b_c": np.log(2000.0), "beta": 0.36}


def main(args: list[str] | None = None) -> dict:
    """Run the example; returns the design (every candidate with its value and the selection)."""
    options = parse(__doc__.splitlines()[0], args, "example-output/next-runs")
    params = np.repeat([2e7, 5e7, 1e8], 2)
    tokens = params * np.tile([10.0, 40.0], 3)
    runs = bs.datasets.simulate_runs("chinchilla", TRUTH, params=params, tokens=tokens, sigma=0.01, seed=options.seed)
    fit = bs.fit(runs, model="chinchilla", **sampler(options))
    sizes, ratios = np.geomspace(5e7, 2e9, 8), np.array([5.0, 10.0, 20.0, 40.0, 80.0])
    candidates = pd.DataFrame({"params": np.repeat(sizes, len(ratios)), "tokens": np.repeat(sizes, len(ratios)) * np.tile(ratios, len(sizes))})
    design = bs.suggest_runs(fit, candidates, budget_flops=2.6e20, target={"params": 7e10, "tokens": 1.4e12}, seed=options.seed)
    print(design.selected[["params", "tokens", "cost", "expected_gain", "order"]].to_string(index=False))
    print(f"95% width of the target: {design.width_95_before:.3f} now, {design.width_95_after:.3f} expected after the batch")
    plots.plot_design(design).savefig(options.out / "design.png", dpi=110)
    return {"design": design, "fit": fit}


if __name__ == "__main__":
    main()
