"""Search spaces: the YAML schema, its validation, and the per-trial config it produces.

A search space file has three sections (every shipped file repeats this in its header)::

    base:                       # what every trial starts from
      preset: quick             # a name from tune_distill.PRESETS (or null)
      set: {iterations: 60}     # fixed overrides, any Config key
    params:                     # the searched hyperparameters, one distribution each
      depth: {choice: [2, 3]}
      lr: {loguniform: [0.01, 0.5]}
      momentum: {uniform: [0.0, 0.9]}
      points: {int: [50, 200], step: 50}
    search:                     # how the search runs (all optional, defaults shown in Settings)
      algorithm: optuna         # optuna (TPE) | grid | random
      objective: robust         # acc_mean | robust (acc_mean - robust_k * acc_std) | acc_min
                                # or a list: one of those and costs, e.g. [acc_mean, stored_points]
                                # with mode: [max, min] (a multi-objective search, see docs/search.md)
      num_samples: 8
      seeds: 2
      ...

Everything is validated here, once, before Ray starts: an unknown key, a bad distribution, an
empty choice, or a value the config rejects (every choice value and every range endpoint is put
through ``make_config``) raises a ``UserError`` whose one line names the key and what is allowed.
Nothing in this module imports Ray.
"""

from __future__ import annotations

import difflib
import itertools
import math
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..recipe.config import PRESETS, Config, make_config, read_yaml
from ..core.errors import UserError
from .objective import COSTS, OBJECTIVES, metric_name

MAX_SEED = 2**31 - 1  # Config.seed's upper bound
# Config keys a space may not search: the seed is set per trial from the experiment seed, and
# the dataset is loaded once per experiment (passed to every trial), so its options are fixed.
NOT_SEARCHABLE = {
    "seed": "trial seeds come from search.seed and search.seeds",
    "dataset": "the dataset is loaded once per experiment; set it in base.set",
    "threshold": "the dataset is loaded once per experiment; set it in base.set",
}
# Above this many cells, an all-choice space is checked by endpoints only, not cell by cell.
MAX_CELLS_CHECKED = 20_000

KINDS = ("choice", "uniform", "loguniform", "int")


class Distribution(BaseModel):
    """One hyperparameter's distribution: exactly one of ``choice``, ``uniform``, ``loguniform``, ``int``.

    ``uniform`` and ``loguniform`` are ``[low, high]`` floats; ``int`` is ``[low, high]``, both
    included, with an optional ``step`` (``high - low`` must be a multiple of it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")  # `int` itself would shadow the builtin
    step: Any = None

    def _get(self, kind: str) -> Any:
        return self.int_ if kind == "int" else getattr(self, kind)

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if self._get(k) is not None)

    def to_optuna(self) -> Any:
        """The same distribution as Optuna's (for its sampler and its importance evaluator)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choice))
        if self.kind == "int":
            return IntDistribution(*self.bounds, step=self.step or 1)
        return FloatDistribution(*self.bounds, log=self.kind == "loguniform")

    @property
    def bounds(self) -> tuple[Any, Any]:
        return self._get(self.kind)

    def values(self) -> list[Any]:
        """The values a grid visits (choices), else the endpoints to check against the config."""
        if self.kind == "choice":
            return list(self.choice)
        return list(self.bounds)

    @model_validator(mode="after")
    def _one_kind(self) -> "Distribution":
        kinds = [k for k in KINDS if self._get(k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice: [..], uniform: [low, high], loguniform: [low, high], "
                             f"int: [low, high] (got {', '.join(kinds) or 'none'})")
        kind = kinds[0]
        if self.step is not None and kind != "int":
            raise ValueError("step is only allowed with int: [low, high]")
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice needs at least one value")
            bad = [v for v in self.choice if isinstance(v, (list, dict))]
            if bad:
                raise ValueError(f"choice values must be scalars (number, string, bool, null), got {bad[0]!r}")
            if len({repr(v) for v in self.choice}) != len(self.choice):
                raise ValueError(f"choice has repeated values {self.choice}")
            return self
        low, high = self.bounds
        if not low < high:
            raise ValueError(f"{kind} needs low < high (got [{low}, {high}])")
        if kind == "loguniform" and low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {low})")
        if kind == "int" and self.step is not None:
            if not isinstance(self.step, int) or isinstance(self.step, bool) or self.step < 1:
                raise ValueError(f"step must be a positive integer (got {self.step!r})")
            if (high - low) % self.step:
                raise ValueError(f"int: [{low}, {high}] is not a whole number of steps of {self.step}")
        return self


