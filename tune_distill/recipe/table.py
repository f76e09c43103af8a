"""Results tables: named rows of configs, each run over several seeds under one protocol.

A table spec (YAML, see ``tables/mnist.yaml``) lists rows, the IPC values, the seeds and the
evaluation protocol shared by every cell. A row is an ``id`` (stable: its cells' folder name), a
``label`` (free text) and a ``preset`` and/or a ``config`` file, with ``set`` overrides,
``ipc_set`` overrides per IPC (applied last, even over the protocol), the ``paper``'s numbers per
IPC, and ``ipc``: the IPCs it runs at, for a config tuned for those only (default: all); a row
with no preset, config or settings only shows published numbers (and needs no id). The spec's
``reference`` names the row (random real shapes) whose test mean every row is compared with at
each IPC: a gain under one evaluator, as the fairness benchmarks of distillation ask. Running a
table runs each missing (row, ipc, seed) cell and stores it as a shipped run folder under
``distilled/<name>/<id>/ipc<N>/seed<S>/`` (a learned set's points or a selection's picks, its
metrics and config: small, and committed, so anyone can check a number with ``tune-distill
evaluate``); rendering reads those folders back, so the markdown is always regenerated from the
shipped sets, and an interrupted table resumes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .config import Config, file_preset, load_config_file, make_config
from .run import dataset_options
from ..core.errors import UserError

ROW_ID = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


@dataclass(frozen=True)
class Row:
    """One line of the table: how to build its config at a given IPC."""

    label: str
    id: str | None = None  # the folder of its cells; free text in the label never moves them
    preset: str | None = None
    config: str | None = None
    overrides: dict = field(default_factory=dict)
    per_ipc: dict = field(default_factory=dict)  # ipc -> extra overrides
    paper: dict = field(default_factory=dict)  # ipc -> the paper's number (%)
    only_ipc: tuple[int, ...] | None = None  # a config tuned for some IPCs runs at those only

    def runs_at(self, ipc: int) -> bool:
        return not self.published_only and (self.only_ipc is None or ipc in self.only_ipc)

    @property
    def published_only(self) -> bool:
        """A row with nothing to run (no preset, config or settings): published numbers only."""
        return self.preset is None and self.config is None and not self.overrides and not self.per_ipc



@dataclass(frozen=True)
class TableSpec:
    name: str
    rows: list[Row]
    ipcs: list[int]
    seeds: list[int]
    protocol: dict
    base_dir: Path  # where config paths in the spec are resolved from
    protocol_ipc: dict = field(default_factory=dict)  # ipc -> protocol keys that differ at that IPC
    # The row every other row is compared with at the same IPC, under the same evaluator (random
    # real shapes of the same storage: what DD-Ranking and DC-Bench score a set's gain against).
    reference: str | None = None
    # Under which protocol the rows' published numbers were measured (sadm for SADM's and 3DDP's
    # tables): the header says so, and they sit beside our cells' scores under that protocol.
    paper_protocol: str | None = None

    def config(self, row: Row, ipc: int, seed: int) -> Config:
        values: dict[str, Any] = {}
        preset = row.preset
        if row.config:
            values.update(load_config_file(self.base_dir / row.config))
            preset = file_preset(values, preset, f"its config {row.config}",
                                 given=f"table row {row.label!r}: preset {preset!r}")
        values.update(row.overrides)
        values.update(self.protocol)
        values.update(self.protocol_ipc.get(ipc, {}))
        # A row's ipc_set comes last, even over the protocol: its stated exceptions (e.g. the
        # full-data ceiling trains its classifiers for fewer epochs over thousands of clouds).
        values.update(row.per_ipc.get(ipc, {}))
        values.update(ipc=ipc, seed=seed)
        try:
            return make_config(values, preset=preset)
        except UserError as exc:
            raise UserError(f"table row {row.label!r} (ipc {ipc}): {exc}") from None


def _ints(value: Any, path: Path, where: str) -> list[int]:
    """``value`` as a list of non-negative integers (a bare integer is a list of one), or a one-line error."""
    items = value if isinstance(value, (list, tuple, dict)) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
        raise UserError(f"table {path}: {where} must be whole numbers, e.g. [1, 10]; got {value!r}")
    return list(items)


def _mapping(value: Any, path: Path, where: str, example: str = "{lr: 0.1}") -> dict:
    """``value`` (None: empty) as a mapping, or a one-line error."""
    if not isinstance(value or {}, dict):
        raise UserError(f"table {path}: {where} must be a mapping, e.g. {example}; got {value!r}")
    return dict(value or {})


def load_table(path: str | Path) -> TableSpec:
    """Read and validate a table spec; every cell's config is checked before anything runs."""
    path = Path(path)
    if not path.is_file():
        shipped = sorted(str(p) for p in Path("tables").glob("*.yaml"))
        hint = f"; shipped specs: {', '.join(shipped)}" if shipped else ""
        raise UserError(f"table spec {path} not found{hint}")
    raw = load_config_file(path)
    unknown = set(raw) - {"name", "rows", "ipc", "seeds", "protocol", "protocol_ipc", "reference", "paper_protocol"}
    if unknown:
        raise UserError(f"table {path}: unknown key {sorted(unknown)[0]!r}; "
                        "allowed: name, rows, ipc, seeds, protocol, protocol_ipc, reference, paper_protocol")
    if not isinstance(raw.get("rows") or [], list):
        raise UserError(f"table {path}: rows must be a list of rows, each with a label")
    rows = []
    for i, r in enumerate(raw.get("rows") or []):
        if not isinstance(r, dict) or "label" not in r or set(r) - {"id", "label", "preset", "config", "set", "ipc_set", "paper", "ipc"}:
            raise UserError(f"table {path}: row {i + 1} needs a label and only id/preset/config/set/ipc_set/paper/ipc")
        where = f"row {r['label']!r}"
        ipc_set, paper = (_mapping(r.get("ipc_set"), path, f"{where}: ipc_set", "{10: {lr: 1.0}}"),
                           _mapping(r.get("paper"), path, f"{where}: paper", "{1: 33.9}"))
        _ints(ipc_set, path, f"{where}: the keys of ipc_set")
        _ints(paper, path, f"{where}: the keys of paper")
        for ipc, values in ipc_set.items():
            _mapping(values, path, f"{where}: ipc_set for ipc {ipc}")
        row = Row(r["label"], r.get("id"), r.get("preset"), r.get("config"), _mapping(r.get("set"), path, f"{where}: set"),
                  ipc_set, paper, tuple(_ints(r["ipc"], path, f"{where}: ipc")) if r.get("ipc") is not None else None)
        if not row.published_only and not (isinstance(row.id, str) and ROW_ID.fullmatch(row.id)):
            raise UserError(f"table {path}: {where} needs an id: its cells' folder name, lower-case letters, digits "
                            f"and dashes (e.g. id: herding-fps-16x64); got {row.id!r}")
        rows.append(row)
    if not rows:
        raise UserError(f"table {path}: no rows")
    ids = [row.id for row in rows if row.id]
    if len(set(ids)) < len(ids):  # they would share one folder per cell
        twin = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"table {path}: two rows have the id {twin!r}; give each its own")
    spec = TableSpec(raw.get("name") or path.stem, rows, _ints(raw.get("ipc", [1]), path, "ipc"),
                     _ints(raw.get("seeds", [0, 1, 2, 3, 4]), path, "seeds"),
                     _mapping(raw.get("protocol"), path, "protocol"), path.parent,
                     _mapping(raw.get("protocol_ipc"), path, "protocol_ipc", "{10: {eval_epochs: 60}}"),
                     raw.get("reference"), raw.get("paper_protocol"))
    _ints(spec.protocol_ipc, path, "the keys of protocol_ipc")
    if spec.reference is not None and spec.reference not in {r.id for r in rows if not r.published_only}:
        raise UserError(f"table {path}: reference {spec.reference!r} is not the id of a row that runs; "
                        "name the random-real row, e.g. reference: random-real")
    if not spec.ipcs or not spec.seeds:
        raise UserError(f"table {path}: ipc and seeds need at least one value each, e.g. ipc: [1, 10]")
    data = set()
    for row in spec.rows:
        if row.only_ipc is not None and not (row.only_ipc and set(row.only_ipc) <= set(spec.ipcs)):
            raise UserError(f"table {path}: row {row.label!r} has ipc {list(row.only_ipc)}, "
                            f"not all in the table's ipc {spec.ipcs}")
        for ipc in filter(row.runs_at, spec.ipcs):
            cfg = spec.config(row, ipc, spec.seeds[0])
            data.add(" ".join([cfg.dataset, *(f"{k}={v}" for k, v in sorted(dataset_options(cfg).items()))]))
    if len(data) > 1:  # the table loads its dataset once, for every cell
        raise UserError(f"table {path}: rows use different data ({', '.join(sorted(data))}); "
                        "set them in the protocol so every row shares them")
    return spec


