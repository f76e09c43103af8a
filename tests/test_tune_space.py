"""Search spaces and results without Ray: the shipped spaces, one-line errors, the objective, names."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from tune_distill import UserError, load_results
from tune_distill.cli import _search_overrides, build_parser, main
from tune_distill.tune import load_space, space_from_dict
from tune_distill.tune.objective import summarize
from tune_distill.tune.progress import Progress
from tune_distill.tune.results import BASE_FILE, SPACE_FILE, leaderboard

REPO = Path(__file__).resolve().parents[1]


def test_shipped_spaces_are_valid():
    paper = load_space(REPO / "search_spaces" / "paper.yaml")
    assert paper.search.algorithm == "grid" and paper.base.preset == "paper-sparse"
    assert {k: d.choice for k, d in paper.params.items()} == {
        "family": ["sparse", "dense"], "depth": [2, 3, 4],
        "distance": ["sum_of_squares", "layerwise_cosine"], "pooling": ["max", "avg"]}
    assert paper.num_trials == 24
    sens = load_space(REPO / "search_spaces" / "sensitivity.yaml")
    assert sens.search.algorithm == "optuna" and sens.params["lr"].kind == "loguniform"
    assert {"depth", "pooling", "distance", "lr", "momentum", "optimizer", "init", "points", "network",
            "width"} <= set(sens.params)
    quick = load_space(REPO / "search_spaces" / "quick.yaml")
    assert quick.search.resources.gpus == 0 and quick.search.concurrency == 2
    assert quick.base_values()["eval_split"] == "val"  # the objective never sees the test set
    # A GPU-sized space runs on a CPU with overrides, validated like the file itself.
    cpu = load_space(REPO / "search_spaces" / "sensitivity.yaml",
                     {"search.resources.gpus": 0, "base.preset": "quick", "base.set.iterations": 5})
    assert cpu.base_values()["iterations"] == 5


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_loads_and_selects_on_validation(path):
    space = load_space(path)
    if space.base.preset not in ("paper-sparse", "paper-dense"):  # the paper's protocol has no split
        assert space.base_values()["eval_split"] == "val"


def test_ipc10_space_moves_points_at_ipc10():
    # At 10 clouds per class a point's gradient is ~10x smaller than at 1: the space's lr range is higher.
    ipc10 = load_space(REPO / "search_spaces" / "beyond-ipc10.yaml")
    assert ipc10.base_values()["ipc"] == 10
    assert ipc10.params["lr"].bounds[0] > load_space(REPO / "search_spaces" / "beyond.yaml").params["lr"].bounds[0]


def test_seeds_and_searcher_seed_come_from_the_experiment_seed():
    space = space_from_dict({"params": {"depth": {"choice": [2, 3]}}, "search": {"seed": 7, "seeds": 3}})
    assert space.seeds == [7, 8, 9] and space.searcher_seed == 7
    assert space.search.seeds == 3 and space_from_dict({"params": {"depth": {"choice": [2]}}}).seeds == [0, 1, 2]
    cfg = space.trial_config({"depth": 3}, seed=8)
    assert cfg.depth == 3 and cfg.seed == 8
    assert space_from_dict(space.to_dict()) == space  # what an experiment stores reads back equal


BAD = [
    ({"params": {"dept": {"choice": [2]}}}, "params.dept", "did you mean 'depth'"),
    ({"params": {"depth": {"choice": []}}}, "params.depth", "at least one value"),
    ({"params": {"depth": {"choice": [2, 9]}}}, "params.depth", "9"),
    ({"params": {"pooling": {"choice": ["max", "mean"]}}}, "params.pooling", "max, avg"),
    ({"params": {"lr": {"loguniform": [0, 1]}}}, "params.lr", "low > 0"),
    ({"params": {"lr": {"loguniform": [0.1, 5000]}}}, "params.lr", "5000"),
    ({"params": {"lr": {"uniform": [0.5, 0.1]}}}, "params.lr", "low < high"),
    ({"params": {"lr": {"normal": [0.1, 1]}}}, "params.lr.normal", "uniform"),
    ({"params": {"depth": {"uniform": [2, 4]}}}, "params.depth", "int: [low, high]"),
    ({"params": {"seed": {"choice": [1, 2]}}}, "params.seed", "search.seed"),
    ({"params": {"threshold": {"choice": [50, 75]}}}, "params.threshold", "loaded once"),
    ({"params": {"eval_split": {"choice": ["test", "val"]}}}, "params.eval_split", "val_size"),
    ({"params": {"depth": {"choice": [2]}}, "search": {"algorithm": "bayes"}}, "search.algorithm", "optuna"),
    ({"params": {"depth": {"choice": [2]}}, "search": {"schedulr": "asha"}}, "search.schedulr", "scheduler"),
    ({"params": {"lr": {"uniform": [0.1, 0.5]}}, "search": {"algorithm": "grid"}}, "params.lr", "choice"),
    ({"params": {"depth": {"choice": [2]}}, "base": {"preset": "fast"}}, "base.preset", "quick"),
    ({"params": {"depth": {"choice": [2]}}, "base": {"set": {"widht": 8}}}, "base.set", "width"),
    ({"params": {"depth": {"choice": [2]}}, "base": {"set": {"depth": 3}}}, "params.depth", "both"),
    ({"params": {"depth": {"choice": [2]}}, "search": {"resources": {"gpus": 1}}}, "gpus", "device"),
    ({"params": {"depth": {"choice": [2]}}, "search": {"seeds": 0}}, "search.seeds", "greater"),
]


@pytest.mark.parametrize("raw,key,allowed", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_space_is_one_line_naming_key_and_allowed(raw, key, allowed):
    with pytest.raises(UserError) as err:
        space_from_dict(raw)
    message = str(err.value)
    assert "\n" not in message and key in message and allowed in message


def test_bad_space_file_from_the_cli_exits_2_before_ray(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"params": {"depth": {"choice": [2, 3]}, "pooling": {"choice": []}}}))
    assert main(["search", str(bad), "--storage", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "params.pooling" in err and "bad.yaml" in err
    assert not (tmp_path / "results").exists()  # nothing written
    assert main(["search", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    # A flag is validated like the file: a grid cannot take --num-samples.
    good = tmp_path / "grid.yaml"
    good.write_text(yaml.safe_dump({"params": {"depth": {"choice": [2, 3]}}, "search": {"algorithm": "grid"}}))
    assert main(["search", str(good), "--num-samples", "5"]) == 2
    assert "num_samples" in capsys.readouterr().err
    assert main(["search", str(good), "--time-budget-s", "0"]) == 2
    assert "search.time_budget_s" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_search_flags_land_in_the_space():
    args = build_parser().parse_args(["search", str(REPO / "search_spaces" / "quick.yaml"), "--time-budget-s", "90",
                                      "--num-samples", "3", "--cpus-per-trial", "2", "--set", "points=100"])
    space = load_space(args.space, _search_overrides(args))
    assert space.search.time_budget_s == 90 and space.num_trials == 3
    assert space.search.resources.cpus == 2 and space.base_values()["points"] == 100
    assert space.search.batch  # quick.yaml's own, kept when no flag is given
    unbatched = build_parser().parse_args(["search", str(REPO / "search_spaces" / "quick.yaml"), "--no-batch"])
    assert not load_space(unbatched.space, _search_overrides(unbatched)).search.batch


def test_unreachable_address_is_one_line_error_without_waiting(tmp_path, mnist_dir, capsys):
    space = tmp_path / "grid.yaml"
    space.write_text(yaml.safe_dump({"params": {"depth": {"choice": [2, 3]}}, "search": {"algorithm": "grid"}}))
    data = ["--data-dir", str(mnist_dir)] if mnist_dir else []
    assert main(["search", str(space), "--storage", str(tmp_path / "r"), "--address", "127.0.0.1:1", *data]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "127.0.0.1:1" in err and "ray start --head" in err
    assert not (tmp_path / "r").exists()


def test_objective_summary():
    s = summarize([0.5, 0.7], "robust", robust_k=2.0)
    assert s["acc_mean"] == pytest.approx(0.6) and s["acc_std"] == pytest.approx(0.1)
    assert s["acc_min"] == 0.5 and s["objective"] == pytest.approx(0.4)
    assert summarize([0.5, 0.7], "acc_min")["objective"] == 0.5
    assert summarize([0.5, 0.7], "acc_mean")["objective"] == pytest.approx(0.6)
    assert math.isnan(summarize([], "acc_mean")["objective"])


def test_leaderboard_ranks_trials_with_more_seeds_first():
    # ASHA stopped trial 2 after one seed: its robust objective is that seed's accuracy (std 0),
    # above trial 1's over two seeds, yet trial 1 beat it at one seed and went on.
    seeds = {1: [0.9649, 0.9620], 2: [0.9639], 3: [0.9500, 0.9400], 4: []}
    df = pd.DataFrame([{"trial": t, "seeds_done": len(a), **summarize(a, "robust")} for t, a in seeds.items()])
    assert df.set_index("trial")["objective"][2] > df.set_index("trial")["objective"][1]
    assert leaderboard(df)["trial"].tolist() == [1, 3, 2]
    assert leaderboard(df, top=1)["trial"].tolist() == [1]
    # The live display names the same best trial, from Tune's trial objects.
    trials = [SimpleNamespace(trial_id=f"t{t}", experiment_tag=f"{t}_x", status="TERMINATED",
                              last_result={"seeds_done": len(a), "objective": summarize(a, "robust")["objective"]})
              for t, a in seeds.items() if a]
    assert Progress(4, 2, "max").best(trials).startswith("#1 ")
    # Mode min: the lowest objective among the trials with the most seeds.
    df.attrs["mode"] = "min"  # load_results sets it: the accuracy objective's mode
    assert leaderboard(df)["trial"].tolist() == [3, 1, 2]
    assert Progress(4, 2, "min").best(trials).startswith("#3 ")


def test_unknown_experiment_names_are_one_line_errors_listing_what_exists(tmp_path, capsys):
    storage = tmp_path / "results"
    for command in (["results", "nope"], ["export", "nope"], ["report", "nope"]):
        assert main([*command, "--storage", str(storage)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "'nope'" in err and "none exist yet" in err
    # An experiment that exists but has no trial yet: an empty frame with the documented columns.
    space = space_from_dict({"params": {"depth": {"choice": [2, 3]}}, "search": {"seeds": 2}})
    (storage / "started").mkdir(parents=True)
    (storage / "started" / BASE_FILE).write_text(yaml.safe_dump(space.base_values()))
    (storage / "started" / SPACE_FILE).write_text(yaml.safe_dump(space.to_dict()))
    df = load_results("started", storage=storage)
    assert df.empty and list(df.columns) == [
        "trial", "trial_id", "status", "depth", "seeds_done", "acc_seed0", "acc_seed1", "acc_mean", "acc_std",
        "acc_min", "objective", "pareto", "best_seed", "seconds", "distill_seconds", "stored_points", "stored_floats",
        "node", "split", "synthetic", "error", "trial_dir"]
    # config=True: after those, a config/<key> column for every key of the trial's full config
    full = load_results("started", storage=storage, config=True)
    assert full.empty and list(full.columns) == [*df.columns, *(f"config/{k}" for k in space.base_values())]
    assert main(["results", "nope", "--storage", str(storage)]) == 2
    assert "existing: started" in capsys.readouterr().err
    assert main(["export", "started", "--storage", str(storage)]) == 2
    assert "no trial with a finished seed" in capsys.readouterr().err
    assert main(["search", "--resume", "--name", "other", "--storage", str(storage)]) == 2
    assert "existing: started" in capsys.readouterr().err
