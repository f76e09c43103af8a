"""``tune-distill report``: plots and a markdown summary of one experiment.

Writes into ``<out>`` (default ``<experiment>/report/``):

- ``objective_by_param.png``: the objective of every scored trial against each hyperparameter
  (points per category, or a scatter on a log axis for ``loguniform``);
- ``importances.png``: Optuna's parameter importances of the objective (its default evaluator,
  PED-ANOVA: how much each hyperparameter decides whether a trial lands among the best), computed
  from the results for any algorithm (grid and random too);
- ``seeds.png``: the accuracy of every seed of the best trials, with their mean and std, which
  shows how much of a difference between trials is seed noise;
- ``frontier.png`` (multi-objective searches): accuracy against the first cost objective (e.g.
  stored points per class), one point per finished trial, the Pareto front joined, each front
  point labelled with how its class is stored (clouds x points per cloud);
- ``summary.md``: counts, the best trial, the leaderboard, the objective per hyperparameter value,
  the importances and the errors.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .results import group_objective, leaderboard, load_results, pareto_trials, param_column, to_markdown
from .space import SearchSpace, space_from_dict
from .util import quiet_loggers

TOP_SEEDS_PLOTTED = 20


def _figure(width: float, height: float) -> Any:
    # A bare Figure (no pyplot): nothing global is touched, nothing needs a display.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def importances(df: pd.DataFrame, space: SearchSpace) -> dict[str, float]:
    """Optuna's parameter importances of the objective over the scored trials ({} if too few)."""
    import optuna

    scored = df[df["objective"].notna()]
    varying = [p for p in space.params if scored[param_column(p)].nunique(dropna=False) > 1]
    if len(scored) < 2 or not varying:
        return {}
    dists = {p: space.params[p].to_optuna() for p in varying}
    with quiet_loggers(("optuna",)), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "quantiles select the same set of trials" for tiny studies
        study = optuna.create_study(direction="maximize" if space.search.accuracy_mode == "max" else "minimize",
                                    storage=optuna.storages.InMemoryStorage())
        for _, row in scored.iterrows():
            params = {p: _native(row[param_column(p)]) for p in varying}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row["objective"])))
        # PED-ANOVA (Optuna's default evaluator; fANOVA would need scikit-learn) asks what it takes
        # to land in the top quantile of trials; its default top 10 % is one or two trials in a
        # small study, so the top regime is widened to hold at least three.
        quantile = min(0.5, max(0.1, 3 / len(scored)))
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
        try:
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
        except (RuntimeError, ValueError):  # e.g. too few distinct values
            return {}


def groups_of(df: pd.DataFrame, space: SearchSpace, param: str) -> pd.Series:
    """The group of each trial for ``param``: its value, or for a range its tercile ``(low, high]``."""
    d = space.params[param]
    values = df[param_column(param)]
    if d.kind == "choice" or values.nunique() <= 4:
        return values.astype(str)
    bins = pd.qcut(values.astype(float), q=3, duplicates="drop")
    return bins.map(lambda iv: f"({iv.left:.3g}, {iv.right:.3g}]").astype(str)


def variance_explained(objective: pd.Series, groups: pd.Series) -> float:
    """Share of the objective's variance across trials that the groups explain (eta squared)."""
    total = float(((objective - objective.mean()) ** 2).sum())
    if total == 0:
        return 0.0
    between = sum(len(g) * (g.mean() - objective.mean()) ** 2 for _, g in objective.groupby(groups))
    return float(between / total)