class Base(BaseModel):
    """What every trial starts from: a preset and fixed overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)


class Asha(BaseModel):
    """ASHA's settings; its time unit is seeds (1 = after the first seed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grace_period: float = Field(1.0, gt=0, description="seeds every trial gets before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1)


GPU_TRIALS = 4  # trials sharing one GPU when a GPU config leaves resources.gpus unset


class Resources(BaseModel):
    """Resources of one trial: CPUs (its torch threads too) and a GPU share.

    ``gpus`` left unset: a share of ``1 / GPU_TRIALS`` of a GPU when the config may run on one
    (device auto or cuda) and the cluster has GPUs, else none (``tuner.trial_gpus``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(1.0, gt=0, le=1024)
    gpus: float | None = Field(None, ge=0, le=64, description="GPU share per trial (fractions share a GPU); "
                               "unset: automatic")


class Settings(BaseModel):
    """How the search runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: Literal["optuna", "grid", "random"] = "optuna"
    objective: str | list[str] = Field("acc_mean", description="an accuracy objective (acc_mean, robust, acc_min), "
                                       "or a list of one and costs (stored_points, stored_floats, distill_seconds)")
    robust_k: float = Field(1.0, ge=0, le=100, description="robust = acc_mean - robust_k * acc_std")
    mode: str | list[str] = Field("max", description="max or min, one per objective")
    sampler: Literal["tpe", "nsga2"] = Field("tpe", description="optuna: TPE (single- or multi-objective) or "
                                             "NSGA-II (multi-objective)")
    num_samples: int | None = Field(None, ge=1, le=100_000, description="trials (grid: every cell once)")
    seeds: int = Field(3, ge=1, le=100, description="seeds each trial runs its config over")
    scheduler: Literal["fifo", "asha"] = "fifo"
    asha: Asha = Field(default_factory=Asha)
    resources: Resources = Field(default_factory=Resources)
    concurrency: int | None = Field(None, ge=1, le=10_000, description="max trials at once (None: as resources allow)")
    batch: bool = Field(False, description="optuna: propose `concurrency` trials at a time, each batch once the last "
                                           "one has finished, so proposals never depend on which trial ends first")
    time_budget_s: float | None = Field(None, gt=0, description="end the search after this many seconds")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the experiment seed")

    @field_validator("objective")
    @classmethod
    def _known_objectives(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        allowed = OBJECTIVES + COSTS
        for name in names:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"one of: {', '.join(allowed)}"
                raise ValueError(f"unknown objective {name!r}; {hint}")
        if len(set(names)) != len(names):
            raise ValueError(f"objective names {names} repeat one")
        accuracies = [n for n in names if n in OBJECTIVES]
        if len(accuracies) != 1:
            raise ValueError(f"name exactly one accuracy objective ({', '.join(OBJECTIVES)}) and any costs "
                             f"({', '.join(COSTS)}), e.g. [acc_mean, stored_points]")
        return value

    @field_validator("mode")
    @classmethod
    def _known_modes(cls, value: str | list[str]) -> str | list[str]:
        bad = [m for m in ([value] if isinstance(value, str) else value) if m not in ("max", "min")]
        if bad:
            raise ValueError(f"mode must be max or min, one per objective (got {bad[0]!r})")
        return value

    # Derived ------------------------------------------------------------------------------
    @property
    def objectives(self) -> list[str]:
        """The objectives as a list (one for a single-objective search)."""
        return [self.objective] if isinstance(self.objective, str) else list(self.objective)

    @property
    def modes(self) -> list[str]:
        """``max`` or ``min`` per objective."""
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)

    @property
    def metrics(self) -> list[str]:
        """The reported metrics the searcher optimises, in the order of ``objectives``."""
        return [metric_name(o) for o in self.objectives]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def accuracy(self) -> str:
        """The accuracy objective (acc_mean, robust or acc_min): the ``objective`` column."""
        return next(o for o in self.objectives if o in OBJECTIVES)

    @property
    def accuracy_mode(self) -> str:
        return self.modes[self.objectives.index(self.accuracy)]


