"""The ``bayescale`` command line.

Results go to stdout (a table, or JSON with ``--format json``); progress, advice
and errors go to stderr. Bad input exits with status 2 and a message naming the
fix, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

EXIT_BAD_INPUT = 2


def _rows(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready records; infinite values (an emergence threshold never reached) are kept as
    ``Infinity``, which Python's json reads back, rather than turned into ``null``."""
    frame = frame.drop(columns=[c for c in ("draws",) if c in frame])
    records = json.loads(frame.to_json(orient="records", double_precision=15))
    for record, (_, row) in zip(records, frame.iterrows()):
        for column, value in row.items():
            if isinstance(value, float) and np.isinf(value):
                record[column] = float(value)
    return records


def _emit(payload: dict, table: pd.DataFrame, fmt: str) -> None:
    if fmt == "json":
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def _summary_payload(result) -> dict:
    table = result.summary()
    columns = ["mean", "sd", "q2.5", "q50", "q97.5", "r_hat", "ess_bulk"]
    parameters = {row["parameter"]: {c: (None if not np.isfinite(row[c]) else float(row[c])) for c in columns} for _, row in table.iterrows()}
    return {"parameters": parameters, "diagnostics": result.diagnostics.to_dict()}


def _cmd_fit(args) -> None:
    import bayescale as bs

    runs = bs.RunTable.from_csv(args.runs)
    if args.min_fraction_of_training is not None or args.min_tokens is not None:
        runs = runs.drop_early_checkpoints(args.min_fraction_of_training, args.min_tokens)
    sampler = dict(model=args.model, target_accept=args.target_accept, **_sampler_options(args))
    if args.by is None:
        result = bs.fit(runs, **sampler)
        path = result.save(args.out)
        print(f"bayescale: wrote {path}", file=sys.stderr)
        _emit(_summary_payload(result), result.summary(), args.format)
        return
    fits = bs.fit_many(runs, by=args.by, batch_size=args.batch_size, sampler=args.sampler, **sampler)
    out = Path(args.out)
    rows, payload = [], {}
    for name, result in fits.items():
        result.save(out / f"{_file_name(name)}.nc")
        payload[name] = _summary_payload(result)
        for _, row in result.summary().iterrows():
            rows.append({args.by: name, **row.to_dict()})
    print(f"bayescale: wrote {len(fits)} fits to {out}/", file=sys.stderr)
    _emit({"groups": payload}, pd.DataFrame(rows), args.format)


