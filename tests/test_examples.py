"""Every example in examples/ runs, with tiny sampler settings (the figures they print at
their defaults are checked elsewhere: tests/recovery/)."""

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))
#: Tiny settings: these tests check that each example runs end to end, not its numbers.
TINY = ["--num-chains", "2", "--num-warmup", "150", "--num-samples", "150"]


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))  # the examples import their shared _settings module
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


def test_every_example_is_tested():
    assert NAMES == ["backtest", "choose_next_runs", "downstream_emergence", "fit_one_family", "pool_families"]


@pytest.mark.parametrize("name", NAMES)
def test_example_runs(name, tmp_path, capsys):
    module = _load(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny settings leave the sampler's diagnostics unhappy
        result = module.main(["--out", str(tmp_path), *TINY])
    assert result and capsys.readouterr().out.strip()
    if name != "backtest":
        assert any(p.suffix == ".png" for p in tmp_path.iterdir())