class SearchSpace(BaseModel):
    """A validated search space. Build one with ``load_space`` or ``space_from_dict``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = None
    base: Base = Field(default_factory=Base)
    params: dict[str, Distribution] = Field(default_factory=dict)
    search: Settings = Field(default_factory=Settings)

    # Derived ------------------------------------------------------------------------------
    @property
    def num_trials(self) -> int:
        """How many trials the search runs: the grid's size, else ``num_samples`` (default 10)."""
        if self.search.algorithm == "grid":
            return math.prod(len(d.choice) for d in self.params.values())
        return self.search.num_samples or 10

    @property
    def seeds(self) -> list[int]:
        """The seeds every trial runs: ``search.seed``, ``search.seed + 1``, ...

        Every trial uses the same seeds, so two configs are compared on the same random draws
        (initialisation, networks, batches, evaluation) and differ by their hyperparameters only.
        """
        return [self.search.seed + i for i in range(self.search.seeds)]

    @property
    def searcher_seed(self) -> int:
        """The seed of the sampler (TPE or random): the experiment seed itself."""
        return self.search.seed

    def base_values(self) -> dict[str, Any]:
        """The full config every trial starts from (preset + ``base.set``), as plain values."""
        return make_config(dict(self.base.set), preset=self.base.preset).model_dump()

    def trial_config(self, params: dict[str, Any], seed: int, base: dict[str, Any] | None = None) -> Config:
        """The validated config of one trial's seed: base, then the sampled ``params``, then ``seed``."""
        return make_config({**(base if base is not None else self.base_values()), **params, "seed": seed})

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that ``space_from_dict`` reads back to an equal space."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


# Loading and validation ---------------------------------------------------------------------
def _shipped_spaces() -> str:
    """The spaces in ./search_spaces, as a hint for a space file that does not exist."""
    shipped = sorted(str(p) for p in Path("search_spaces").glob("*.yaml"))  # [] where there is no such folder
    return f"; shipped spaces: {', '.join(shipped)}" if shipped else ""


def load_space(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchSpace:
    """Read and validate a search space YAML file.

    ``overrides`` replace values before validation, keyed by dotted paths such as
    ``"search.num_samples"`` or ``"base.set.iterations"`` (the CLI's ``--num-samples``, ``--set``).
    Raises ``UserError`` with one line that names the file, the key and what is allowed.
    """
    path = Path(path)
    raw = read_yaml(path, "search space", "a YAML file such as search_spaces/quick.yaml", _shipped_spaces)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"search space {path}: expected a mapping with base, params and search")
    try:
        return space_from_dict(raw, overrides)
    except UserError as exc:
        raise UserError(f"search space {path}: {exc}") from None


