"""A search on a real two-node Ray cluster, and storage given as a URI.

The cluster runs on this machine: a head node and a worker node of one CPU each, started by
``ray.cluster_utils.Cluster`` in a helper process of their own (``CLUSTER``), so that neither
the session's ``ray_cluster`` fixture nor this test process shares any Ray state with them. The
search driver is a subprocess too, ``python -m tune_distill.cli search ... --address``, as a
user would run it. Trials are sized so a seed takes a couple of seconds: long enough to lose the
worker node while one of its trials is between its first and its second seed.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from tune_distill import load_results
from tune_distill.cli import main

REPO = Path(__file__).resolve().parents[1]
# tests/test_tune_search.py's TINY trial with a longer evaluation: about 2.5 s a seed on one core,
# the window in which the worker node is lost.
TRIAL = dict(iterations=3, batch_real=8, width=8, points=60, eval_models=1, eval_epochs=200, eval_width=16,
             eval_test_size=300)
# Every line the helper answers starts with this (Ray may print to the same stdout).
TAG = "@cluster "

# The helper process: a two-node cluster that it tears down when told to, or when its stdin
# closes (the test process died). Nodes get 200 MiB object stores (MNIST is about 50 MB).
CLUSTER = r'''
import json, sys
from ray.cluster_utils import Cluster

TAG = sys.argv[1]
store = 200 << 20
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store,
                                                        "include_dashboard": False})
worker = cluster.add_node(num_cpus=1, object_store_memory=store)
cluster.wait_for_nodes()
print(TAG + json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                        "worker": worker.node_id}), flush=True)
for line in sys.stdin:
    if line.strip() == "kill-worker":
        # SIGKILL, no graceful shutdown: a machine that is lost, not one that is stopped.
        cluster.remove_node(worker, allow_graceful=False)
        print(TAG + "killed", flush=True)
    elif line.strip() == "quit":
        break
cluster.shutdown()
print(TAG + "down", flush=True)
'''


@dataclass
class TwoNodes:
    """The helper process holding the cluster, and what a driver needs to join it."""

    address: str
    head: str  # node ids
    worker: str
    env: dict[str, str]  # for drivers: the cluster's RAY_TMPDIR
    proc: subprocess.Popen
    lines: queue.Queue = field(repr=False)

    def answer(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the cluster helper gave no answer in {timeout} s") from None

    def kill_worker(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("kill-worker\n")
        self.proc.stdin.flush()
        assert self.answer(60) == "killed"


def _read_tagged(stream, lines: queue.Queue) -> None:
    for line in stream:
        if line.startswith(TAG):
            lines.put(line[len(TAG):].strip())


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[TwoNodes]:
    # A fresh short RAY_TMPDIR: Ray's socket paths have a length limit, and this cluster must
    # not share temp files (or the "current cluster" address file) with any other Ray.
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER, TAG], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "cluster.log", "ab"), text=True, env=env, cwd=REPO)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_tagged, args=(proc.stdout, lines), daemon=True).start()
    try:
        try:
            info = json.loads(lines.get(timeout=120))
        except queue.Empty:
            raise AssertionError("the two-node cluster did not start in 120 s: "
                                 + (tmp_path / "cluster.log").read_text()[-2000:]) from None
        yield TwoNodes(info["address"], info["head"], info["worker"], env, proc, lines)
    finally:
        try:
            proc.stdin.write("quit\n")
            proc.stdin.close()
            proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()  # its nodes' reaper processes end them when it dies
            proc.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _seed_runs(exp_dir: Path) -> dict[str, list[dict]]:
    """Every trial's ``seed_runs.jsonl`` lines so far, by trial folder name."""
    out: dict[str, list[dict]] = {}
    for log in sorted(exp_dir.glob("trial_*/seed_runs.jsonl")):
        out[log.parent.name] = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip().endswith("}")]
    return out


