"""Small real scaling data shipped with bayescale (sources and licences in SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data import RunTable

_HERE = Path(__file__).resolve().parent

#: Bundled data sets: name -> (file, one-line description with its source).
DATASETS = {
    "chinchilla": (
        "chinchilla.csv",
        "Chinchilla final losses, 245 runs, 57M-16B params (Hoffmann et al. 2022 Fig. 4, reconstructed by Epoch AI, Besiroglu et al. 2024)",
    ),
    "pythia_evals": (
        "pythia_evals.csv",
        "Pythia zero-shot accuracies on 8 tasks, 15 models (70M-12B, standard and deduplicated data), 14 checkpoints each (Biderman et al. 2023)",
    ),
}


def load(name: str, *, drop_flagged_outliers: bool = False) -> RunTable:
    """Load a bundled data set as a :class:`~bayescale.RunTable`.

    Parameters
    ----------
    name
        A key of :data:`DATASETS` (``"chinchilla"``, ``"pythia_evals"``).
    drop_flagged_outliers
        Chinchilla only: drop the 5 points Epoch AI excludes as outliers, as their
        published fit does (says how many on stderr).

    Returns
    -------
    RunTable
    """
    if name not in DATASETS:
        raise ValueError(f"no bundled data set {name!r}; available: {', '.join(DATASETS)}")
    path = _HERE / DATASETS[name][0]
    runs = RunTable(pd.read_csv(path), source=f"bundled data set {name!r}")
    if drop_flagged_outliers:
        if "epoch_excluded_outlier" not in runs.data:
            raise ValueError(f"data set {name!r} has no flagged outliers")
        runs = runs.drop(runs.data["epoch_excluded_outlier"].to_numpy(dtype=bool), "flagged as outliers by Epoch AI (Besiroglu et al. 2024)")
    return runs


def path(name: str) -> Path:
    """Path of a bundled data set's CSV file.

    Parameters
    ----------
    name
        A bundled data set (``"chinchilla"``, ``"pythia_evals"``, ...; see :func:`load`).

    Returns
    -------
    pathlib.Path
    """
    if name not in DATASETS:
        raise ValueError(f"no bundled data set {name!r}; available: {', '.join(DATASETS)}")
    return _HERE / DATASETS[name][0]


from .simulate import simulate_evaluations, simulate_runs  # noqa: E402

__all__ = ["DATASETS", "load", "path", "simulate_evaluations", "simulate_runs"]