def cell_dir(root: Path, row: Row, ipc: int, seed: int) -> Path:
    return root / str(row.id) / f"ipc{ipc}" / f"seed{seed}"


def check_selection(spec: TableSpec, rows: list[str] | None = None, ipcs: list[int] | None = None,
                    seeds: list[int] | None = None) -> None:
    """Raise ``UserError`` for a row (id or label), IPC or seed that the spec does not have."""
    known = {r.id for r in spec.rows if r.id} | {r.label for r in spec.rows}
    for name in rows or []:
        if name not in known:
            raise UserError(f"table {spec.name}: no row {name!r}; rows: {', '.join(r.id for r in spec.rows if r.id)}")
    for what, asked, have in (("ipc", ipcs, spec.ipcs), ("seed", seeds, spec.seeds)):
        for value in asked or []:
            if value not in have:
                raise UserError(f"table {spec.name}: {what} {value} is not in the spec ({what}s: {have})")


def run_table(spec: TableSpec, root: Path, load_data: Callable[[], Any], rows: list[str] | None = None,
              ipcs: list[int] | None = None, seeds: list[int] | None = None, device: str | None = None,
              log: Callable[[str], None] = print,
              progress: Callable[[int], tuple[Callable[[dict], None], Callable[[], None]]] | None = None) -> None:
    """Run every missing cell (skipping finished ones), saving each as a run folder.

    ``rows`` (ids or labels), ``ipcs`` and ``seeds`` restrict the run to part of the table; a
    name or number the spec does not have is a ``UserError``, not a silent no-op. ``load_data``
    is called once, at the first missing cell, so a finished table reads no dataset. ``device``
    (cpu, cuda, auto) replaces the cells' device; it is where a cell runs, not what it is, so it
    is not part of the spec, but each cell's config.yaml records it and the rendered table says
    which cells ran on a GPU. ``log`` gets a line as each cell starts and ends (a cell writes its
    folder only when it ends, and the paper's rows take hours on a CPU); ``progress(iterations)``,
    if given, returns a ``(report, close)`` pair that follows one cell's distillation.
    """
    from .artifacts import save_run
    from .run import resolve_device, run

    check_selection(spec, rows, ipcs, seeds)
    if device == "auto":  # record where the cells ran, which the rendered table reports
        device = resolve_device(device).type
    data = None
    for row in spec.rows:
        if rows and row.id not in rows and row.label not in rows:
            continue
        for ipc in spec.ipcs:
            if (ipcs and ipc not in ipcs) or not row.runs_at(ipc):
                continue
            for seed in spec.seeds:
                out = cell_dir(root, row, ipc, seed)
                if (seeds and seed not in seeds) or (out / "metrics.json").exists():
                    continue
                data = data if data is not None else load_data()
                cfg = spec.config(row, ipc, seed)
                distills = f"{cfg.total_iterations} iterations, then " if cfg.total_iterations else ""
                log(f"{row.label} | ipc {ipc} | seed {seed}: running {distills}"
                    f"{cfg.eval_models} classifiers x {cfg.eval_epochs} epochs")
                report, close = progress(cfg.total_iterations, cfg.eval_models) if progress else (None, lambda: None)
                try:
                    result = run(cfg.replace(device=device) if device else cfg, report=report, data=data)
                finally:
                    close()
                save_run(result, out, shipped=True)
                log(f"{row.label} | ipc {ipc} | seed {seed}: {100 * result.acc_mean:.2f} % "
                    f"({result.seconds:.0f} s on {result.config.device}) -> {out}")


