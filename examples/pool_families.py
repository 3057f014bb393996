"""Pool families and seeds: a hierarchical fit of a simulated multi-family sweep.

Four families (recipes) x 5 sizes x 2 seeds x 4 checkpoints, drawn from a known population;
the pooled card learns the population, each family's law and the seed-to-seed spread, and
predicts a larger run for every family and for a family it has never seen. Run:
``python examples/pool_families.py [--out DIR]``.
"""

import bayescale as bs
from bayescale import plots
from bayescale.datasets.simulate import simulate_sweep

from _settings import parse, sampler


def main(args: list[str] | None = None) -> dict:
    """Run the example; returns the summary and prediction tables."""
    options = parse(__doc__.splitlines()[0], args, "example-output/pool-families")
    runs, truth = simulate_sweep(families=4, sizes=5, seeds=2, checkpoints=4, seed=options.seed)
    fit = bs.fit(runs, model="chinchilla-hierarchical", **sampler(options))
    summary = fit.summary()
    print(summary[["parameter", "q2.5", "q50", "q97.5", "r_hat"]].to_string(index=False))
    print(f"true seed-to-seed spread: {truth['sigma_run']:.3f}")
    predictions = [fit.predict(params=7e9, tokens=1.4e11, family=family) for family in [*fit.families, "new"]]
    for table in predictions:
        row = table.iloc[0]
        print(f"family {row['family']}: loss at 7B params, 140B tokens {row['q50']:.3f} (95% interval {row['q2.5']:.3f}-{row['q97.5']:.3f})")
    plots.plot_families(fit).savefig(options.out / "families.png", dpi=110)
    return {"summary": summary, "predictions": predictions, "fit": fit}


if __name__ == "__main__":
    main()