def _native(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def plot_objective_by_param(df: pd.DataFrame, space: SearchSpace, path: Path) -> None:
    scored = df[df["objective"].notna()]
    params = list(space.params)
    cols = min(3, max(1, len(params)))
    rows = max(1, math.ceil(len(params) / cols))
    fig = _figure(4.2 * cols, 3.2 * rows)
    rng = np.random.default_rng(0)  # jitter only
    for i, p in enumerate(params):
        ax = fig.add_subplot(rows, cols, i + 1)
        d = space.params[p]
        y = 100 * scored["objective"].to_numpy(dtype=float)
        if d.kind == "choice":
            labels = [str(c) for c in d.choice]
            pos = {c: k for k, c in enumerate(labels)}
            x = np.array([pos.get(str(v), -1) for v in scored[param_column(p)]], dtype=float)
            ax.scatter(x + rng.uniform(-0.12, 0.12, len(x)), y, s=18, alpha=0.7)
            means = [np.mean(y[x == k]) if np.any(x == k) else np.nan for k in range(len(labels))]
            ax.scatter(range(len(labels)), means, marker="_", s=600, color="black", label="mean")
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        else:
            ax.scatter(scored[param_column(p)].to_numpy(dtype=float), y, s=18, alpha=0.7)
            if d.kind == "loguniform":
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # labels on decades only: readable
        ax.set_xlabel(p)
        ax.set_ylabel(f"objective ({space.search.accuracy}) %")
        ax.grid(alpha=0.3)
    fig.suptitle("objective per hyperparameter")
    fig.tight_layout()
    fig.savefig(path)


def plot_importances(values: dict[str, float], path: Path) -> None:
    names = list(values)[::-1]
    fig = _figure(6, 0.45 * len(names) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, [values[n] for n in names])
    ax.set_xlabel("importance (Optuna PED-ANOVA)")
    ax.set_title("hyperparameter importances")
    fig.tight_layout()
    fig.savefig(path)


def plot_seeds(df: pd.DataFrame, path: Path) -> None:
    ranked = leaderboard(df, TOP_SEEDS_PLOTTED)
    seed_cols = [c for c in df.columns if c.startswith("acc_seed")]
    fig = _figure(max(6, 0.45 * len(ranked) + 2), 4)
    ax = fig.add_subplot(1, 1, 1)
    for k, (_, row) in enumerate(ranked.iterrows()):
        accs = 100 * row[seed_cols].to_numpy(dtype=float)
        accs = accs[~np.isnan(accs)]
        ax.scatter(np.full(len(accs), k), accs, s=16, color="tab:blue", alpha=0.8)
        ax.errorbar(k, 100 * row["acc_mean"], yerr=100 * row["acc_std"], fmt="_", color="black", capsize=4)
    ax.set_xticks(range(len(ranked)), [f"#{t}" for t in ranked["trial"]], rotation=90)
    ax.set_xlabel("trial (best first)")
    ax.set_ylabel("accuracy per seed %")
    ax.set_title("accuracy across seeds (mean ± std)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def storage_label(row: pd.Series) -> str:
    """How a trial stores a class: ``<clouds>x<points per cloud>`` (``ipc * cloud_split`` clouds
    of ``points / cloud_split`` points), from its ``config/`` columns; ``distilled`` when its
    points were learned (iterations), else it is a selection of real shapes."""
    ipc, split, points = (int(row[f"config/{k}"]) for k in ("ipc", "cloud_split", "points"))
    learned = row["config/iterations"] + row.get("config/tm_iterations", 0)
    return f"{ipc * split}x{points // split}" + (" distilled" if learned else "")


def plot_frontier(df: pd.DataFrame, space: SearchSpace, path: Path) -> None:
    """Accuracy against the first cost objective: every finished trial, the front joined and labelled."""
    x_col = next(c for c, _ in df.attrs["objectives"] if c != "objective")
    done = df[(df["status"] == "done") & df[x_col].notna() & df["objective"].notna()]
    front = pareto_trials(df)
    fig = _figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(done[x_col], 100 * done["objective"], s=18, color="tab:gray", alpha=0.6, label="trial")
    ax.plot(front[x_col], 100 * front["objective"], "-o", color="tab:red", markersize=5, label="Pareto front")
    labels: dict[tuple[float, float], list[str]] = {}  # trials at one spot share one label
    for _, row in front.iterrows():
        labels.setdefault((row[x_col], 100 * row["objective"]), []).append(storage_label(row))
    for spot, names in labels.items():
        ax.annotate(" / ".join(dict.fromkeys(names)), spot, textcoords="offset points", xytext=(5, -10), fontsize=7)
    values = done[x_col].to_numpy(dtype=float)
    if len(values) and values.min() > 0 and values.max() / values.min() > 8:
        ax.set_xscale("log")
    ax.set_xlabel(x_col.replace("_", " ") + (" per class" if x_col.startswith("stored") else ""))
    split = df["split"].iloc[0] if len(df) else "test"
    ax.set_ylabel(f"{space.search.accuracy} ({split}) %")
    ax.set_title(f"{Path(df.attrs['experiment']).name}: accuracy against {x_col.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def _pct(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.2f}"


def write_summary(df: pd.DataFrame, space: SearchSpace, imps: dict[str, float], images: list[str], path: Path) -> None:
    name = Path(df.attrs["experiment"]).name
    s = space.search
    counts = ", ".join(f"{n} {st}" for st, n in df["status"].value_counts().items()) or "none"
    lines = [f"# Search report: {name}", "",
             f"- space: algorithm **{s.algorithm}**, objective **{s.accuracy}**"
             + (f" (k = {s.robust_k:g})" if s.accuracy == "robust" else "")
             + (f" against {', '.join(f'{o} ({m})' for o, m in zip(s.objectives, s.modes) if o != s.accuracy)}"
                if s.multi else "")
             + f", {s.seeds} seeds per trial {space.seeds}, scheduler {s.scheduler}",
             f"- base: preset {space.base.preset}, fixed {space.base.set or '{}'}",
             f"- trials: {len(df)} of {space.num_trials} ({counts}); compute {df['seconds'].sum():.0f} s "
             f"(sum of the trials' seed runs)",
             f"- accuracies measured on the **{df['split'].iloc[0] if len(df) else 'test'}** split", ""]
    ranked = leaderboard(df)
    params = list(space.params)
    if not ranked.empty:
        best = ranked.iloc[0]
        seed_cols = [c for c in df.columns if c.startswith("acc_seed")]
        per_seed = ", ".join(_pct(best[c]) for c in seed_cols if not pd.isna(best[c]))
        lines += ["## Best trial", "",
                  f"Trial #{best['trial']}: " + ", ".join(f"{p}={best[param_column(p)]}" for p in params), "",
                  f"objective {_pct(best['objective'])}, accuracy {_pct(best['acc_mean'])} ± {_pct(best['acc_std'])} % "
                  f"over {best['seeds_done']} seeds (per seed: {per_seed}; min {_pct(best['acc_min'])})", ""]
        table = ranked.head(10)[["trial", "status", *map(param_column, params), "seeds_done", "acc_mean", "acc_std", "acc_min", "objective"]].copy()
        for c in ("acc_mean", "acc_std", "acc_min", "objective"):
            table[c] = (100 * table[c]).round(2)
        lines += ["## Leaderboard (top 10, accuracies in %)", "", to_markdown(table), ""]
        if s.multi:
            front = pareto_trials(df)
            costs = [c for c, _ in df.attrs["objectives"] if c != "objective"]
            table = front[["trial", *map(param_column, params), *costs, "acc_mean", "acc_std", "objective"]].copy()
            table.insert(1, "stored as", [storage_label(r) for _, r in front.iterrows()])
            for c in ("acc_mean", "acc_std", "objective"):
                table[c] = (100 * table[c]).round(2)
            lines += ["## Pareto front (finished trials no other beats in every objective; accuracies in %)", "",
                      to_markdown(table), ""]
        lines += ["## Objective per hyperparameter value (mean, std, count; in %)", "",
                  "Ranges are split into terciles. *explains* is the share of the objective's variance "
                  "across trials that the groups account for (eta squared; confounded when the search "
                  "sampled two hyperparameters together).", ""]
        scored = df[df["objective"].notna()].copy()
        for p in params:
            scored[f"{p} "] = groups_of(scored, space, p)
            g = group_objective(scored, [f"{p} "]).rename(columns={f"{p} ": p})
            g[["mean", "std"]] = (100 * g[["mean", "std"]]).round(2)
            share = variance_explained(scored["objective"], scored[f"{p} "])
            lines += [f"### {p} (explains {100 * share:.0f} %)", "", to_markdown(g), ""]
    if imps:
        caveat = (" With fewer than about 30 trials these are rough; read them with the tables above."
                  if len(ranked) < 30 else "")
        lines += ["## Importances (Optuna, PED-ANOVA)", "",
                  "How much each hyperparameter decides whether a trial lands among the best "
                  f"(the top {100 * min(0.5, max(0.1, 3 / len(ranked))):.0f} % of scored trials).{caveat}", "",
                  to_markdown(pd.DataFrame(
            {"hyperparameter": list(imps), "importance": [round(v, 3) for v in imps.values()]})), ""]
    errors = df[df["status"] == "error"]
    if not errors.empty:
        lines += ["## Errored trials", ""]
        lines += [f"- #{r['trial']} ({', '.join(f'{p}={r[param_column(p)]}' for p in params)}): {r['error']}"
                  for _, r in errors.iterrows()]
        lines += [""]
    if images:
        lines += ["## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images] + [""]
    path.write_text("\n".join(lines))


def report(name_or_path: str | os.PathLike, out: str | os.PathLike | None = None,
           storage: str | os.PathLike | None = None) -> Path:
    """Write the plots and ``summary.md`` of an experiment; returns the folder.

    Raises:
        UserError: no such experiment.
    """
    df = load_results(name_or_path, storage, config=True)  # config/<key>: how each trial stores a class
    space = space_from_dict(df.attrs["space"])
    out_dir = Path(out) if out is not None else Path(df.attrs["experiment"]) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    images: list[str] = []
    if df["objective"].notna().any():
        if space.params:
            plot_objective_by_param(df, space, out_dir / "objective_by_param.png")
            images.append("objective_by_param.png")
        plot_seeds(df, out_dir / "seeds.png")
        images.append("seeds.png")
        if space.search.multi:
            plot_frontier(df, space, out_dir / "frontier.png")
            images.insert(0, "frontier.png")
    imps = importances(df, space)
    if imps:
        plot_importances(imps, out_dir / "importances.png")
        images.insert(1 if "objective_by_param.png" in images else 0, "importances.png")
    write_summary(df, space, imps, images, out_dir / "summary.md")
    return out_dir