def _file_name(group: str) -> str:
    """A group name made safe as a file name (``mmlu/abstract algebra`` -> ``mmlu_abstract_algebra``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in group) or "group"


def _cmd_summary(args) -> None:
    import bayescale as bs

    result = bs.load(args.fit)
    result.diagnostics.warn()
    _emit(_summary_payload(result), result.summary(), args.format)


def _cmd_predict(args) -> None:
    import bayescale as bs
    from .downstream import DownstreamFit

    result = bs.load(args.fit)
    if isinstance(result, DownstreamFit):
        if args.flops is None or args.params is not None or args.tokens is not None:
            raise ValueError("a downstream fit predicts accuracy from compute: give --flops (and --task; default every task)")
        table = result.predict(flops=args.flops, task=args.task, family=args.family, noise=args.noise)
    else:
        if args.task is not None:
            raise ValueError(f"{args.fit} is a loss fit, which has no tasks; fit a downstream card (e.g. --model downstream-sigmoid) to predict accuracy")
        table = result.predict(params=args.params, tokens=args.tokens, flops=args.flops, family=args.family, noise=args.noise)
    _emit({"rows": _rows(table)}, table, args.format)


def _cmd_emergence(args) -> None:
    import bayescale as bs
    from .downstream import DownstreamFit

    result = bs.load(args.fit)
    if not isinstance(result, DownstreamFit):
        raise ValueError(f"{args.fit} is a loss fit; emergence needs a downstream fit (bayescale fit EVALS.csv --model downstream-sigmoid)")
    table = bs.emergence(result, delta=args.delta, fraction=args.fraction, by_flops=args.by_flops, family=args.family)
    _emit({"rows": _rows(table)}, table, args.format)


def _cmd_optimal(args) -> None:
    import bayescale as bs

    table = bs.load(args.fit).optimal(args.flops)
    _emit({"rows": _rows(table)}, table, args.format)


def _cmd_backtest(args) -> None:
    import bayescale as bs

    runs = bs.RunTable.from_csv(args.runs)
    split = dict(cutoff_flops=args.cutoff_flops, family=args.family, keep_sizes=args.keep_sizes)
    result = bs.backtest(runs, args.model, target_accept=args.target_accept, **split, **_sampler_options(args))
    summary = result.summary()
    _emit({"summary": _rows(summary), "rows": _rows(result.rows)}, summary, args.format)


def _cmd_design(args) -> None:
    import bayescale as bs

    if args.target_kind == "optimal_params":
        if args.target_flops is None:
            raise ValueError("--target-kind optimal_params needs --target-flops (the budget whose optimal size is the target)")
        target = {"kind": "optimal_params", "flops": args.target_flops}
    elif args.target_kind == "emergence":
        if args.task is None:
            raise ValueError("--target-kind emergence needs --task (the task whose emergence threshold is the target)")
        target = {"kind": "emergence", "task": args.task, "delta": args.delta, "fraction": args.fraction}
    else:
        target = {k: v for k, v in (("params", args.target_params), ("tokens", args.target_tokens), ("flops", args.target_flops)) if v is not None}
        if not target:
            raise ValueError("give the target scale: --target-params and --target-tokens (or --target-flops)")
    design = bs.suggest_runs(bs.load(args.fit), _read_candidates(args.candidates), args.budget_flops, target, family=args.family, max_repeats=args.max_repeats, seed=args.seed)
    print(
        f"bayescale: {design.target}: 95% width {design.width_95_before:.4g} now, {design.width_95_after:.4g} expected after "
        f"{len(design.selected)} runs costing {design.spent:.3g} of {design.budget_flops:.3g} FLOP",
        file=sys.stderr,
    )
    table = design.candidates.sort_values(["selected", "order", "gain_per_flop"], ascending=[False, True, False])
    payload = {"target": design.target, "width_95_before": design.width_95_before, "width_95_after": design.width_95_after, "spent": design.spent, "rows": _rows(table)}
    _emit(payload, table, args.format)


def _cmd_report(args) -> None:
    import bayescale as bs
    from .downstream import DownstreamFit
    from .report import write_report

    result = bs.load(args.fit)
    given = {k: v for k, v in (("params", args.params), ("tokens", args.tokens), ("flops", args.flops)) if v is not None}
    lengths = {len(v) for v in given.values()}
    if len(lengths) > 1:
        raise ValueError("give as many --params as --tokens (one target per pair)")
    targets = pd.DataFrame(given) if given else None
    checked = design = None
    if args.backtest_cutoff is not None:
        # The fit keeps its observations (with run ids for pooled cards), so it refits as it was made.
        print(f"bayescale: backtest: refitting {args.fit} below {args.backtest_cutoff:.3g} FLOP", file=sys.stderr)
        checked = bs.backtest(result.observed(), result.spec, cutoff_flops=args.backtest_cutoff, **_sampler_options(args))
    if args.candidates is not None:
        if isinstance(result, DownstreamFit):
            raise ValueError("the report's run design (--candidates) needs a loss fit; for a task's emergence threshold run: bayescale design FIT --candidates CANDS.csv --budget-flops C --target-kind emergence --task T")
        if args.budget_flops is None or targets is None:
            raise ValueError("--candidates needs --budget-flops and a target (--params and --tokens, or --flops); the first target is the design's")
        design = bs.suggest_runs(result, _read_candidates(args.candidates), args.budget_flops, targets.iloc[0].to_dict(), max_repeats=args.max_repeats, seed=args.seed)
    path = write_report(result, args.out, targets=targets, budgets=args.budgets, backtest=checked, design=design)
    print(f"bayescale: wrote {path}", file=sys.stderr)


def _cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(Path(args.out), **_sampler_options(args))


def _read_candidates(path: str) -> pd.DataFrame:
    """The candidate runs of a design, with a one-line error for a missing file."""
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file: {path}")
    return pd.read_csv(path)


def _sampler_options(args) -> dict:
    """The sampler settings that :func:`_add_sampler` put on the command line."""
    return dict(seed=args.seed, num_chains=args.num_chains, num_warmup=args.num_warmup, num_samples=args.num_samples, device=args.device)


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format on stdout")


def _add_max_repeats(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-repeats", type=int, default=1, help="how many times one candidate may be chosen, each a run with its own seed (default 1)")


def _add_sampler(parser: argparse.ArgumentParser, warmup: int = 1000, samples: int = 1000) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--num-chains", type=int, default=4, help="NUTS chains (default 4)")
    parser.add_argument("--num-warmup", type=int, default=warmup, help=f"warm-up iterations per chain (default {warmup})")
    parser.add_argument("--num-samples", type=int, default=samples, help=f"kept draws per chain (default {samples})")
    parser.add_argument("--device", choices=("cpu", "gpu", "tpu"), help="where to sample (default: JAX's default platform, a GPU when a CUDA build of JAX is installed)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayescale`` command."""
    parser = argparse.ArgumentParser(prog="bayescale", description="Bayesian inference of neural scaling laws.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("fit", help="fit a model card to a runs CSV and save the posterior")
    p.add_argument("runs", help="CSV of runs, one row per observation (columns: params, tokens, loss, ...)")
    p.add_argument("--model", default="chinchilla", help="card name (chinchilla, compute-power-law, kaplan; downstream-sigmoid, loss-to-accuracy, downstream-exponential for task accuracies) or path to a .toml card")
    p.add_argument("--out", required=True, help="where to write the fit (netCDF, e.g. fit.nc); a folder with --by")
    p.add_argument("--target-accept", type=float, default=None, help="NUTS target acceptance (default: the card's, usually 0.8; raise to 0.95 on divergences)")
    p.add_argument("--by", help="fit each group of this column (task, family, ...) separately, many per compiled program")
    p.add_argument("--batch-size", type=int, default=64, help="groups per compiled program with --by (default 64)")
    p.add_argument(
        "--sampler", choices=("auto", "nuts"), default="auto",
        help="with --by and a downstream card: auto (default) draws each task by independence Metropolis-Hastings "
        "and refits with NUTS any task that fails a check; nuts uses NUTS for every task",
    )
    p.add_argument("--min-fraction-of-training", type=float, help="drop checkpoints before this fraction of their run's tokens (e.g. 0.1)")
    p.add_argument("--min-tokens", type=float, help="drop checkpoints with fewer tokens than this")
    _add_sampler(p)
    _add_format(p)
    p.set_defaults(func=_cmd_fit)

    p = commands.add_parser("summary", help="posterior summary and diagnostics of a saved fit")
    p.add_argument("fit", help="a fit saved by `bayescale fit`")
    _add_format(p)
    p.set_defaults(func=_cmd_summary)

    p = commands.add_parser("predict", help="posterior predictive loss at new scales")
    p.add_argument("fit", help="a fit saved by `bayescale fit`")
    p.add_argument("--params", type=float, nargs="+", help="parameter count(s) N")
    p.add_argument("--tokens", type=float, nargs="+", help="training token count(s) D")
    p.add_argument("--flops", type=float, nargs="+", help="training compute C (= 6 N D when N or D is missing)")
    p.add_argument("--family", help="family to predict for")
    p.add_argument("--task", nargs="+", help="downstream fits: task(s) to predict accuracy for (default: every task)")
    p.add_argument("--noise", action="store_true", help="include observation noise (the loss a new run would show; the accuracy an evaluation would score)")
    _add_format(p)
    p.set_defaults(func=_cmd_predict)

    p = commands.add_parser("emergence", help="compute (and loss) at which each task of a downstream fit takes off")
    p.add_argument("fit", help="a downstream fit saved by `bayescale fit --model downstream-sigmoid`")
    threshold = p.add_mutually_exclusive_group()
    threshold.add_argument("--delta", type=float, help="threshold as an accuracy above chance (e.g. 0.05)")
    threshold.add_argument("--fraction", type=float, help="threshold as a fraction of each task's headroom above chance (default 0.1)")
    p.add_argument("--by-flops", type=float, help="report P(emerged by this compute) (default: the largest fitted compute)")
    p.add_argument("--family", help="family (default: the only one, or the population's typical family; 'new' for an unseen one)")
    _add_format(p)
    p.set_defaults(func=_cmd_emergence)

    p = commands.add_parser("optimal", help="compute-optimal parameters and tokens at a budget")
    p.add_argument("fit", help="a fit saved by `bayescale fit`")
    p.add_argument("--flops", type=float, nargs="+", required=True, help="training budget(s) in FLOP")
    _add_format(p)
    p.set_defaults(func=_cmd_optimal)

    p = commands.add_parser("backtest", help="fit part of the runs (below a compute cutoff, or all but a family's larger sizes), predict the rest, score error and calibration")
    p.add_argument("runs", help="CSV of runs (as for `bayescale fit`)")
    split = p.add_mutually_exclusive_group(required=True)
    split.add_argument("--cutoff-flops", type=float, help="fit observations below this compute; predict the others")
    split.add_argument("--family", help="leave this family out: fit its --keep-sizes smallest sizes and every other family; predict its larger sizes")
    p.add_argument("--keep-sizes", type=int, default=2, help="with --family: how many of its smallest model sizes to fit (default 2)")
    p.add_argument("--model", default="chinchilla", help="card name or path to a .toml card")
    p.add_argument("--target-accept", type=float, default=None, help="NUTS target acceptance (default: the card's, usually 0.8; raise to 0.95 on divergences)")
    _add_sampler(p)
    _add_format(p)
    p.set_defaults(func=_cmd_backtest)

    p = commands.add_parser("design", help="choose the candidate runs that most narrow a target's prediction per FLOP")
    p.add_argument("fit", help="a saved fit (.nc)")
    p.add_argument("--candidates", required=True, help="CSV of candidate runs: params, tokens (or flops), optional family and cost")
    p.add_argument("--budget-flops", type=float, required=True, help="compute the chosen runs may spend in total")
    p.add_argument("--target-params", type=float, help="target model size (with --target-tokens)")
    p.add_argument("--target-tokens", type=float, help="target training tokens (with --target-params)")
    p.add_argument("--target-flops", type=float, help="target compute (a compute law's input, or the budget of --target-kind optimal_params)")
    p.add_argument(
        "--target-kind", choices=("loss", "optimal_params", "emergence"), default="loss",
        help="what to learn about: the loss at the target scale (default), the compute-optimal size at --target-flops, or (a downstream-sigmoid fit) --task's emergence threshold",
    )
    p.add_argument("--task", help="with --target-kind emergence: the task")
    p.add_argument("--delta", type=float, help="with --target-kind emergence: threshold as accuracy above chance")
    p.add_argument("--fraction", type=float, help="with --target-kind emergence: threshold as a fraction of the headroom (default 0.1)")
    p.add_argument("--family", help="the target's family (hierarchical or multi-family downstream fits; 'new' for an unseen one)")
    _add_max_repeats(p)
    p.add_argument("--seed", type=int, default=0, help="seed of population draws for a new family (default 0)")
    _add_format(p)
    p.set_defaults(func=_cmd_design)

    p = commands.add_parser("report", help="write one self-contained HTML report of a saved fit")
    p.add_argument("fit", help="a fit saved by `bayescale fit`")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--params", type=float, nargs="+", help="targets to predict: parameter count(s) N (with --tokens)")
    p.add_argument("--tokens", type=float, nargs="+", help="targets to predict: training token count(s) D (with --params)")
    p.add_argument("--flops", type=float, nargs="+", help="targets to predict: compute C (compute laws and downstream fits)")
    p.add_argument("--budgets", type=float, nargs="+", help="budgets of the compute-optimal table (default: the three powers of ten above the data)")
    p.add_argument("--backtest-cutoff", type=float, help="also refit below this compute and show how well the rest was predicted")
    p.add_argument("--candidates", help="CSV of candidate runs: also show which to train next for the first target (with --budget-flops)")
    p.add_argument("--budget-flops", type=float, help="compute the chosen next runs may spend (with --candidates)")
    _add_max_repeats(p)
    _add_sampler(p)
    p.set_defaults(func=_cmd_report)

    p = commands.add_parser("demo", help="fit the bundled Chinchilla data, backtest it, suggest next runs, and write results, figures and report.html")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    _add_sampler(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"bayescale: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    from .data import DataError

    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        args.func(args)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"bayescale: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        warnings.showwarning = shown
    return 0


if __name__ == "__main__":
    sys.exit(main())
