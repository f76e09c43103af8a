"""One validated config object per run, and the named presets.

Every hyperparameter of a distillation-plus-evaluation run lives in ``Config``; the CLI's
``--set key=value``, YAML files and the search spaces all fill this one object, and it is
validated once, here. Invalid input raises ``UserError`` with one line that names the key and
what is allowed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..core.errors import UserError
from ..data import DATASETS, dataset_spec
from ..methods.matching import OBJECTIVES


class Config(BaseModel):
    """All settings of one run. Field names are the keys users type in ``--set`` and YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Data ---------------------------------------------------------------------------------
    dataset: str = Field("mnist", description="a dataset registered in tune_distill/data/__init__.py")
    threshold: int = Field(75, ge=0, le=254, description="mnist: pixels above this (0..255) become points")
    real_cap: int | None = Field(250, ge=1, description="keep each real cloud's first N points (None: all)")
    real_match: bool = Field(False, description="distil against each real cloud's first points / cloud_split "
                             "points (a random subset of a ModelNet shape): real and synthetic clouds of one size")
    val_size: int = Field(0, ge=0, le=30000, description="training clouds held out for validation")

    # Synthetic set ------------------------------------------------------------------------
    ipc: int = Field(1, ge=1, le=500, description="synthetic clouds per class")
    points: int = Field(250, ge=1, le=20000, description="points per synthetic cloud of the ipc, stored as cloud_split "
                        "clouds of points / cloud_split points each (the storage per cloud of the ipc)")
    cloud_split: int = Field(
        1, ge=1, le=1024, description="store each of the ipc clouds as this many clouds of points / cloud_split "
        "points: the same storage per class in more, smaller clouds")
    morphs: int = Field(
        0, ge=0, le=1024, description="3D: per ipc cloud, this many more training clouds, each a blend of its "
        "cloud_split anchor clouds point by point under learned softmax weights (3DDP); the storage counts each "
        "blend's cloud_split logits")
    mix_lr: float = Field(10.0, gt=0, le=1000, description="morphs > 0: the optimizer's step size on the blends' logits")
    init: Literal["uniform", "gaussian", "real", "real_noise", "herding", "kcenter", "class_mean_topk", "full"] = Field(
        "uniform", description="full: every training cloud, the full-data ceiling (iterations=0)")
    init_sampling: Literal["random", "fps"] = Field(
        "random", description="how a real shape is thinned to a synthetic cloud's points: a random subset, "
        "or farthest-point sampling (even coverage of the surface)")
    init_features: Literal["occupancy", "pointnet"] = Field(
        "occupancy", description="herding / kcenter choose in: occupancy grids, or the pooled features of a PointNet "
        "trained on the real training clouds (modelnet only)")
    init_feature_epochs: int = Field(10, ge=1, le=1000, description="init_features=pointnet: epochs of that PointNet's training")
    init_noise: float = Field(1.0, ge=0, le=10, description="std of the jitter (grid cells, or units of the unit ball) for init=real_noise")

    # How points reach the network -----------------------------------------------------------
    encoding: Literal["features", "splat", "points"] = Field(
        "features", description="features / splat: voxel networks (sparse, dense); points: family=pointnet")
    voxel_res: int = Field(32, ge=4, le=128, description="3D shapes: cells per axis of a voxel network's grid")
    splat_kernel: Literal["linear", "gaussian"] = "linear"
    splat_sigma: float = Field(0.5, gt=0, le=4, description="std (cells) of the gaussian splat")
    splat_combine: Literal["clamp", "soft_or"] = "clamp"
    straight_through: bool = Field(False, description="splat: forward the evaluator's binary render, backward the splat")
    snap_every: int = Field(0, ge=0, description="every N iterations re-place points on the top-k cells of their splat (0: never)")
    snap_final: bool = Field(False, description="re-place points on the top-k cells of their splat after the last iteration")

    # Distillation network -------------------------------------------------------------------
    family: Literal["sparse", "dense", "pointnet"] = "sparse"
    backend: Literal["torch", "minkowski", "auto"] = "torch"
    second_order: Literal["full", "truncated"] = Field(
        "full", description="truncated: sparse ops have no double backward, as in MinkowskiEngine"
    )
    depth: int = Field(2, ge=1, le=6)
    width: int = Field(128, ge=1, le=1024)
    pooling: Literal["max", "avg"] = "max"
    norm: Literal["none", "instance", "batch"] = Field("instance", description="batch: pointnet only")
    network: Literal["fixed", "resample", "pretrained"] = "fixed"
    pretrain_steps: int = Field(100, ge=0, le=100000, description="real-data SGD steps for network=pretrained")
    pretrain_refresh: int = Field(50, ge=1, description="re-pretrain a fresh network every N iterations")
    outer_loop: int = Field(1, ge=1, le=100, description="DC's outer loop: matching steps per network")
    inner_loop: int = Field(1, ge=0, le=1000, description="DC's inner loop: network steps on the synthetic set")
    lr_net: float = Field(0.01, gt=0, le=10)

    # Objective ------------------------------------------------------------------------------
    matching: str = Field("gradient", description="a matching objective registered in tune_distill/methods/matching.py: "
                          "gradient or distribution")
    distance: Literal["sum_of_squares", "layerwise_cosine", "mse", "cosine"] = "sum_of_squares"
    ce_weight: float = Field(
        0.0, ge=0, le=100,
        description="distribution: add this times the synthetic clouds' cross-entropy under the matching network (0: off)",
    )
    dm_var_weight: float = Field(
        0.0, ge=0, le=100, description="distribution: also match per-dimension embedding variances, with this weight (0: off)"
    )
    dm_embedding: Literal["pooled", "quantiles"] = Field(
        "pooled", description="distribution: match the pooled global feature, or (pointnet) each channel's "
        "per-point distribution at dm_quantiles ranks (SADM-like)")
    dm_quantiles: int = Field(16, ge=2, le=1024, description="dm_embedding=quantiles: ranks per channel")
    augment: bool = Field(False, description="same random rotation/scale/shift/jitter on real and synthetic")
    aug_rotate: float = Field(15.0, ge=0, le=180, description="max rotation (degrees)")
    aug_scale: float = Field(0.1, ge=0, lt=1, description="max relative scale change")
    aug_translate: float = Field(0.1, ge=0, lt=1, description="max shift as a fraction of the grid")
    aug_jitter: float = Field(0.0, ge=0, le=5, description="per-point noise std (cells)")
    aug_kind: Literal["dsa", "evaluator"] = Field(
        "dsa", description="augment=true: dsa (one aug_* transform per step for the real batch and the synthetic "
        "clouds) or evaluator (3D: every cloud, real and synthetic, its own draw of the point evaluator's "
        "training augmentation, so the set is matched as the classifiers will see it; aug_* unused)")

    # Trajectory matching, after the objective above (tune_distill/methods/trajectory.py) ---------------
    tm_iterations: int = Field(0, ge=0, le=1_000_000, description="then refine by trajectory matching for N iterations (0: off)")
    tm_experts: int = Field(4, ge=1, le=100, description="expert networks trained on real data (cached on disk)")
    tm_expert_steps: int = Field(800, ge=1, le=1_000_000, description="SGD steps per expert")
    tm_expert_every: int = Field(50, ge=1, description="expert steps between saved checkpoints")
    tm_expert_lr: float = Field(0.03, gt=0, le=10, description="the experts' SGD step size")
    tm_syn_steps: int = Field(10, ge=1, le=1000, description="student steps on the synthetic set per iteration")
    tm_span: int = Field(2, ge=1, description="checkpoints ahead the student must reach")
    tm_max_start: int = Field(8, ge=0, description="latest checkpoint a student starts from")
    tm_lr: float = Field(0.01, gt=0, le=100, description="Adam step size on the coordinates (cells)")
    tm_syn_lr: float = Field(0.03, gt=0, le=10, description="the student's initial step size (learnt)")
    tm_lr_lr: float = Field(0.01, ge=0, le=10, description="Adam step size on the log of the student's step size")
    tm_nets: list[Literal["pointnet", "dgcnn", "pointnet2"]] = Field(
        default_factory=lambda: ["pointnet"], min_length=1, description="3D: the experts' architectures at the "
        "evaluator's width, taken in turn by the iterations, each with its own experts (images: ConvNet)")

    # Optimisation of the synthetic set --------------------------------------------------------
    optimizer: Literal["sgd", "adam"] = "sgd"
    # A point's gradient shrinks with ipc (each cloud is one of ipc in its class's loss; for
    # configs/ours.yaml mean |grad| is 0.072 at ipc 1 and 0.0033 at ipc 10), so an SGD lr that
    # moves points at 1 cloud per class barely moves them at 10.
    lr: float = Field(0.1, gt=0, le=1000, description="step size on the coordinates (scale it with ipc for SGD)")
    momentum: float = Field(0.5, ge=0, lt=1)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: anneal lr to 0 over the iterations (one step per iteration)"
    )
    iterations: int = Field(1250, ge=0, le=1_000_000)
    batch_real: int = Field(256, ge=1, le=10000, description="real clouds per class per iteration")

    # Evaluation -----------------------------------------------------------------------------
    eval_models: int = Field(5, ge=1, le=100)
    eval_epochs: int = Field(1000, ge=1, le=100000)
    eval_width: int = Field(128, ge=1, le=1024)
    eval_depth: int = Field(3, ge=1, le=5)
    eval_lr: float = Field(0.01, gt=0, le=10)
    eval_batch: int = Field(256, ge=1)
    eval_augment: bool = True
    eval_rotate: bool = Field(False, description="3D: also rotate training clouds about the up axis")
    eval_batched: bool = Field(False, description="train the K evaluation networks as one computation "
                               "(vmapped on GPUs): same streams, same results to float rounding")
    eval_split: Literal["test", "val"] = Field("test", description="val needs val_size > 0")
    eval_metric: Literal["accuracy", "balanced"] = Field(
        "accuracy", description="balanced: per-class top-1 averaged over classes (every split scored)")
    eval_test_size: int | None = Field(None, ge=1, description="evaluate on the first N clouds of each split (None: all)")
    eval_at: list[int] = Field(default_factory=list, description="also evaluate at these iterations")
    # 3D evaluators only (docs/protocol-3d.md). A named protocol sets every key of EVAL_PROTOCOL_KEYS
    # that the values do not set themselves (make_config).
    eval_protocol: Literal["table", "full", "sadm"] | None = Field(
        None, description="3D: a named evaluation protocol (table: ours, CPU-sized; full: ours, 5 x 500 epochs; "
        "sadm: SADM's and 3DDP's PointNet with T-Net, SGD, no augmentation, 10 x 500 epochs); eval_* keys override it")
    eval_net: Literal["pointnet", "dgcnn", "pointnet2"] = Field(
        "pointnet", description="3D: the evaluation network (dgcnn: EdgeConv k=20; pointnet2: single-scale grouping)")
    eval_channels: list[int] = Field(default_factory=list, description="pointnet: per-point widths (empty: "
                                     "eval_width x 2^i for eval_depth layers)")
    eval_head: list[int] = Field(default_factory=lambda: [256], description="pointnet: the head's hidden widths")
    eval_dropout: float = Field(0.0, ge=0, lt=1, description="pointnet: dropout on the head's last hidden layer")
    eval_last_relu: bool = Field(True, description="pointnet: ReLU after the last per-point layer (False: pool its norm)")
    eval_tnet: bool = Field(False, description="pointnet: the input transform net")
    eval_optimizer: Literal["adam", "sgd"] = Field("adam", description="3D: the evaluation networks' optimizer")
    eval_momentum: float = Field(0.9, ge=0, lt=1, description="3D, eval_optimizer=sgd: its momentum")
    eval_weight_decay: float = Field(1e-4, ge=0, le=1, description="3D: the evaluation optimizer's weight decay")
    eval_schedule: Literal["cosine", "step"] = Field(
        "cosine", description="3D: cosine to 0 over eval_epochs, or step: lr x 0.1 from half of them on")
    eval_normalize: bool = Field(False, description="3D: re-centre each training cloud and scale it into the unit sphere")

    # Run ------------------------------------------------------------------------------------
    seed: int = Field(0, ge=0, le=2**31 - 1)
    log_every: int = Field(10, ge=1)
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    @field_validator("dataset", "matching")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        # Registries, not Literals: a dataset or objective registered at run time is valid.
        what, registry = {"dataset": ("dataset", DATASETS), "matching": ("matching objective", OBJECTIVES)}[info.field_name]
        if name not in registry:
            raise ValueError(f"unknown {what} {name!r}; choose one of: {', '.join(registry)}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        image = dataset_spec(self.dataset).kind == "image"
        if self.eval_split == "val" and self.val_size == 0:
            raise ValueError("eval_split=val needs val_size > 0 (e.g. val_size=5000)")
        if self.backend == "minkowski" and self.family != "sparse":
            raise ValueError("backend=minkowski runs the sparse family only (set family=sparse)")
        if self.backend == "minkowski" and self.second_order == "full":
            raise ValueError("backend=minkowski has no double backward: set second_order=truncated, or backend=torch")
        checkpoints = self.tm_expert_steps // self.tm_expert_every
        if self.tm_iterations and self.tm_max_start + self.tm_span > checkpoints:
            raise ValueError(f"tm_max_start + tm_span must be at most tm_expert_steps // tm_expert_every = {checkpoints} "
                             f"(the experts' last checkpoint); lower them or train experts longer")
        if self.tm_iterations and image and self.encoding != "splat":
            raise ValueError("trajectory matching trains on the splatted image: set encoding=splat, or tm_iterations=0")
        if self.tm_iterations and not image and self.morphs:
            raise ValueError("trajectory matching on 3D shapes moves the stored points, not the blends' logits: "
                             "set morphs=0, or tm_iterations=0")
        if len(set(self.tm_nets)) < len(self.tm_nets):
            raise ValueError(f"tm_nets names an architecture twice ({self.tm_nets}): name each once")
        if self.tm_iterations and image and self.tm_nets != ["pointnet"]:
            raise ValueError(f"tm_nets chooses 3D experts; {self.dataset}'s experts are its image ConvNet: "
                             "unset tm_nets, or use a point-cloud dataset")
        if self.init == "full" and self.iterations + self.tm_iterations:
            raise ValueError("init=full evaluates the whole training set, it is not distilled: set iterations=0")
        if (self.family == "pointnet") != (self.encoding == "points"):
            raise ValueError("family=pointnet reads coordinates: set family=pointnet with encoding=points "
                             "(voxel families take encoding=features or splat)")
        if self.points % self.cloud_split:
            raise ValueError(f"points={self.points} does not split into cloud_split={self.cloud_split} equal clouds: "
                             "choose a cloud_split that divides points")
        if self.morphs and (image or self.cloud_split < 2 or self.init == "full"):
            raise ValueError("morphs blends the cloud_split anchor clouds of each ipc cloud of a 3D set: use a point-cloud "
                             "dataset, cloud_split >= 2 and an init other than full, or morphs=0")
        if self.dm_embedding == "quantiles" and self.family != "pointnet":
            raise ValueError("dm_embedding=quantiles reads per-point features: set family=pointnet, or dm_embedding=pooled")
        if self.init_features == "pointnet" and image:
            raise ValueError(f"init_features=pointnet embeds 3D shapes, not images: use it with a point-cloud "
                             f"dataset ({', '.join(n for n, d in DATASETS.items() if d.kind == 'points')}), "
                             f"or init_features=occupancy")
        if self.norm == "batch" and self.family != "pointnet":
            raise ValueError("norm=batch is for family=pointnet; voxel networks take none or instance")
        if image and self.aug_kind == "evaluator":
            raise ValueError("aug_kind=evaluator draws the point evaluator's augmentation; images take aug_kind=dsa")
        if image and (self.eval_protocol or self.eval_net != "pointnet"):
            raise ValueError(f"eval_protocol and eval_net choose 3D evaluators; {self.dataset} is judged by its image "
                             "ConvNet: unset them, or use a point-cloud dataset")
        if not image:
            image_only = [k for k in ("snap_every", "snap_final", "straight_through") if getattr(self, k)]
            if image_only:
                images = ", ".join(n for n, d in DATASETS.items() if d.kind == "image")
                raise ValueError(f"{image_only[0]} works on image datasets ({images}) only; turn it off for {self.dataset}")
        return self

    @property
    def clouds_per_class(self) -> int:
        """Synthetic clouds per class as stored: ``ipc * cloud_split``, of ``cloud_points`` points each."""
        return self.ipc * self.cloud_split

    @property
    def cloud_points(self) -> int:
        return self.points // self.cloud_split

    @property
    def total_iterations(self) -> int:
        """Iterations of the objective plus those of trajectory matching: a run's iteration count."""
        return self.iterations + self.tm_iterations

    def replace(self, **changes: Any) -> "Config":
        """A new validated config with ``changes`` applied."""
        return make_config({**self.model_dump(), **changes})


# Every registered dataset's presets (data/mnist.py, data/modelnet.py), by name.
PRESETS: dict[str, dict[str, Any]] = {name: values for spec in DATASETS.values() for name, values in spec.presets.items()}

# The evaluation keys a named protocol defines (docs/protocol-3d.md; sources in
# docs/protocol-3d-sources.md). Not among them: eval_net (any protocol trains any network),
# and where and how it is scored (eval_split, eval_metric, eval_test_size, eval_at, eval_batched).
OURS_EVAL: dict[str, Any] = dict(
    eval_width=32, eval_depth=4, eval_lr=0.001, eval_batch=8, eval_augment=True, eval_rotate=False, eval_channels=[],
    eval_head=[256], eval_dropout=0.0, eval_last_relu=True, eval_tnet=False, eval_optimizer="adam", eval_momentum=0.9,
    eval_weight_decay=1e-4, eval_schedule="cosine", eval_normalize=False,
)
EVAL_PROTOCOLS: dict[str, dict[str, Any]] = {
    # tables/modelnet10.yaml's and modelnet40.yaml's protocol at IPC 1 (the table specs shorten
    # the epochs and widen the batch at IPC 10 themselves).
    "table": dict(OURS_EVAL, eval_models=3, eval_epochs=300),
    "full": dict(OURS_EVAL, eval_models=5, eval_epochs=500),
    # SADM's and 3DDP's evaluation code: PointNet with the input T-Net (64-128-1024, BatchNorm,
    # head 512-256 with dropout 0.3), SGD 0.01 momentum 0.9 wd 5e-4, x0.1 at half of 500 epochs,
    # batches of 8, no augmentation, training clouds put in the unit sphere, 10 runs. Width 64
    # sizes DGCNN and PointNet++ at their papers' widths under this protocol.
    "sadm": dict(eval_models=10, eval_epochs=500, eval_width=64, eval_depth=3, eval_lr=0.01, eval_batch=8,
                 eval_augment=False, eval_rotate=False, eval_channels=[64, 128, 1024], eval_head=[512, 256],
                 eval_dropout=0.3, eval_last_relu=False, eval_tnet=True, eval_optimizer="sgd", eval_momentum=0.9,
                 eval_weight_decay=5e-4, eval_schedule="step", eval_normalize=True),
}
EVAL_PROTOCOL_KEYS = tuple(EVAL_PROTOCOLS["sadm"])


def with_protocol(values: dict[str, Any], protocol: str) -> dict[str, Any]:
    """``values`` (e.g. a run's config.yaml) to be scored under ``protocol`` instead of their own
    evaluation: the keys a protocol sets are dropped, so the protocol's apply."""
    return {k: v for k, v in values.items() if k not in EVAL_PROTOCOL_KEYS} | {"eval_protocol": protocol}


def _fields_help(key: str) -> str:
    field = Config.model_fields[key]
    ann = field.annotation
    choices = getattr(ann, "__args__", None)
    if getattr(ann, "__origin__", None) is Literal and choices:
        return "one of: " + ", ".join(map(str, choices))
    return ""


# Keys that were renamed: an old config file gets a one-line error naming the new key.
RENAMED = {"objective": "matching"}


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or None
    if first["type"] == "extra_forbidden" and loc in RENAMED:
        return f"config key {loc!r} is now called {RENAMED[loc]!r}; rename it (same values)"
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc), list(Config.model_fields), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(Config.model_fields)}"
        return f"unknown config key {loc!r}{hint}"
    if loc is None:  # a cross-field rule from _consistent
        return "invalid config: " + first["msg"].removeprefix("Value error, ")
    allowed = _fields_help(loc) if loc in Config.model_fields else ""
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    detail = allowed or msg
    return f"config key {loc!r}: {detail} (got {got!r})"


