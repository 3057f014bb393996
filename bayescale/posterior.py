"""Posterior: what every fitted card has in common (draws, card, diagnostics, provenance)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .diagnostics import Diagnostics


@dataclass(frozen=True)
class Posterior:
    """Base of :class:`~bayescale.Fit` and :class:`~bayescale.DownstreamFit`.

    Attributes
    ----------
    idata
        arviz InferenceData; its attributes carry the model card text, the data hash, the
        package version, the seed and the centring values.
    spec
        The model card.
    diagnostics
        Convergence diagnostics with advice.
    """

    idata: object
    spec: object
    diagnostics: Diagnostics

    @property
    def centre(self) -> dict[str, float]:
        """Centring values of the fitted data, at which the card's parameters are stated."""
        return json.loads(self.idata.attrs["centre"])

    @property
    def attrs(self) -> dict:
        """Provenance: model card, data hash, package version, seed."""
        return dict(self.idata.attrs)

    @property
    def families(self) -> list[str]:
        """Families present in the fitted data."""
        return json.loads(self.idata.attrs["families"])

    def draws(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Posterior draws with chains and draws flattened into one leading axis.

        Parameters
        ----------
        names
            Sampled variables to return (default: all of them, in the sampler's coordinates).

        Returns
        -------
        dict
            ``{name: array of shape (chains * draws, *the variable's own dimensions)}``.
        """
        posterior = self.idata.posterior
        names = list(posterior.data_vars) if names is None else names
        return {name: posterior[name].values.reshape(-1, *posterior[name].shape[2:]) for name in names}

    def save(self, path: str | Path) -> Path:
        """Write the fit to a netCDF file that :func:`bayescale.load` reads back exactly.

        Parameters
        ----------
        path
            The file to write (folders are created).

        Returns
        -------
        pathlib.Path
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.idata.to_netcdf(str(path))
        return path
