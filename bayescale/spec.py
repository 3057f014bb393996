"""ModelSpec: a scaling model as a model card (TOML) declares it.

A card says *which* law, priors and likelihood; the package holds the *how*.
Cards live in the top-level ``models/`` folder (installed as
``bayescale/_models``) and are chosen by name or by path.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .laws import Law, get_law
from .priors import Prior

#: Likelihoods a card may choose for the log loss.
LIKELIHOODS = ("student_t", "normal")


def cards_dir() -> Path:
    """The folder holding the bundled model cards."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_models", here.parent / "models"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("bundled model cards not found; reinstall bayescale")


def available_cards() -> list[str]:
    """Names of the bundled model cards."""
    return sorted(p.stem for p in cards_dir().glob("*.toml"))


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model card.

    Attributes
    ----------
    name
        The card's name.
    law
        The scaling-law form (see :mod:`bayescale.laws`).
    priors
        A prior for each of the law's parameters and for the likelihood's
        ``sigma`` (and ``nu`` for Student-t).
    likelihood
        ``"student_t"`` or ``"normal"``, on log loss.
    text
        The card's TOML source, stored with every fit so a saved posterior
        names the model that made it.
    """

    name: str
    law: Law
    priors: Mapping[str, Prior]
    likelihood: str
    text: str
    description: str = ""

    @property
    def noise_parameters(self) -> tuple[str, ...]:
        """Names of the likelihood's parameters: ``sigma`` (and ``nu`` for Student-t)."""
        return ("sigma", "nu") if self.likelihood == "student_t" else ("sigma",)

    @property
    def sampled_parameters(self) -> tuple[str, ...]:
        """Names of every sampled site: the law's parameters, then the noise parameters."""
        return (*self.law.parameters, *self.noise_parameters)

    @classmethod
    def from_toml(cls, text: str, where: str = "model card") -> "ModelSpec":
        """Parse and check a card's TOML text."""
        try:
            card = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{where} is not valid TOML: {err}") from None
        for key in ("name", "law", "priors", "likelihood"):
            if key not in card:
                raise ValueError(f"{where} has no {key!r} entry; see models/chinchilla.toml for a complete card")
        law = get_law(card["law"])
        likelihood = dict(card["likelihood"])
        kind = likelihood.pop("kind", None)
        if kind not in LIKELIHOODS:
            raise ValueError(f"{where}: likelihood.kind must be one of {LIKELIHOODS}, got {kind!r}")
        needed = set(law.parameters) | {"sigma"} | ({"nu"} if kind == "student_t" else set())
        entries = {**card["priors"], **likelihood}
        missing = needed - set(entries)
        extra = set(entries) - needed
        if missing:
            raise ValueError(f"{where}: law {law.name!r} with a {kind} likelihood needs priors for {sorted(missing)}")
        if extra:
            raise ValueError(f"{where}: priors {sorted(extra)} are not parameters of law {law.name!r} ({kind})")
        priors = {name: Prior.from_dict(entries[name], f"{where}, prior {name!r}") for name in sorted(needed)}
        return cls(card["name"], law, priors, kind, text, card.get("description", ""))

    @classmethod
    def load(cls, model: "str | Path | ModelSpec") -> "ModelSpec":
        """Load a card by bundled name (``"chinchilla"``) or by path to a TOML file."""
        if isinstance(model, ModelSpec):
            return model
        path = Path(model)
        if path.suffix == ".toml" or path.exists():
            if not path.exists():
                raise ValueError(f"model card file {path} does not exist")
            return cls.from_toml(path.read_text(), where=str(path))
        bundled = cards_dir() / f"{model}.toml"
        if not bundled.exists():
            raise ValueError(
                f"no model card named {str(model)!r}; bundled cards: {', '.join(available_cards())} "
                "(or give a path to a .toml card)"
            )
        return cls.from_toml(bundled.read_text(), where=f"card {model!r}")
