"""Command-line options shared by the examples: sampler settings, seed, output folder."""

import argparse
from pathlib import Path


def parse(description: str, args: list[str] | None, out: str) -> argparse.Namespace:
    """Parse ``args`` (default: the command line) with the options every example takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path(out), help=f"output folder (default {out})")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--num-chains", type=int, default=4, help="NUTS chains (default 4)")
    parser.add_argument("--num-warmup", type=int, default=1000, help="warm-up iterations per chain (default 1000)")
    parser.add_argument("--num-samples", type=int, default=1000, help="kept draws per chain (default 1000)")
    options = parser.parse_args(args)
    options.out.mkdir(parents=True, exist_ok=True)
    return options


def sampler(options: argparse.Namespace) -> dict:
    """The options :func:`bayescale.fit` takes, from parsed arguments."""
    return dict(seed=options.seed, num_chains=options.num_chains, num_warmup=options.num_warmup, num_samples=options.num_samples)
