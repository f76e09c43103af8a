"""The ``tune-distill`` command line. All argument parsing lives here.

Every user mistake surfaces as one line on stderr and exit status 2, with nothing written
before the input has been validated; a run that diverges (valid settings, too large an lr) is
one line and exit status 1.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

import numpy as np

from .recipe.config import (DATASETS, EVAL_PROTOCOLS, PRESETS, Config, dataset_spec, file_preset, load_config_file,
                            make_config, parse_assignments)
from .core.errors import UserError

# Baselines are runs without iterations, named by the initialisation they evaluate. Where the
# dataset's spec names a whole_cloud size (MNIST: 400 points, above the 250-point cap) a baseline
# keeps each real cloud whole, not a subsample, also under a --config file written for a
# distillation run; 3D shapes keep the config's points per cloud (1,024: every point of a
# ModelNet shape). --set points=... wins.
BASELINES: dict[str, str] = {"random_real": "real", "herding": "herding", "kcenter": "kcenter",
                             "class_mean_topk": "class_mean_topk", "full": "full"}


def _config_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None, **forced: Any) -> Config:
    """Preset (``--preset``, or the ``--config`` file's ``preset:`` key), then the ``--config``
    file, then ``defaults``, then ``--set`` pairs, then ``--seed``, then ``forced``: later wins."""
    preset = args.preset
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
        preset = file_preset(values, preset, f"--config {args.config}")
    elif preset is None:
        preset = "quick"
    values.update(defaults or {})
    values.update(parse_assignments(args.set or []))
    if args.seed is not None:
        values["seed"] = args.seed
    values.update(forced)
    return make_config(values, preset=preset)


def _fresh_out_dir(out: str | None, stem: str) -> Path:
    """The output folder: refuses one that already holds a run, so nothing is overwritten."""
    path = Path(out) if out else Path("results") / "runs" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (path / "metrics.json").exists():
        raise UserError(f"{path} already holds a run; choose another --out (nothing was overwritten)")
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; give a folder")
    return path


def _scored(cfg: Config, split: str) -> str:
    """What a printed score is: the metric, the split, the classifiers behind it."""
    metric = "balanced accuracy" if cfg.eval_metric == "balanced" else "accuracy"
    nets = "ConvNets" if dataset_spec(cfg.dataset).evaluator == "image" else {
        "pointnet": "PointNets", "dgcnn": "DGCNNs", "pointnet2": "PointNet++s"}[cfg.eval_net]
    if cfg.eval_protocol:
        nets += f", protocol {cfg.eval_protocol}"
    return f"{metric} ({split}, {cfg.eval_models} {nets} x {cfg.eval_epochs} epochs)"


def _progress(total: int, models: int) -> tuple[Callable[[dict], None], Callable[[], None]]:
    """tqdm bars over distillation iterations, then over the evaluation's models, fed by ``run``'s
    report rows (the evaluation is the longest phase of a run on a CPU)."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    if total:
        bars["distill"] = tqdm(total=total, desc="distilling", unit="it", dynamic_ncols=True, file=sys.stderr)

    def report(row: dict) -> None:
        bar = bars.get("distill")
        if "loss" in row and bar is not None:
            bar.update(row["iteration"] + 1 - bar.n)
            bar.set_postfix(loss=f"{row['loss']:.4g}", grad=f"{row['grad_abs']:.2g}", moved=f"{row['delta_abs']:.2g}")
        elif "acc_mean" in row:
            also = "".join(f", {k.removesuffix('_acc_mean')} {100 * v:.2f} %" for k, v in row.items() if k.endswith("_acc_mean"))
            tqdm.write(f"iteration {row['iteration']}: accuracy {100 * row['acc_mean']:.2f} ± {100 * row['acc_std']:.2f} %"
                       f"{also}", file=sys.stderr)
        elif "eval_done" in row:
            if "eval" not in bars:
                if bar is not None:
                    bar.close()
                bars["eval"] = tqdm(total=row["eval_total"], desc="evaluating", unit="model", dynamic_ncols=True,
                                    file=sys.stderr)
            bars["eval"].update(row["eval_done"] - bars["eval"].n)
            if row["eval_done"] == row["eval_total"]:
                bars.pop("eval").close()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return report, close


def _run_and_save(cfg: Config, args: argparse.Namespace, stem: str) -> int:
    from .recipe.artifacts import save_run
    from .recipe.run import load_data, run

    out = _fresh_out_dir(args.out, stem)
    data = load_data(cfg, args.data_dir)  # before any output
    report, close = _progress(cfg.total_iterations, cfg.eval_models)
    try:
        result = run(cfg, report=report, data=data)
    finally:
        close()
    save_run(result, out)
    print(f"{_scored(cfg, result.split)}: "
          f"{100 * result.acc_mean:.2f} ± {100 * result.acc_std:.2f} %  "
          f"[{', '.join(f'{100 * a:.2f}' for a in result.accuracies)}]")
    print(f"time: {result.seconds:.1f} s (distillation {result.distill_seconds:.1f} s, "
          f"evaluation {result.eval_seconds:.1f} s)")
    print(f"wrote {out}/: {', '.join(p.name for p in sorted(out.iterdir()))}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    return _run_and_save(cfg, args, f"{args.preset or 'run'}-seed{cfg.seed}")


def cmd_baseline(args: argparse.Namespace) -> int:
    if args.name not in BASELINES:
        raise UserError(f"unknown baseline {args.name!r}; choose one of: {', '.join(BASELINES)}")
    init = BASELINES[args.name]
    ipc = {"ipc": args.ipc} if args.ipc is not None else {}  # else the config's (or the preset's) ipc
    cfg = _config_from_args(args, None, init=init, iterations=0, **ipc)
    given = "points" in parse_assignments(args.set or [])
    whole = dataset_spec(cfg.dataset).whole_cloud
    if whole is not None and init not in ("class_mean_topk", "full") and not given:
        cfg = cfg.replace(points=whole)
    return _run_and_save(cfg, args, f"baseline-{args.name}-ipc{cfg.ipc}-seed{cfg.seed}")


def _set_values(path: Path, folder: Path | None, dataset: str | None, config: str | None = None,
                hint: str = "") -> tuple[dict[str, Any], str | None]:
    """``(values, preset)`` of the config a set belongs to: its run's config.yaml (or ``config``),
    with ``dataset`` if given; for a bare set, ``dataset``'s own protocol (``hint`` ends the error
    for a bare set without ``dataset``)."""
    source = config or (folder / "config.yaml" if folder and (folder / "config.yaml").exists() else None)
    if source:
        values = load_config_file(source)
        preset = file_preset(values, None, f"config file {source}")
        return values | ({"dataset": dataset} if dataset else {}), preset
    if not dataset:
        raise UserError(f"{path} has no config.yaml beside it; say which data it is for with --dataset "
                        f"({', '.join(DATASETS)}){hint}")
    return {"dataset": dataset}, DATASETS[dataset].protocol  # the protocol a bare set is scored with


def _evaluate_config(args: argparse.Namespace, folder: Path | None) -> Config:
    """The config a set is scored under: its run's config.yaml (or --config), else the dataset's
    full protocol; then --protocol (which replaces every evaluation key it names), --net, --set."""
    from .recipe.config import with_protocol

    values, preset = _set_values(Path(args.path), folder, args.dataset, args.config, ", or give --config")
    if args.protocol:
        values = with_protocol(values, args.protocol)
    if args.net:
        values["eval_net"] = args.net
    values.update(parse_assignments(args.set or []))
    if args.seed is not None:
        values["seed"] = args.seed
    return make_config(values, preset=preset)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .recipe.artifacts import load_synthetic, record_scores
    from .recipe.foreign import read_set
    from .recipe.run import ceiling_set, evaluate_set, evaluator_record, load_data
    from .recipe.shipped import find_entry

    path = Path(args.path)
    foreign = bool(args.labels or args.labels_blocks or args.points_key or args.labels_key or args.up != "z"
                   or path.suffix == ".npy")
    folder = path if path.is_dir() else (None if foreign else path.parent)
    if args.record and (folder is None or not path.is_dir() or not (path / "config.yaml").exists()):
        raise UserError(f"--record writes into a run folder's scores/; {path} is not one (a folder with config.yaml)")
    cfg = _evaluate_config(args, folder)
    if args.record and not cfg.eval_protocol:
        raise UserError(f"--record files scores under a protocol's name: give --protocol "
                        f"({', '.join(sorted(EVAL_PROTOCOLS))})")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise UserError(f"--out {out} already exists; choose another path (nothing was overwritten)")
    data = load_data(cfg, args.data_dir)
    if foreign:
        points, labels = read_set(path, data.num_classes, args.points_key or "points", args.labels_key or "labels",
                                  args.labels, args.labels_blocks, args.up)
    elif cfg.init == "full" and path.is_dir() and not (path / "synthetic.npz").exists():
        points, labels = ceiling_set(cfg, data)  # a ceiling's set is the training set itself
    else:
        points, labels = load_synthetic(path, data=data)  # a selection is rebuilt from the data
    report, close = _progress(0, cfg.eval_models)
    started = time.perf_counter()
    try:
        scores = evaluate_set(cfg, points, labels, data, report, per_class=True)
    finally:
        close()
    seconds = time.perf_counter() - started
    names = data.class_names or tuple(map(str, range(data.num_classes)))
    splits = [name for name in scores if "/" not in name]
    result: dict[str, Any] = {"set": str(path), "clouds": int(points.shape[0]), "points_per_cloud": int(points.shape[1]),
                              "split": cfg.eval_split, "seed": cfg.seed, "seconds": seconds}
    for split in splits:
        accs = scores[split]
        prefix = "" if split == cfg.eval_split else f"{split}_"
        result |= {f"{prefix}acc_mean": float(np.mean(accs)), f"{prefix}acc_std": float(np.std(accs)),
                   f"{prefix}accuracies": accs}
        per_class = {names[int(k.split("/")[1])]: float(np.mean(a)) for k, a in scores.items() if k.startswith(split + "/")}
        result[f"{split}_per_class"] = per_class
        print(f"{_scored(cfg, split)}: {100 * np.mean(accs):.2f} ± {100 * np.std(accs):.2f} %  "
              f"[{', '.join(f'{100 * a:.2f}' for a in accs)}]")
        print("  per class: " + ", ".join(f"{c} {100 * a:.1f}" for c, a in per_class.items()))
    result["evaluator"] = evaluator_record(cfg)
    print(f"time: {seconds:.1f} s")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    same = None
    if args.record:
        target, same = record_scores(path, f"{cfg.eval_protocol}-{cfg.eval_net}", result)
        print(f"recorded {target}" if same is None else
              f"reproduces {target} to the bit" if same else f"differs from {target} (kept as it was)")
    entry = find_entry(folder) if folder is not None else None
    if entry and not (args.config or args.set or args.seed is not None or args.protocol or args.net):
        recorded = entry["scores"][entry["protocol"]][cfg.eval_split]  # scored as it was when shipped
        print(f"shipped {entry['kind']} {entry['path']}: recorded {recorded:.4f} %, " +
              ("reproduced" if round(100 * result["acc_mean"], 4) == recorded else
               "NOT reproduced (another CPU type or torch thread count rounds differently)"))
    print(json.dumps(result))  # the last line: machine-readable
    return 1 if same is False else 0


# Search: search / results / export / report. Ray is imported only inside these commands.
def _search_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags as dotted overrides of the space file, validated with it."""
    out: dict[str, Any] = {}
    flags = {"num_samples": "search.num_samples", "seeds": "search.seeds", "concurrency": "search.concurrency",
             "batch": "search.batch",
             "cpus_per_trial": "search.resources.cpus", "gpus_per_trial": "search.resources.gpus",
             "time_budget_s": "search.time_budget_s", "preset": "base.preset"}
    for attr, key in flags.items():
        if getattr(args, attr) is not None:
            out[key] = getattr(args, attr)
    for key, value in parse_assignments(args.set or []).items():
        out[f"base.set.{key}"] = value
    return out


def cmd_search(args: argparse.Namespace) -> int:
    from .tune.results import experiment_dir, read_space
    from .tune.space import load_space, space_from_dict
    from .tune.tuner import search

    overrides = _search_overrides(args)
    if args.space is None:
        if not (args.resume and args.name):
            raise UserError("give a search space file (e.g. search_spaces/quick.yaml), or --resume --name NAME")
        stored = read_space(experiment_dir(args.name, args.storage)).to_dict()
        space = space_from_dict(stored, overrides)
    else:
        space = load_space(args.space, overrides)
    name = args.name or Path(args.space).stem
    outcome = search(space, name=name, storage=args.storage, data_dir=args.data_dir, address=args.address,
                     resume=args.resume, mlflow=args.mlflow)
    df = outcome.results
    counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) or "no trials"
    ran = f"in {outcome.seconds:.0f} s" if outcome.seconds else "(nothing left to run)"
    print(f"\n{name}: {len(df)} of {outcome.total} trials ({counts}) {ran}")
    from .tune.results import leaderboard, pareto_trials

    best = pareto_trials(df) if space.search.multi else leaderboard(df, 5)
    if not best.empty:
        print("the front, cheapest first (accuracies in %):" if space.search.multi else "best trials (accuracies in %):")
        print(_table(best, df.attrs["params"]))
    storage = f" --storage {args.storage}" if args.storage else ""
    if outcome.interrupted:
        # The stored space already holds every override, so the resume needs only where things are.
        where = "".join(f" --{flag.replace('_', '-')} {shlex.quote(str(getattr(args, flag)))}"
                        for flag in ("storage", "data_dir", "address") if getattr(args, flag))
        print(f"interrupted: resume with  tune-distill search --name {name} --resume{where}", file=sys.stderr)
        return 130
    if outcome.budget_spent:
        print(f"the time budget ({space.search.time_budget_s:g} s) ended the search after {outcome.finished} trials")
    print(f"read:   tune-distill results {name}{storage}\nexport: tune-distill export {name}{storage}"
          f"\nreport: tune-distill report {name}{storage}")
    return 0


def _table(df: Any, params: list[str], group: bool = False, columns: list[str] | None = None) -> str:
    """A readable table: accuracies in %, paths left out."""
    return _percent(df, params, group, columns).to_string(index=False, na_rep="")


PERCENT = ("acc_mean", "acc_std", "acc_min", "objective")


def _percent(df: Any, params: list[str], group: bool = False, columns: list[str] | None = None) -> Any:
    """The columns a reader wants (or ``columns``), accuracies in % (csv and json keep every
    column but the full config's, as fractions)."""
    shown = df.copy()
    if group:
        shown[["mean", "std"]] = (100 * shown[["mean", "std"]]).round(2)
        return shown
    # A multi-objective search shows its costs and which trials are on the front.
    costs = [c for c, _ in df.attrs.get("objectives", []) if c != "objective"]
    cols = columns or ["trial", "status", *params, "seeds_done", "acc_mean", "acc_std", "acc_min", "objective",
                       *([*costs, "pareto"] if costs else []), "seconds", "node"]
    if columns is None and shown["error"].notna().any():
        cols.append("error")
    shown = shown[cols]
    for c in shown.columns:
        if c in PERCENT or str(c).startswith("acc_seed"):
            shown[c] = (100 * shown[c]).round(2)
    if "seconds" in shown.columns:
        shown["seconds"] = shown["seconds"].round(1)
    return shown


def _chosen_columns(df: Any, wanted: str) -> list[str]:
    """``--columns``: comma-separated names (``config/<key>`` too), or ``all``; unknown names are one line."""
    import difflib

    from .tune.results import column_list

    names = [c.strip() for c in wanted.split(",") if c.strip()]
    if names == ["all"]:
        return list(df.columns)
    for name in names:
        if name not in df.columns:
            close = difflib.get_close_matches(name, list(map(str, df.columns)), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(f"--columns: no column {name!r}; {hint}columns: {column_list(df)} (or all)")
    if not names:
        raise UserError("--columns: give column names, comma-separated (e.g. trial,objective,config/lr), or all")
    return list(dict.fromkeys(names))


def cmd_results(args: argparse.Namespace) -> int:
    from .tune.results import (config_columns, filter_rows, group_objective, leaderboard, load_results, pareto_trials,
                               to_markdown)

    df = load_results(args.name, args.storage, config=True)  # config/<key> columns for --columns/--where/--group-by
    params = df.attrs["params"]
    columns = _chosen_columns(df, args.columns) if args.columns else None
    if args.where:
        df = filter_rows(df, args.where)
    group = [c.strip() for c in args.group_by.split(",") if c.strip()] if args.group_by else []
    if group and columns:
        raise UserError("--columns chooses the trials' columns; under --group-by each row is a group "
                        "(its columns, then mean, std, count); drop one")
    if group and args.pareto:
        raise UserError("--pareto lists trials, --group-by groups them; drop one")
    if group:
        out = group_objective(df, group)
    else:
        scored = pareto_trials(df) if args.pareto else leaderboard(df)
        out = scored.head(args.top) if args.top else scored
        if not args.top and not args.pareto:  # every trial: the unscored (errored, pending) after the ranked ones
            out = df.loc[list(scored.index) + [i for i in df.index if i not in scored.index]]
        # csv and json: every column but the full config's (config/<key>), unless --columns says
        out = out[columns] if columns else out.drop(columns=config_columns(df))
    if args.format == "csv":
        print(out.to_csv(index=False), end="")
    elif args.format == "json":
        print(out.to_json(orient="records", indent=1))
    elif args.format == "markdown":  # for reading, like the table: accuracies in %, no paths
        print(to_markdown(_percent(out, params, bool(group), columns)))
    else:
        if out.empty:
            print("no trials match" if args.where or args.pareto else "no trials yet")
        else:
            head = "objective per group (in %):\n" if group else "accuracies in %:\n"
            if args.pareto:
                objectives = ", ".join(f"{c} ({m})" for c, m in df.attrs["objectives"])
                head = f"the front: finished trials no other beats in every objective, {objectives}; accuracies in %:\n"
            print(head + _table(out, params, bool(group), columns))
    return 0


def _load_set(path: Path, data_dir: str | None, dataset: str | None = None) -> tuple[np.ndarray, np.ndarray, Any]:
    """A set (run folder, shipped cell, synthetic.npz or selection.json) with the dataset it is of:
    its config.yaml's (or selection's) dataset, else ``dataset``."""
    from .recipe.artifacts import load_synthetic
    from .recipe.run import load_data

    if not path.exists():
        raise UserError(f"{path} not found; give a run folder, a cell under distilled/ or a synthetic.npz")
    values, preset = _set_values(path, path if path.is_dir() else path.parent, dataset)
    data = load_data(make_config(values, preset=preset), data_dir)
    points, labels = load_synthetic(path, data=data)
    return points, labels, data


def cmd_draw(args: argparse.Namespace) -> int:
    from .recipe.artifacts import save_picture

    path = Path(args.path)
    points, labels, data = _load_set(path, args.data_dir, args.dataset)
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent) / "synthetic.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_picture(out, points, labels, data.domain, data.class_names)
    print(f"wrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    path = Path(args.name)
    if path.is_dir() and (path / "config.yaml").exists():  # one set: a run folder or a shipped cell
        import shutil

        from .recipe.artifacts import save_plys, save_synthetic

        points, labels, data = _load_set(path, args.data_dir)
        out = Path(args.out or Path("exports") / "-".join(path.resolve().parts[-4:]))
        out.mkdir(parents=True, exist_ok=True)
        save_synthetic(out / "synthetic.npz", points, labels)
        save_plys(out / "ply", points, labels, data.name)
        for name in ("config.yaml", "metrics.json", "selection.json"):
            if (path / name).exists():
                shutil.copy(path / name, out / name)
        print(f"wrote {out}/: synthetic.npz, ply/ ({len(points)} clouds), and the cell's config and metrics")
        return 0
    from .tune.export import export

    out = export(args.name, top=args.top, out=args.out, storage=args.storage)
    print(f"wrote {out}/: leaderboard.csv and {len([p for p in out.iterdir() if p.is_dir()])} trial folder(s) "
          "(synthetic.npz, synthetic.png, config.yaml, metrics.json, ply/)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .tune.report import report

    out = report(args.name, out=args.out, storage=args.storage)
    print(f"wrote {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from .recipe.shipped import update_manifest
    from .recipe.table import check_selection, load_table, render_markdown, run_table

    spec = load_table(args.spec)  # every cell's config validated before anything runs
    storage = Path(args.storage or "distilled")
    root = storage / spec.name
    rows = args.rows.split(",") if args.rows else None
    check_selection(spec, rows, args.ipc, args.seed)  # a typo fails with --no-run too
    runnable = next(((r, i) for r in spec.rows for i in spec.ipcs if r.runs_at(i)), None)
    if not args.no_run and runnable is not None:
        from .recipe.run import load_data

        first = spec.config(runnable[0], runnable[1], spec.seeds[0])
        run_table(spec, root, lambda: load_data(first, args.data_dir),
                  rows=rows, ipcs=args.ipc, seeds=args.seed, device=args.device,
                  log=lambda line: print(line, flush=True), progress=_progress)
    markdown = render_markdown(spec, root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "table.md").write_text(markdown)
    manifest = update_manifest(spec, storage)
    print(markdown, end="")
    print(f"(from the distilled sets under {root}/; written to {root / 'table.md'}; their entries in {manifest})")
    return 0


def _add_search_commands(sub: Any) -> None:
    storage_help = "folder holding experiments, a path or file:///abs/path (default: results)"
    p = sub.add_parser("search", help="a hyperparameter search (Ray Tune + Optuna) over a YAML search space")
    p.add_argument("space", nargs="?", help="search space file, e.g. search_spaces/quick.yaml")
    p.add_argument("--name", help="experiment name (default: the space file's name); an existing one is resumed")
    p.add_argument("--num-samples", type=int, help="number of trials (not for grid search)")
    p.add_argument("--seeds", type=int, help="seeds per trial")
    p.add_argument("--concurrency", type=int, help="trials at once")
    p.add_argument("--batch", action=argparse.BooleanOptionalAction, default=None,
                   help="optuna: propose --concurrency trials at a time, each batch after the last one ended, "
                        "so a rerun proposes the same trials (--no-batch: as soon as a slot is free)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (also its torch threads)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions share a GPU)")
    p.add_argument("--time-budget-s", type=float, metavar="SECONDS",
                   help="end the search after this many seconds; trials still running are stopped")
    p.add_argument("--preset", choices=sorted(PRESETS), help="replace the space's base preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a config key in the base (repeatable)")
    p.add_argument("--address", help="join this Ray cluster (auto, or host:port) instead of starting one")
    p.add_argument("--storage", metavar="DIR", help=storage_help)
    p.add_argument("--resume", action="store_true", help="resume the experiment --name (error if it does not exist)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the dataset's files (else $TUNE_DISTILL_DATA, else a cache)")
    p.add_argument("--mlflow", metavar="URI",
                   help="log every trial as an MLflow run (config, per-seed accuracies, objectives, synthetic sets) "
                        "to a tracking server (http://host:5000), an MLflow URI, or a folder (its mlflow.db)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("results", help="an experiment's trials as a table (or csv/json/markdown)")
    p.add_argument("name", help="experiment name (or folder)")
    p.add_argument("--top", type=int, help="only the K best trials")
    p.add_argument("--pareto", action="store_true",
                   help="only the trials on the front of the space's objectives (e.g. accuracy against stored "
                        "points), cheapest first")
    p.add_argument("--group-by", metavar="COL[,COL]", help="mean/std/count of the objective per group")
    p.add_argument("--where", metavar="EXPR",
                   help="filter rows, pandas query syntax, e.g. \"depth == 2 and status == 'done'\" or "
                        "\"config/pooling == 'avg'\"")
    p.add_argument("--columns", metavar="COL[,COL]|all",
                   help="the columns to print, in this order: any of the default ones, the others (acc_seed0, "
                        "synthetic, ...) and config/<key> for every key of a trial's full config (base + params), "
                        "e.g. trial,objective,config/pooling; all: every column")
    p.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    p.add_argument("--storage", metavar="DIR", help=storage_help)
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("export", help="the best trials' synthetic sets (npz, png, ply) and a leaderboard.csv; "
                                      "or one set (a run folder, a cell under distilled/) as npz and ply")
    p.add_argument("name", help="experiment name (or folder), or a run / cell folder")
    p.add_argument("--data-dir", metavar="DIR", help="a set's dataset files, to rebuild a selection "
                                                     "(else $TUNE_DISTILL_DATA, else a cache)")
    p.add_argument("--top", type=int, default=5, help="how many trials (default 5)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: exports/<name>)")
    p.add_argument("--storage", metavar="DIR", help=storage_help)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="plots (PNG) and a markdown summary of an experiment")
    p.add_argument("name", help="experiment name (or folder)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <experiment>/report)")
    p.add_argument("--storage", metavar="DIR", help=storage_help)
    p.set_defaults(func=cmd_report)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a named preset (default: quick; under --config, the file's preset: key, "
                        "else the paper protocol's defaults)")
    p.add_argument("--config", metavar="FILE",
                   help="a config.yaml (one a run wrote, or a named one in configs/: preset: NAME plus the keys "
                        "that differ from it)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--seed", type=int, help="the run's seed")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the dataset's files (else $TUNE_DISTILL_DATA, else a cache)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: results/runs/<name>-<time>)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit 2) like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tune-distill", description="Dataset distillation for point clouds.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="one distillation + evaluation, written to --out")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("baseline", help="evaluate a baseline set (no distillation) with the same evaluator")
    p.add_argument("name", help=f"one of: {', '.join(BASELINES)}")
    p.add_argument("--ipc", type=int, help="clouds per class (default: the config's, 1 for a preset)")
    _add_run_options(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("evaluate", help="re-score a synthetic set (a run folder or an npz) with its dataset's evaluator")
    p.add_argument("path", help="a run folder (synthetic.npz + config.yaml), a synthetic.npz (points, labels), "
                   "or another tool's .npz / .npy of (clouds, points, 3)")
    p.add_argument("--dataset", choices=sorted(DATASETS),
                   help="the data the set is for (needed without a config.yaml; then its full protocol is used)")
    p.add_argument("--config", metavar="FILE", help="score under this config.yaml instead of the one beside the set")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. eval_models=10")
    p.add_argument("--seed", type=int, help="the evaluation's seed (default: the config's)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the dataset's files (else $TUNE_DISTILL_DATA, else a cache)")
    p.add_argument("--protocol", choices=sorted(EVAL_PROTOCOLS),
                   help="score under this named protocol (docs/protocol-3d.md); --set eval_*=... still overrides it")
    p.add_argument("--net", choices=["pointnet", "dgcnn", "pointnet2"], help="the evaluation network (default: pointnet)")
    p.add_argument("--points-key", metavar="KEY", help="another tool's .npz: the array of points (default: points)")
    p.add_argument("--labels-key", metavar="KEY", help="another tool's .npz: the array of labels (default: labels)")
    p.add_argument("--labels", metavar="FILE", help="the labels of an .npy of points: a .npy or a text file of integers")
    p.add_argument("--labels-blocks", action="store_true",
                   help="the clouds come one block per class, in class order (N / classes clouds each)")
    p.add_argument("--up", choices=["y", "z"], default="z",
                   help="the set's up axis (y: the common ModelNet HDF5 release; turned into our z-up frame)")
    p.add_argument("--out", metavar="FILE", help="also write the scores as this metrics.json")
    p.add_argument("--record", action="store_true",
                   help="a run folder: file the scores as <folder>/scores/<protocol>-<net>.json, or check that they "
                        "reproduce the ones filed there")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("draw", help="a picture of a set (a run folder, a cell under distilled/, a synthetic.npz)")
    p.add_argument("path", help="the set: a folder with config.yaml and synthetic.npz or selection.json, or an npz")
    p.add_argument("--out", metavar="FILE", help="the PNG to write (default: synthetic.png beside the set)")
    p.add_argument("--dataset", choices=sorted(DATASETS), help="the data the set is for, without a config.yaml")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the dataset's files (else $TUNE_DISTILL_DATA, else a cache)")
    p.set_defaults(func=cmd_draw)

    _add_search_commands(sub)

    p = sub.add_parser("table", help="run a results table's missing cells (a spec in tables/) and print it as markdown")
    p.add_argument("spec", help="table spec, e.g. tables/mnist.yaml")
    p.add_argument("--no-run", action="store_true", help="only render what is on disk")
    p.add_argument("--rows", metavar="ROW[,ROW]",
                   help="only these rows, comma-separated: ids (their folders under distilled/NAME/) "
                        "or labels without commas")
    p.add_argument("--ipc", type=int, action="append", help="only this IPC (repeatable)")
    p.add_argument("--seed", type=int, action="append", help="only this seed (repeatable)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"],
                   help="run the missing cells here (default: the spec's, cpu); the table marks GPU cells")
    p.add_argument("--storage", metavar="DIR",
                   help="folder holding tables' cells, <DIR>/<table name>/<row>/ipc<k>/seed<s>/ (default: distilled)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the dataset's files (else $TUNE_DISTILL_DATA, else a cache)")
    p.set_defaults(func=cmd_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tune-distill``; returns the exit status."""
    from .core import portable

    portable.environment()  # TUNE_DISTILL_PORTABLE=1: before torch computes anything (and before Ray's workers start)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"tune-distill: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # a run diverged under valid but too-aggressive settings
        print(f"tune-distill: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tune-distill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