def space_from_dict(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> SearchSpace:
    """Validate a space given as a mapping (see the module docstring for the schema)."""
    raw = _apply_overrides(raw, overrides or {})
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_one_line(exc)) from None
    _check_base(space)
    _check_params(space)
    _check_settings(space)
    return space


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = _deep_copy(raw)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise UserError(f"{'.'.join(parents)} must be a mapping to override {dotted}")
            node = child
        node[leaf] = value
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _one_line(error: ValidationError) -> str:
    """The first pydantic error as ``key.path: what is allowed (got ...)``."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = list(model.model_fields) if model is not None else []
        if model is Distribution:
            allowed = ["choice", "uniform", "loguniform", "int", "step"]
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
        return f"unknown key {key!r}; {hint}"
    if first["type"] == "literal_error":
        return f"{key}: {msg.replace('Input should be ', 'one of ')} (got {first.get('input')!r})"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {msg}{shown}"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    """The schema model at a location such as ``["search", "asha"]`` (params.* are Distributions)."""
    model: type[BaseModel] = SearchSpace
    i = 0
    while i < len(loc):
        part = loc[i]
        if model is SearchSpace and part == "params":
            return Distribution if i + 1 < len(loc) else None
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
        i += 1
    return model


def _field_kind(key: str) -> str:
    """"int", "float", "literal", "bool", "list" or "other" for a Config field."""
    ann = Config.model_fields[key].annotation
    args = [a for a in get_args(ann) if a is not type(None)]
    if get_origin(ann) is Literal:
        return "literal"
    if ann is bool:
        return "bool"
    if ann is int or (args and all(a is int for a in args)):
        return "int"
    if ann is float:
        return "float"
    if get_origin(ann) is list:
        return "list"
    return "other"


def _check_base(space: SearchSpace) -> None:
    base = space.base
    if base.preset is not None and base.preset not in PRESETS:
        raise UserError(f"base.preset: unknown preset {base.preset!r}; choose one of: {', '.join(PRESETS)}")
    if "seed" in base.set:
        raise UserError(f"base.set.seed: {NOT_SEARCHABLE['seed']} (remove it from base.set)")
    try:
        cfg = make_config(dict(base.set), preset=base.preset)
    except UserError as exc:
        raise UserError(f"base.set: {exc}") from None
    gpus = space.search.resources.gpus
    if cfg.device == "cuda" and gpus == 0:  # unset is fine: a cuda config gets a share on a GPU cluster
        raise UserError("base.set.device is cuda but search.resources.gpus is 0: every trial would fail; "
                        "give trials a GPU share (--gpus-per-trial) or use device: auto")
    if cfg.device == "cpu" and gpus:
        raise UserError(f"search.resources.gpus is {gpus} but the config runs on device=cpu; "
                        "set base.set.device: auto (or cuda) so trials use their GPU")


def _check_params(space: SearchSpace) -> None:
    base = space.base_values()
    for key, dist in space.params.items():
        where = f"params.{key}"
        if key not in Config.model_fields:
            close = difflib.get_close_matches(key, list(Config.model_fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"searchable keys: {', '.join(k for k in Config.model_fields if k not in NOT_SEARCHABLE)}"
            raise UserError(f"{where}: {key!r} is not a config key; {hint}")
        if key in NOT_SEARCHABLE:
            raise UserError(f"{where}: {key} cannot be searched: {NOT_SEARCHABLE[key]}")
        if key in space.base.set:
            raise UserError(f"{where}: {key} is both fixed in base.set and searched in params; remove one")
        kind = _field_kind(key)
        if dist.kind in ("uniform", "loguniform") and kind != "float":
            allowed = "int: [low, high]" if kind == "int" else "choice: [...]"
            raise UserError(f"{where}: {key} is not a float, so {dist.kind} cannot sample it; use {allowed}")
        if dist.kind == "int" and kind not in ("int", "float"):
            raise UserError(f"{where}: {key} is not a number, so int cannot sample it; use choice: [...]")
        for value in dist.values():
            try:
                make_config({**base, key: value})
            except UserError as exc:
                label = "choice value" if dist.kind == "choice" else f"{dist.kind} endpoint"
                raise UserError(f"{where}: {label} {value!r} is rejected: {exc}") from None
    _check_cells(space, base)


def _check_cells(space: SearchSpace, base: dict[str, Any]) -> None:
    """Every combination of an all-choice space must make a valid config (cross-key rules)."""
    if not space.params or any(d.kind != "choice" for d in space.params.values()):
        return
    keys = list(space.params)
    if math.prod(len(space.params[k].choice) for k in keys) > MAX_CELLS_CHECKED:
        return
    for cell in itertools.product(*(space.params[k].choice for k in keys)):
        values = dict(zip(keys, cell))
        try:
            make_config({**base, **values})
        except UserError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            raise UserError(f"params: the combination {shown} is rejected: {exc}") from None


def _check_settings(space: SearchSpace) -> None:
    s = space.search
    if len(s.modes) != len(s.objectives):
        example = ", ".join("max" if o in OBJECTIVES else "min" for o in s.objectives)
        raise UserError(f"search.mode: give one mode per objective {s.objectives}, e.g. mode: [{example}] "
                        f"(got {s.mode!r})")
    if s.multi and s.scheduler == "asha":
        raise UserError("search.scheduler: asha stops trials by one metric; a multi-objective search needs "
                        "scheduler: fifo")
    if s.sampler == "nsga2" and s.algorithm != "optuna":
        raise UserError(f"search.sampler: nsga2 is an optuna sampler; algorithm {s.algorithm} takes no sampler "
                        "(remove sampler)")
    if s.algorithm == "grid":
        not_choice = [k for k, d in space.params.items() if d.kind != "choice"]
        if not_choice:
            k = not_choice[0]
            raise UserError(f"params.{k}: algorithm grid needs every hyperparameter to be a choice; "
                            f"{k} is {space.params[k].kind} (use algorithm optuna or random)")
        if s.num_samples not in (None, 1):
            raise UserError(f"search.num_samples: a grid runs each of its {space.num_trials} cells once; "
                            "remove num_samples (or use algorithm random/optuna)")
    if s.batch and s.algorithm != "optuna":
        raise UserError(f"search.batch: only optuna's proposals depend on finished trials; algorithm {s.algorithm} "
                        "needs no batch (remove batch: true or --batch)")
    if s.batch and s.concurrency is None:
        raise UserError("search.batch needs search.concurrency, the number of trials in a batch")
    if not space.params and s.algorithm != "grid":
        raise UserError(f"params: algorithm {s.algorithm} needs at least one hyperparameter to search")
    if s.seed + s.seeds - 1 > MAX_SEED:
        raise UserError(f"search.seed: seed + seeds - 1 must be at most {MAX_SEED} (got {s.seed} + {s.seeds} - 1)")
    if s.scheduler == "asha" and s.asha.grace_period > s.seeds:
        raise UserError(f"search.asha.grace_period: at most search.seeds ({s.seeds}) (got {s.asha.grace_period})")
