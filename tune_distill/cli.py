"""The ``tune-distill`` command line. All argument parsing lives here.

Every user mistake surfaces as one line on stderr and exit status 2, with nothing written
before the input has been validated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .config import Config, PRESETS, load_config_file, make_config, parse_assignments
from .errors import UserError

BASELINES = {"random_real": "real", "herding": "herding", "class_mean_topk": "class_mean_topk"}


def _config_from_args(args: argparse.Namespace, **forced: Any) -> Config:
    """Preset, then ``--config`` file, then ``--set`` pairs, then ``--seed``: later wins."""
    preset = args.preset
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    elif preset is None:
        preset = "quick"
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


def _progress(total: int) -> tuple[Callable[[dict], None], Callable[[], None]]:
    """A tqdm bar over distillation iterations, fed by ``run``'s report rows."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="distilling", unit="it", dynamic_ncols=True, file=sys.stderr)

    def report(row: dict) -> None:
        if "loss" in row:
            bar.update(row["iteration"] + 1 - bar.n)
            bar.set_postfix(loss=f"{row['loss']:.4g}", grad=f"{row['grad_abs']:.2g}", moved=f"{row['delta_abs']:.2g}")
        elif "acc_mean" in row:
            bar.write(f"iteration {row['iteration']}: accuracy {100 * row['acc_mean']:.2f} ± {100 * row['acc_std']:.2f} %")

    return report, bar.close


def _run_and_save(cfg: Config, args: argparse.Namespace, stem: str) -> int:
    from .artifacts import save_run
    from .data import load_dataset
    from .run import run

    out = _fresh_out_dir(args.out, stem)
    data = load_dataset(cfg.dataset, args.data_dir, threshold=cfg.threshold)  # before any output
    report, close = _progress(cfg.iterations)
    try:
        result = run(cfg, report=report, data=data)
    finally:
        close()
    save_run(result, out)
    print(f"accuracy ({result.split}, {cfg.eval_models} ConvNets x {cfg.eval_epochs} epochs): "
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
    cfg = _config_from_args(args, init=BASELINES[args.name], iterations=0, ipc=args.ipc)
    return _run_and_save(cfg, args, f"baseline-{args.name}-ipc{args.ipc}-seed{cfg.seed}")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named preset (default: quick)")
    p.add_argument("--config", metavar="FILE", help="a config.yaml (e.g. one a run wrote)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--seed", type=int, help="the run's seed")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the MNIST files (else $TUNE_DISTILL_DATA, else a cache)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: results/runs/<name>-<time>)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit 2) like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tune-distill", description="Dataset distillation for point clouds.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="one distillation + evaluation, written to --out")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("baseline", help="evaluate a baseline set (no distillation) with the same evaluator")
    p.add_argument("name", help=f"one of: {', '.join(BASELINES)}")
    p.add_argument("--ipc", type=int, default=1, help="clouds per class (default 1)")
    _add_run_options(p)
    p.set_defaults(func=cmd_baseline)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tune-distill``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"tune-distill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tune-distill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
