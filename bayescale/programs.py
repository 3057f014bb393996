"""Traced programs kept on disk, so that a new process skips tracing its samplers.

JAX's persistent compilation cache (:func:`bayescale.engine.enable_compilation_cache`) saves
compiling, but not tracing: a new process still traces every program in Python before it can
look the compiled one up. For the default Chinchilla fit (240 points) that was ~3 of the 4.3 s
a fresh process took with a warm compilation cache, against 0.7 s for a refit in the same
process (``benchmarks/results/chinchilla.md``). A :class:`StoredProgram` exports its program
once per argument shape (:mod:`jax.export`: StableHLO, serialised) into
``bayescale-programs/`` beside the compilation cache, and a later process deserialises it
instead of tracing.

A stored program is found by a digest of everything that shapes it: the caller's key (the
model card's text and sampler settings), the program's name, its arguments' structure, shapes
and dtypes, the platform and devices, and the versions of JAX, jaxlib and numpyro with a hash
of bayescale's own source, so that an edited package never runs a program traced from older
code. Where the store is off (no compilation cache folder), the program is on another platform
than JAX's default, or the program cannot be exported, it is traced and jitted as usual.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import jax
import jaxlib
import numpy as np
import numpyro
from numpyro.infer.hmc import HMCState
from numpyro.infer.hmc_util import HMCAdaptState

try:
    from jax import export

    import flatbuffers  # noqa: F401  (jax.export's serialiser needs it)

    # The NUTS state crosses the programs' boundary, and a serialised program names the types of
    # its arguments' tree: numpyro's namedtuples must be known to the serialiser by a stable name.
    for _type in (HMCState, HMCAdaptState):
        try:
            export.register_namedtuple_serialization(_type, serialized_name=f"{_type.__module__}.{_type.__qualname__}")
        except ValueError:  # registered already (by the caller): that name serves as well
            pass
    del _type
except ImportError:  # pragma: no cover - an older JAX, or flatbuffers missing: trace as before
    export = None

FOLDER_NAME = "bayescale-programs"


class StoredProgram:
    """``jax.jit(function)``, with its traced form kept on disk per argument signature.

    Parameters
    ----------
    function
        The program (not yet jitted).
    name
        Its name among a sampler's programs.
    key
        What else determines it (model card text, settings, data layout), as a string;
        ``None`` keeps the program in memory only.
    in_shardings, out_shardings
        As for :func:`jax.jit`; given for programs split across several devices (``mesh``).
    mesh
        The devices' mesh for such programs, ``None`` for a program on one device.

    Attributes
    ----------
    loaded
        How many signatures were read from disk rather than traced (for tests and benchmarks).
    """

    def __init__(self, function, name: str, key: str | None, *, in_shardings=None, out_shardings=None, mesh=None):
        self._jitted = jax.jit(function, in_shardings=in_shardings, out_shardings=out_shardings)
        self._name, self._key, self._mesh = name, key, mesh
        self._calls: dict = {}
        self.loaded = 0

    @property
    def signatures(self) -> int:
        """Argument signatures prepared so far: one compiled program each."""
        return len(self._calls)

    def __call__(self, *args):
        flat, tree = jax.tree_util.tree_flatten((args, {}))
        signature = (tree, tuple((np.shape(leaf), str(jax.numpy.result_type(leaf))) for leaf in flat))
        call = self._calls.get(signature)
        if call is None:
            call = self._calls[signature] = self._prepare(args, signature)
        return call(*flat)

    def _prepare(self, args, signature):
        """A callable of the flat arguments: the stored program, or the jitted one."""
        path = _path(self._name, self._key, signature, self._mesh)
        exported = _read(path) if path is not None else None
        if exported is not None:
            self.loaded += 1
        elif path is not None:
            try:
                exported = export.export(self._jitted)(*args)
                _write(path, exported.serialize())
            except Exception:  # noqa: BLE001 - a program JAX cannot export still runs, traced
                exported = None
        if exported is None:
            in_tree = signature[0]
            return lambda *flat: self._jitted(*jax.tree_util.tree_unflatten(in_tree, flat)[0])
        return _callable(exported, self._mesh)


def _callable(exported, mesh):
    """A jitted call of an exported program on the flat arguments."""

    def call(*flat):
        args, kwargs = jax.tree_util.tree_unflatten(exported.in_tree, flat)
        return exported.call(*args, **kwargs)

    if mesh is None:
        return jax.jit(call)
    outputs = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_shardings_jax(mesh))
    return jax.jit(call, in_shardings=tuple(exported.in_shardings_jax(mesh)), out_shardings=outputs)


def folder() -> Path | None:
    """The folder where traced samplers are kept.

    Returns
    -------
    pathlib.Path or None
        ``bayescale-programs`` in JAX's compilation cache folder
        (:func:`bayescale.engine.enable_compilation_cache`), or ``None`` when that cache is
        off, and then no program is stored. Deleting the folder is safe: programs are traced
        and stored again.
    """
    cache = jax.config.jax_compilation_cache_dir
    return Path(cache) / FOLDER_NAME if cache else None


def _path(name: str, key: str | None, signature, mesh) -> Path | None:
    """Where the program is stored, or ``None`` where programs are not stored."""
    where = folder()
    platform = mesh.devices.flat[0].platform if mesh is not None else _default_platform()
    if export is None or key is None or where is None or platform != jax.default_backend():
        return None
    devices = "one" if mesh is None else f"{mesh.devices.size}"
    text = repr((name, key, signature, platform, devices, _versions()))
    return where / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:32]}.jaxexport"


def _default_platform() -> str:
    """The platform programs run on here: that of ``jax.default_device``, if one is set."""
    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend()
    return device if isinstance(device, str) else device.platform


@functools.cache
def _versions() -> str:
    """JAX, jaxlib and numpyro versions and a hash of bayescale's source."""
    source = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        source.update(path.read_bytes())
    return f"jax {jax.__version__} jaxlib {jaxlib.__version__} numpyro {numpyro.__version__} source {source.hexdigest()}"


def _read(path: Path):
    try:
        return export.deserialize(bytearray(path.read_bytes()))
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a damaged or incompatible file is traced again and replaced
        return None


def _write(path: Path, data: bytes) -> None:
    """Write atomically (another process may be reading), or not at all on a read-only cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError:
        pass