def make_config(values: dict[str, Any] | None = None, preset: str | None = None) -> Config:
    """Validate ``values`` on top of ``preset`` (if any); bad input raises a one-line UserError.

    A named ``eval_protocol`` (in the values or the preset) sets its keys over the preset's; any
    of them in ``values`` still wins."""
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
    values = values or {}
    protocol = values.get("eval_protocol", base.get("eval_protocol"))
    if isinstance(protocol, str) and protocol in EVAL_PROTOCOLS:
        base = {**base, **EVAL_PROTOCOLS[protocol]}
    try:
        return Config(**{**base, **values})
    except ValidationError as exc:
        raise UserError(_one_line(exc)) from None


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["depth=3", "lr=0.05"]`` -> ``{"depth": 3, "lr": 0.05}``; values are read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {key.strip()}: cannot read value {raw!r}") from None
    return out


def read_yaml(path: str | Path, what: str, example: str, missing_hint: Callable[[], str] | None = None) -> Any:
    """The YAML document in ``path``, or a one-line ``UserError`` that calls the file ``what``.

    ``example`` names a good file for when the path is unreadable (a folder, a binary file);
    ``missing_hint()``, asked only when the file does not exist, is appended to that error.
    """
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found{missing_hint() if missing_hint else ''}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, a binary file
        raise UserError(f"cannot read {what} {path} ({exc.__class__.__name__}); give {example}") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (as written to ``config.yaml`` by a run)."""
    data = read_yaml(path, "config file", "a config.yaml")
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of config keys")
    return data


def file_preset(values: dict[str, Any], preset: str | None, source: str, given: str = "") -> str | None:
    """The preset a config file builds on: its optional top-level ``preset:`` key (popped from
    ``values``), else ``preset``; both given and different is a one-line ``UserError`` that names
    the file (``source``) and where ``preset`` came from (``given``, default ``--preset NAME``)."""
    named = values.pop("preset", None)
    if named is None:
        return preset
    if not isinstance(named, str):
        raise UserError(f"{source}: preset must be a preset's name, one of: {', '.join(PRESETS)}; got {named!r}")
    if preset is not None and preset != named:
        raise UserError(f"{given or f'--preset {preset}'} differs from the preset {named!r} that {source} names; drop one")
    return named
