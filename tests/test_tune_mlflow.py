"""``--mlflow``: a real search logs every trial to a real local MLflow store, read back here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune_distill import UserError, load_results
from tune_distill.tune import search, space_from_dict
from test_tune_search import tiny_space


def test_every_trial_is_an_mlflow_run_with_its_config_metrics_and_sets(ray_cluster, mnist_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    space = space_from_dict(tiny_space({"depth": {"choice": [1, 2]}}, algorithm="grid", seeds=2,
                                       objective=["acc_mean", "stored_points"], mode=["max", "min"]))
    store = tmp_path / "mlruns"
    search(space, name="tracked", storage=tmp_path, data_dir=mnist_dir, mlflow=str(store), progress=False)
    df = load_results("tracked", storage=tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(df) == 2 and all(r.info.status == "FINISHED" for r in runs)
    by_trial = {r.data.tags["trial_name"]: r for r in runs}
    base = space.base_values()
    for _, row in df.iterrows():
        run = next(r for name, r in by_trial.items() if row["trial_id"] in name)
        params, metrics = run.data.params, run.data.metrics
        # The full config: the searched key and every fixed one.
        assert params["depth"] == str(row["depth"]) and params["width"] == str(base["width"])
        assert params["pooling"] == str(base["pooling"]) and params["iterations"] == str(base["iterations"])
        # The last report's metrics: per-seed accuracies, the objectives, the costs.
        for key in ("acc_seed0", "acc_seed1", "acc_mean", "objective", "stored_points", "stored_floats",
                    "distill_seconds"):
            assert metrics[key] == pytest.approx(row[key]), key
        history = client.get_metric_history(run.info.run_id, "acc_seed0")
        assert len(history) >= 1
        # Artifacts: each seed's synthetic set, its picture, metrics and config.
        files = {a.path for folder in client.list_artifacts(run.info.run_id)
                 for a in (client.list_artifacts(run.info.run_id, folder.path) if folder.is_dir else [folder])}
        for seed in (0, 1):
            assert {f"seed_{seed}/synthetic.npz", f"seed_{seed}/synthetic.png", f"seed_{seed}/config.yaml"} <= files
        local = Path(client.download_artifacts(run.info.run_id, "seed_0/synthetic.png", str(tmp_path / run.info.run_id)))
        assert local.read_bytes()[:4] == b"\x89PNG"


def test_a_store_mlflow_cannot_use_is_one_line_before_the_search(mnist_dir, tmp_path):
    space = space_from_dict(tiny_space({"depth": {"choice": [1, 2]}}, algorithm="grid", seeds=1))
    with pytest.raises(UserError) as info:
        search(space, name="untracked", storage=tmp_path, data_dir=mnist_dir, mlflow=f"file://{tmp_path}/plain",
               progress=False)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"--mlflow file://{tmp_path}/plain")
    assert not (tmp_path / "untracked").exists()  # nothing written before the input was checked