def _wait_for_a_first_seed_on(node_id: str, exp_dir: Path, driver: subprocess.Popen, log: Path,
                              timeout: float = 600) -> str:
    """The trial folder of the first trial that finished its first seed, and only that, on
    ``node_id``. Polls the trials' audit logs; the deadline only bounds a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial, runs in _seed_runs(exp_dir).items():
            if [r["index"] for r in runs] == [0] and runs[0]["node_id"] == node_id:
                return trial
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited ({driver.returncode}) before a first seed finished on the "
                                 f"worker node: {log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no first seed finished on the worker node in {timeout} s: {log.read_text()[-3000:]}")


def test_object_store_uris_are_one_line_errors_and_file_uris_must_be_absolute(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"depth": {"choice": [1, 2]}}, "search": {"algorithm": "grid"}}))
    for command in (["search", str(space)], ["results", "x"], ["export", "x"], ["report", "x"]):
        assert main([*command, "--storage", "s3://bucket/results"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "s3:// storage is not supported" in err and "file:///abs/path" in err
    assert main(["results", "x", "--storage", "file://results"]) == 2  # a host, not a path
    assert "three slashes" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [space]  # nothing written
    # A file:// URI is the folder it names, also %-escaped.
    (tmp_path / "my results").mkdir()
    assert main(["results", "x", "--storage", (tmp_path / "my results").as_uri()]) == 2
    assert f"under {tmp_path / 'my results'}/; none exist yet" in capsys.readouterr().err


@pytest.mark.slow
def test_search_on_two_nodes_survives_losing_one(two_nodes: TwoNodes, mnist_dir, tmp_path, capsys):
    raw = {"base": {"preset": "quick", "set": dict(TRIAL)},
           "params": {"depth": {"choice": [1, 2]}, "pooling": {"choice": ["max", "avg"]}},
           "search": {"algorithm": "grid", "seeds": 2, "concurrency": 2, "resources": {"cpus": 1}}}
    space_file = tmp_path / "grid.yaml"
    space_file.write_text(yaml.safe_dump(raw))
    storage = tmp_path / "shared"  # as an NFS mount would be: one path on every node
    uri = storage.as_uri()  # file:///...: the storage as Ray Tune takes it
    exp_dir = storage / "nodes"
    log = tmp_path / "driver.log"
    cmd = [sys.executable, "-m", "tune_distill.cli", "search", str(space_file), "--name", "nodes",
           "--storage", uri, "--address", two_nodes.address]
    if mnist_dir:
        cmd += ["--data-dir", str(mnist_dir)]
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=two_nodes.env)
    try:
        # Lose the worker node while one of its trials is between its first and second seed.
        victim = _wait_for_a_first_seed_on(two_nodes.worker, exp_dir, driver, log)
        before = _seed_runs(exp_dir)
        written = {p: p.read_text() for p in exp_dir.glob("trial_*/seed_runs.jsonl")}
        two_nodes.kill_worker()
        try:
            code = driver.wait(timeout=900)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the search did not end 900 s after the worker was lost: {log.read_text()[-4000:]}") from None
        assert code == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    assert "nodes: 4 of 4 trials (4 done)" in log.read_text()

    df = load_results("nodes", storage=uri)
    # Every grid cell ran exactly once, to the end.
    assert len(df) == 4 and df["trial_id"].is_unique
    assert (df["status"] == "done").all() and (df["seeds_done"] == 2).all()
    assert sorted(zip(df["depth"], df["pooling"])) == [(1, "avg"), (1, "max"), (2, "avg"), (2, "max")]
    runs = _seed_runs(exp_dir)
    for trial, trial_runs in runs.items():
        indices = [r["index"] for r in trial_runs]
        assert len(indices) == len(set(indices)), (trial, indices)  # no seed ran to the end twice

    # Trials ran on both nodes; the node column says where.
    head, worker = (f"/{two_nodes.head[:8]}", f"/{two_nodes.worker[:8]}")
    nodes = [n.strip() for cell in df["node"] for n in cell.split(",")]
    assert any(n.endswith(head) for n in nodes) and any(n.endswith(worker) for n in nodes)
    # The trial on the lost node was retried on the head from its last finished seed: seed 0
    # ran once, on the worker, and seed 1 on the head.
    lost = runs[victim]
    assert [(r["index"], r["node_id"]) for r in lost] == [(0, two_nodes.worker), (1, two_nodes.head)]
    row = df[df["trial_dir"].map(lambda d: Path(d).name) == victim].iloc[0]
    assert row["node"].split(", ")[0].endswith(worker) and row["node"].split(", ")[1].endswith(head)
    assert (exp_dir / victim / "error.txt").is_file()  # Tune's record of the failure it recovered from

    # Nothing written before the loss is lost: every log line is kept, with the same accuracy
    # in the results.
    for path, text in written.items():
        assert path.read_text().startswith(text)
    by_dir = df.set_index(df["trial_dir"].map(lambda d: Path(d).name))
    for trial, trial_runs in before.items():
        for r in trial_runs:
            assert np.isclose(by_dir.at[trial, f"acc_seed{r['index']}"], r["acc"])

    # The file:// storage works end to end: results, export, report and the rerun of a finished search.
    capsys.readouterr()
    assert main(["results", "nodes", "--storage", uri, "--format", "csv"]) == 0
    assert "node" in capsys.readouterr().out.splitlines()[0].split(",")
    assert main(["export", "nodes", "--storage", uri, "--top", "1", "--out", str(tmp_path / "exports")]) == 0
    assert len(list((tmp_path / "exports").glob("*/synthetic.npz"))) == 1
    assert main(["report", "nodes", "--storage", uri]) == 0
    assert (exp_dir / "report" / "summary.md").is_file()
    assert main(["search", "--name", "nodes", "--resume", "--storage", uri]) == 0
    assert "already complete" in capsys.readouterr().out
