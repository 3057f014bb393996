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

from .coordinates import coordinate_names
from .laws import Law, get_law
from .priors import Prior

#: Likelihoods a card may choose for the log loss.
LIKELIHOODS = ("student_t", "normal")

#: How a hierarchical card relates each family's coordinate to the population's.
POOLING_MODES = ("pooled", "fixed", "shared")


@dataclass(frozen=True)
class Pooling:
    """How one sampler coordinate varies across families, as a card's ``[pooling]`` says.

    Attributes
    ----------
    mode
        ``"pooled"``: each family's value is drawn from Normal(population mean, tau), with
        tau learned (partial pooling; prior Gamma(4, 4 / scale), see :mod:`bayescale.hierarchy`);
        ``"fixed"``: Normal(population mean, ``scale``) with the spread asserted by the card
        rather than learned, for coordinates whose spread across families the data cannot
        identify (a wide ``scale`` leaves the families unpooled); ``"shared"``: one value for
        every family (complete pooling).
    scale
        For ``pooled``, the prior mean of tau; for ``fixed``, the spread itself.
    why
        The reason, in words.
    """

    mode: str
    scale: float | None = None
    why: str = ""

    @classmethod
    def from_dict(cls, entry: Mapping, where: str) -> "Pooling":
        """Parse a card table such as ``{mode = "pooled", scale = 0.1, why = "..."}``."""
        entry = dict(entry)
        mode = entry.pop("mode", None)
        if mode not in POOLING_MODES:
            raise ValueError(f"{where}: mode must be one of {POOLING_MODES}, got {mode!r}")
        scale = entry.pop("scale", None)
        why = entry.pop("why", "")
        if entry:
            raise ValueError(f"{where}: unknown keys {sorted(entry)} (a pooling entry has mode, scale, why)")
        if mode == "shared" and scale is not None:
            raise ValueError(f"{where}: a shared coordinate has no spread; remove 'scale'")
        if mode != "shared" and not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0):
            raise ValueError(f"{where}: mode {mode!r} needs a positive 'scale' (the spread across families)")
        return cls(mode, None if scale is None else float(scale), why)


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
    pooling
        For hierarchical cards, how each sampler coordinate varies across families.
    target_accept
        NUTS target acceptance this card is fitted with unless the user says otherwise
        (card entry ``[sampler] target_accept``; 0.8 when absent).
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
    pooling: Mapping[str, Pooling] | None = None
    target_accept: float = 0.8

    @property
    def hierarchical(self) -> bool:
        """True for a card with a ``[pooling]`` section: families pooled, runs as random effects."""
        return self.pooling is not None

    @property
    def noise_parameters(self) -> tuple[str, ...]:
        """Names of the likelihood's parameters: ``sigma`` (and ``nu`` for Student-t; ``sigma_run``,
        the run-to-run spread, for hierarchical cards)."""
        if self.hierarchical:
            return ("sigma", "sigma_run")
        return ("sigma", "nu") if self.likelihood == "student_t" else ("sigma",)

    @property
    def sampled_parameters(self) -> tuple[str, ...]:
        """Names of every sampled site: the law's parameters (for a hierarchical card its
        population mean ``mu``, spreads ``tau`` and family offsets ``family_raw``), then the
        noise parameters."""
        if self.hierarchical:
            spreads = ("tau",) if any(p.mode == "pooled" for p in self.pooling.values()) else ()
            varying = ("family_raw",) if any(p.mode != "shared" for p in self.pooling.values()) else ()
            return ("mu", *spreads, *varying, *self.noise_parameters)
        return (*self.law.parameters, *self.noise_parameters)

    @classmethod
    def from_toml(cls, text: str, where: str = "model card") -> "ModelSpec":
        """Parse and check a card's TOML text.

        Parameters
        ----------
        text
            The card, as TOML.
        where
            What to call the card in error messages (its file name).

        Returns
        -------
        ModelSpec

        Raises
        ------
        ValueError
            If the TOML is invalid or an entry is missing or wrong; the message names the fix.
        """
        card = parse_toml(text, where)
        if card.get("kind") == "downstream":
            raise ValueError(f"{where} is a downstream card; load it with bayescale.spec.load_card (bayescale.fit does)")
        for key in ("name", "law", "priors", "likelihood"):
            if key not in card:
                raise ValueError(f"{where} has no {key!r} entry; see models/chinchilla.toml for a complete card")
        law = get_law(card["law"])
        likelihood = dict(card["likelihood"])
        kind = likelihood.pop("kind", None)
        if kind not in LIKELIHOODS:
            raise ValueError(f"{where}: likelihood.kind must be one of {LIKELIHOODS}, got {kind!r}")
        pooling = _parse_pooling(card.get("pooling"), law, where)
        if pooling is not None and kind != "normal":
            raise ValueError(
                f"{where}: a card with [pooling] needs likelihood.kind = \"normal\" (the run effect is "
                "integrated out in closed form, which needs normal checkpoint noise)"
            )
        needed = set(law.parameters) | {"sigma"} | ({"nu"} if kind == "student_t" else set())
        needed |= {"sigma_run"} if pooling is not None else set()
        entries = {**card["priors"], **likelihood}
        missing = needed - set(entries)
        extra = set(entries) - needed
        if missing:
            raise ValueError(f"{where}: law {law.name!r} with a {kind} likelihood needs priors for {sorted(missing)}")
        if extra:
            raise ValueError(f"{where}: priors {sorted(extra)} are not parameters of law {law.name!r} ({kind})")
        priors = {name: Prior.from_dict(entries[name], f"{where}, prior {name!r}") for name in sorted(needed)}
        target_accept = card_target_accept(card, where)
        return cls(card["name"], law, priors, kind, text, card.get("description", ""), pooling, target_accept)

    @classmethod
    def load(cls, model: "str | Path | ModelSpec") -> "ModelSpec":
        """Load a loss card by bundled name (``"chinchilla"``) or by path to a TOML file.

        Parameters
        ----------
        model
            A bundled card's name (:func:`bayescale.available_cards`), a path to a ``.toml``
            card, or a ModelSpec (returned as it is).

        Returns
        -------
        ModelSpec
        """
        if isinstance(model, ModelSpec):
            return model
        return cls.from_toml(*card_text(model))