def collect(spec: TableSpec, root: Path) -> list[dict]:
    """One record per (row, ipc) with the per-seed test (and val) means found on disk, the seeds
    whose cell ran on a GPU (its config.yaml's device), and per re-scoring of the cells under
    another protocol or network (``scores/<protocol>-<net>.json``) per seed its test mean, runs,
    epochs and points per cloud."""
    from .artifacts import read_scores

    records = []
    for row in spec.rows:
        for ipc in spec.ipcs:
            test, val, gpu = [], [], []
            rescored: dict[str, list[dict]] = {}
            for seed in spec.seeds:
                cell = cell_dir(root, row, ipc, seed)
                if (cell / "metrics.json").exists():
                    m = json.loads((cell / "metrics.json").read_text())
                    test.append(100 * m["acc_mean"])
                    if "val_acc_mean" in m:
                        val.append(100 * m["val_acc_mean"])
                    for name, scored in read_scores(cell).items():
                        rescored.setdefault(name, []).append(
                            {"test": 100 * scored["acc_mean"], "runs": len(scored["accuracies"]),
                             "epochs": scored["evaluator"]["eval_epochs"], "points": scored["points_per_cloud"]})
                    config = cell / "config.yaml"
                    if config.exists() and (yaml.safe_load(config.read_text()) or {}).get("device") not in (None, "cpu"):
                        gpu.append(seed)
            records.append({"row": row.label, "ipc": ipc, "seeds": len(test), "test": test, "val": val,
                            "gpu_seeds": gpu, "paper": row.paper.get(ipc), "rescored": rescored})
    return records


