"""Programs kept on disk (bayescale.programs): a new sampler reads them instead of tracing."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.hmc import HMCState
from numpyro.infer.hmc_util import HMCAdaptState

import bayescale as bs
from bayescale import engine, programs


def _state(value):
    """A NUTS state (numpyro's namedtuples, which a stored program's signature must name)."""
    adapt = HMCAdaptState(*[jnp.full(2, value)] * len(HMCAdaptState._fields))
    fields = {name: jnp.full(2, value) for name in HMCState._fields}
    return HMCState(**{**fields, "adapt_state": adapt})


def _step(state, steps):
    return state._replace(z=state.z * steps + 1.0), jnp.sum(state.adapt_state.step_size)


def test_a_stored_program_is_read_back_and_gives_the_same_result(tmp_path, monkeypatch):
    monkeypatch.setattr(programs, "folder", lambda: tmp_path)
    first = programs.StoredProgram(_step, "step", "card A")
    state, total = first(_state(2.0), 3)
    assert first.loaded == 0 and len(list(tmp_path.glob("step-*.jaxexport"))) == 1
    again = programs.StoredProgram(_step, "step", "card A")
    state_again, total_again = again(_state(2.0), 3)
    assert again.loaded == 1
    assert isinstance(state_again, HMCState) and isinstance(state_again.adapt_state, HMCAdaptState)
    np.testing.assert_array_equal(np.asarray(state_again.z), np.asarray(state.z))
    np.testing.assert_array_equal(np.asarray(state_again.z), [7.0, 7.0])
    assert float(total_again) == float(total) == 4.0
    # Another key, or another argument shape, is another program.
    other = programs.StoredProgram(_step, "step", "card B")
    other(_state(2.0), 3)
    assert other.loaded == 0
    again(jax.tree_util.tree_map(lambda leaf: jnp.concatenate([leaf, leaf]), _state(2.0)), 3)
    assert again.loaded == 1 and again.signatures == 2 and len(list(tmp_path.glob("step-*.jaxexport"))) == 3


def test_a_damaged_program_file_is_traced_again_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(programs, "folder", lambda: tmp_path)
    programs.StoredProgram(_step, "step", "card A")(_state(1.0), 2)
    (stored,) = tmp_path.glob("step-*.jaxexport")
    stored.write_bytes(b"not a program")
    fresh = programs.StoredProgram(_step, "step", "card A")
    state, _ = fresh(_state(1.0), 2)
    assert fresh.loaded == 0
    np.testing.assert_array_equal(np.asarray(state.z), [3.0, 3.0])
    assert programs.StoredProgram(_step, "step", "card A")(_state(1.0), 2) is not None
    assert stored.read_bytes() != b"not a program"


def test_without_a_cache_folder_or_a_key_nothing_is_stored(tmp_path, monkeypatch):
    for where, key in ((None, "card A"), (tmp_path, None)):
        monkeypatch.setattr(programs, "folder", lambda where=where: where)
        program = programs.StoredProgram(_step, "step", key)
        state, _ = program(_state(1.0), 2)
        assert program.loaded == 0 and program.signatures == 1 and not list(tmp_path.iterdir())
        np.testing.assert_array_equal(np.asarray(state.z), [3.0, 3.0])


def test_a_refit_in_a_new_sampler_reads_its_programs_and_draws_the_same(small_runs, tmp_path, monkeypatch):
    """A fit traced as usual, one that stores its programs, and one in a new sampler (as in a new
    process) that reads them: the same draws. NUTS trajectories are chaotic, so any difference in
    the programs' arithmetic would show in the draws, not just in their last digits."""
    settings = dict(seed=0, num_chains=4, num_warmup=500, num_samples=500, progress=False)
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for stage, where in (("traced", None), ("stored", tmp_path), ("read", tmp_path)):
            monkeypatch.setattr(programs, "folder", lambda where=where: where)
            engine.clear_samplers()
            fits[stage] = bs.fit(small_runs, "chinchilla", **settings)
    (sampler,) = engine._SAMPLERS.values()
    assert sampler._start.loaded == 1 and sampler._advance.loaded == 1 and sampler._constrain.loaded == 1
    for name in ("alpha", "beta", "e"):
        for stage in ("stored", "read"):
            np.testing.assert_array_equal(fits[stage].idata.posterior[name].values, fits["traced"].idata.posterior[name].values)