def parse_toml(text: str, where: str) -> dict:
    """A card's TOML text as a dict; ``ValueError`` naming the card where it is not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{where} is not valid TOML: {err}") from None


def card_target_accept(card: Mapping, where: str) -> float:
    """The card's ``[sampler] target_accept`` (0.8 when absent), checked."""
    sampler = dict(card.get("sampler", {}))
    target_accept = sampler.pop("target_accept", 0.8)
    sampler.pop("why", None)
    if sampler or not (isinstance(target_accept, float) and 0 < target_accept < 1):
        raise ValueError(f"{where}: [sampler] takes target_accept (a number between 0 and 1) and why")
    return target_accept


def card_text(model: "str | Path") -> tuple[str, str]:
    """A card's TOML text and a description of where it came from, by bundled name or path."""
    path = Path(model)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise ValueError(f"model card file {path} does not exist")
        return path.read_text(), str(path)
    bundled = cards_dir() / f"{model}.toml"
    if not bundled.exists():
        raise ValueError(
            f"no model card named {str(model)!r}; bundled cards: {', '.join(available_cards())} "
            "(or give a path to a .toml card)"
        )
    return bundled.read_text(), f"card {model!r}"


def load_card(model):
    """Load any card: a :class:`ModelSpec` for loss cards, a
    :class:`~bayescale.downstream.DownstreamSpec` for cards with ``kind = "downstream"``."""
    from .downstream import DownstreamSpec

    if isinstance(model, (ModelSpec, DownstreamSpec)):
        return model
    text, where = card_text(model)
    if is_downstream(text):
        return DownstreamSpec.from_toml(text, where)
    return ModelSpec.from_toml(text, where)


def is_downstream(text: str) -> bool:
    """Whether a card's TOML text declares ``kind = "downstream"`` (invalid TOML: no)."""
    try:
        return tomllib.loads(text).get("kind") == "downstream"
    except tomllib.TOMLDecodeError:
        return False


def _parse_pooling(section, law: Law, where: str) -> dict[str, Pooling] | None:
    """The card's ``[pooling]`` section: one entry for every sampler coordinate of the law."""
    if section is None:
        return None
    names = coordinate_names(law)
    missing, extra = set(names) - set(section), set(section) - set(names)
    if missing or extra:
        raise ValueError(
            f"{where}: [pooling] must give one entry for each sampler coordinate of law {law.name!r}: "
            f"{', '.join(names)}" + (f"; missing {sorted(missing)}" if missing else "") + (f"; unknown {sorted(extra)}" if extra else "")
        )
    return {name: Pooling.from_dict(section[name], f"{where}, pooling {name!r}") for name in names}
