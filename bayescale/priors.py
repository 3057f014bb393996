"""Prior specifications, as written in model cards, and their numpyro distributions."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpyro.distributions as dist

#: Distributions a model card may name. Positive-support ones suit exponents and scales.
DISTRIBUTIONS: dict[str, type[dist.Distribution]] = {
    "Normal": dist.Normal,
    "HalfNormal": dist.HalfNormal,
    "LogNormal": dist.LogNormal,
    "TruncatedNormal": dist.TruncatedNormal,
    "StudentT": dist.StudentT,
    "HalfCauchy": dist.HalfCauchy,
    "Uniform": dist.Uniform,
    "Gamma": dist.Gamma,
    "Exponential": dist.Exponential,
    "Beta": dist.Beta,
}


@dataclass(frozen=True)
class Prior:
    """A prior as a model card states it: a distribution name, its arguments and why.

    Parameters
    ----------
    distribution
        A key of :data:`DISTRIBUTIONS`, e.g. ``"LogNormal"``.
    arguments
        Keyword arguments of that numpyro distribution, e.g. ``{"loc": -1.0, "scale": 0.5}``.
    why
        The reason for this choice, in words (shown in docs and reports).
    """

    distribution: str
    arguments: Mapping[str, float] = field(default_factory=dict)
    why: str = ""

    def __post_init__(self):
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown prior distribution {self.distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}"
            )
        accepted = set(inspect.signature(DISTRIBUTIONS[self.distribution].__init__).parameters) - {
            "self",
            "validate_args",
        }
        unknown = set(self.arguments) - accepted
        if unknown:
            raise ValueError(
                f"{self.distribution} prior got unknown arguments {sorted(unknown)}; it takes {sorted(accepted)}"
            )
        for name, value in self.arguments.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{self.distribution} prior argument {name!r} must be a number, got {value!r}")

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], where: str) -> "Prior":
        """Build a prior from a card table such as ``{distribution = "Normal", loc = 0, scale = 1, why = "..."}``."""
        entry = dict(entry)
        if "distribution" not in entry:
            raise ValueError(f"{where}: a prior needs a 'distribution' key (e.g. distribution = \"Normal\")")
        distribution = entry.pop("distribution")
        why = entry.pop("why", "")
        try:
            return cls(distribution, entry, why)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    def to_numpyro(self) -> dist.Distribution:
        """The numpyro distribution this prior describes."""
        return DISTRIBUTIONS[self.distribution](**{k: float(v) for k, v in self.arguments.items()})

    def describe(self) -> str:
        """Short text such as ``LogNormal(loc=-1.05, scale=0.5)``."""
        args = ", ".join(f"{k}={v:g}" for k, v in self.arguments.items())
        return f"{self.distribution}({args})"