def _cell(values: list[float], runs: bool = True) -> str:
    if not values:
        return "not shipped" if runs else "—"
    if len(values) == 1:  # no spread to show: "± 0.00" would claim one
        return f"{values[0]:.2f} (1 seed)"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def _rescored(scores: list[dict], reference: list[dict], points: int) -> str:
    """A re-scored cell: mean over its seeds, its gain over the reference row re-scored the same
    way, and what it rests on (seeds, runs per seed, epochs; the points per training cloud when the
    scores were made on clouds thinned from the row's ``points``)."""
    if not scores:
        return "—"
    values = [s["test"] for s in scores]
    spread = f" ± {np.std(values):.2f}" if len(values) > 1 else ""
    gain = f" ({np.mean(values) - np.mean([r['test'] for r in reference]):+.2f})" if reference else ""

    def each(key: str) -> str:
        return "/".join(map(str, sorted({s[key] for s in scores})))

    runs = each("runs")
    thinned = sorted({s["points"] for s in scores} - {points})
    at = f", shapes thinned to {'/'.join(map(str, thinned))} points" if thinned else ""
    return f"{np.mean(values):.2f}{spread}{gain} [{len(values)} seed{'s' * (len(values) > 1)} × {runs} " \
           f"run{'s' * (runs != '1')}, {each('epochs')} epochs{at}]"


def render_markdown(spec: TableSpec, root: Path) -> str:
    """The table as markdown: per IPC, test mean ± std over seeds (std across seeds), val, paper."""
    records = collect(spec, root)
    lines = []
    ipcs = spec.ipcs
    reference = next((r for r in spec.rows if spec.reference is not None and r.id == spec.reference), None)
    gains = [f"IPC {i}: gain over {reference.id}" for i in ipcs] if reference else []
    # Cells re-scored under another protocol or network get columns of their own, beside the
    # published numbers when those were measured under the same protocol.
    keys = sorted({k for r in records for k in r["rescored"]})
    published = f"published ({spec.paper_protocol})" if spec.paper_protocol else "paper"
    head = ["method", "per IPC: clouds × points"] + [f"IPC {i}: test %" for i in ipcs] + gains + \
        [f"IPC {i}: val %" for i in ipcs] + [f"IPC {i}: {k} test %" for k in keys for i in ipcs] + \
        [f"{published}, IPC {i}" for i in ipcs] + ["seeds"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    base = {r["ipc"]: r for r in records if reference is not None and r["row"] == reference.label}
    for row in spec.rows:
        mine = {r["ipc"]: r for r in records if r["row"] == row.label}
        # One IPC is one cloud of ``points`` points of storage, split into cloud_split clouds.
        configs = {i: spec.config(row, i, spec.seeds[0]) for i in ipcs if row.runs_at(i)}
        shapes = sorted({(c.cloud_split, c.cloud_points) for c in configs.values()})
        cells = [row.label, " / ".join(f"{n} × {p}" for n, p in shapes) or "—"]
        cells += [_cell(mine[i]["test"], row.runs_at(i)) for i in ipcs]
        if reference is not None:
            cells += [f"{np.mean(mine[i]['test']) - np.mean(base[i]['test']):+.2f}"
                      if mine[i]["test"] and base[i]["test"] else "—" for i in ipcs]
        cells += [_cell(mine[i]["val"], row.runs_at(i)) for i in ipcs]
        cells += [_rescored(mine[i]["rescored"].get(k, []),
                            base[i]["rescored"].get(k, []) if reference is not None and row is not reference else [],
                            configs[i].cloud_points if i in configs else 0) for k in keys for i in ipcs]
        cells += [f"{mine[i]['paper']}" if mine[i]["paper"] is not None else "—" for i in ipcs]
        cells.append(" / ".join(str(mine[i]["seeds"]) if row.runs_at(i) else "—" for i in ipcs))
        lines.append("| " + " | ".join(cells) + " |")
    gpu = [f"{r['row']} (IPC {r['ipc']}, seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})"
           for r in records if (seeds := r["gpu_seeds"])]
    if gpu:  # CPU and GPU give different numbers for one seed: say which is which
        lines += ["", "Ran on a GPU (device cuda); every other cell ran on a CPU: " + "; ".join(gpu) + "."]
    if any(not r["test"] and row.runs_at(r["ipc"]) for row in spec.rows for r in records if r["row"] == row.label):
        lines += ["", "not shipped: no distilled set of that cell is under distilled/ (yet); `tune-distill table` "
                      "runs it."]
    return "\n".join(lines) + "\n"
