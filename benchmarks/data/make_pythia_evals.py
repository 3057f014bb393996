"""Rebuild bayescale/datasets/pythia_evals.csv from ../shared/data/pythia_evals.csv.gz.

Kept: the two standard Pythia suites (``pythia``, ``pythia-deduped``), zero-shot accuracy
(metric ``acc``) on the eight tasks evaluated at every size, checkpoints from step 13,000
(27B tokens, 9% of training) to the final step 143,000. WSC is left out: with 104 items and a
majority-class answer every model scores 0.365 at every size, below its 0.5 chance level.

Usage: python benchmarks/data/make_pythia_evals.py [SOURCE] (default ../shared/data/pythia_evals.csv.gz)
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

#: Accuracy of guessing: options per item in the lm-eval-harness task (lambada is generation).
CHANCE = {
    "arc_challenge": 0.25,
    "arc_easy": 0.25,
    "lambada_openai": 0.0,
    "logiqa": 0.25,
    "mmlu_item_weighted": 0.25,
    "piqa": 0.5,
    "sciq": 0.25,
    "winogrande": 0.5,
}
FIRST_STEP = 13000
FINAL_STEP = 143000


def main(source: str) -> None:
    data = pd.read_csv(source)
    kept = data[
        data["family"].isin(["pythia", "pythia-deduped"])
        & (data["n_shot"] == 0)
        & (data["metric"] == "acc")
        & data["task"].isin(list(CHANCE))
        & (data["step"] >= FIRST_STEP)
    ]
    out = pd.DataFrame(
        {
            "family": kept["family"],
            "model": kept["model"],
            "params": kept["params"],
            "step": kept["step"],
            "tokens": kept["tokens"],
            "is_final": kept["step"] == FINAL_STEP,
            "task": kept["task"],
            "chance": kept["task"].map(CHANCE),
            # n_items is inferred from the reported standard errors (../shared/data/README.md).
            "correct": np.round(kept["value"] * kept["n_items"]).astype(int),
            "n_items": kept["n_items"].astype(int),
        }
    ).sort_values(["family", "params", "task", "step"])
    target = Path(__file__).resolve().parents[2] / "bayescale" / "datasets" / "pythia_evals.csv"
    out.to_csv(target, index=False)
    print(f"wrote {len(out)} rows to {target}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[3] / "shared" / "data" / "pythia_evals.csv.gz"))
