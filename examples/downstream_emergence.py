"""Downstream accuracy and emergence: Pythia's zero-shot accuracies on 8 tasks.

Fits the final checkpoints of the Pythia models up to 1.4B, predicts each task's accuracy at
12B-model compute, and asks when each task takes off; writes the accuracy bands and the
threshold intervals as figures. Run: ``python examples/downstream_emergence.py [--out DIR]``.
"""

import bayescale as bs
from bayescale import plots

from _settings import parse, sampler

#: The 12B Pythia model's training compute: 6 x 1.2e10 params x 3.0e11 tokens.
TARGET_FLOPS = 2.1e22


def main(args: list[str] | None = None) -> dict:
    """Run the example; returns the prediction and emergence tables."""
    options = parse(__doc__.splitlines()[0], args, "example-output/downstream")
    scores = bs.datasets.load("pythia_evals").data
    small = scores[scores["is_final"] & (scores["params"] < 2e9)]
    fit = bs.fit(small, model="downstream-sigmoid", **sampler(options))
    predictions = fit.predict(flops=TARGET_FLOPS, family="pythia")
    print(predictions[["task", "q5", "q50", "q95"]].to_string(index=False))
    emergence = bs.emergence(fit, family="pythia", by_flops=TARGET_FLOPS)
    onsets = emergence[emergence["quantity"] == "threshold_flops"]
    print(onsets[["task", "q5", "q50", "q95", "p_emerged_by"]].to_string(index=False))
    plots.plot_accuracy(fit, family="pythia").savefig(options.out / "accuracy.png", dpi=110)
    plots.plot_emergence(emergence).savefig(options.out / "emergence.png", dpi=110)
    return {"predictions": predictions, "emergence": emergence, "fit": fit}


if __name__ == "__main__":
    main()
