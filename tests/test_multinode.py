"""Several real raylets on one host (ray.cluster_utils.Cluster): trials spread over nodes, and a
trial whose node dies resumes from its last checkpoint on another node.

Both scenarios run on one cluster, in a Python process of their own (a driver connects to one
cluster at a time, and the session's shared local cluster (conftest) must stay untouched): first
the spread, then the lost node, which leaves the cluster one node short.
"""
import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

SCRIPT = textwrap.dedent(r'''
    import glob, json, os, sys, threading, time
    import ray
    from ray.cluster_utils import Cluster
    from sweeper.orchestration.sweep import run_study
    from sweeper.store import Store
    from sweeper.study import Study

    store_path = sys.argv[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no trial
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    store = Store(store_path)
    out = {"workers": [w.node_id for w in workers]}
    try:
        study = Study(name="spread", dataset="digits", axes={"seed": [0, 1, 2, 3]},
                      recipe={"model": "resnet-8-4", "epochs": 2, "augment": "none", "batch_size": 32})
        s = run_study(study, store, say=lambda _: None)
        out["spread"] = dict(done=s.done, failed=len(s.failed), missing=s.missing)

        study = Study(name="lost", dataset="digits", axes={"seed": [0]},
                      recipe={"model": "resnet-14-8", "epochs": 8, "augment": "none", "batch_size": 32})
        box = {}
        t = threading.Thread(target=lambda: box.update(s=run_study(
            study, store, checkpoint_seconds=0, max_failures=3, say=lambda _: None)))
        t.start()
        killed = None
        deadline = time.time() + 300
        while killed is None and time.time() < deadline and t.is_alive():
            # a checkpoint names the node that wrote it (Tune's result.json reaches the store
            # only at its periodic sync, no longer after every checkpoint)
            for meta in glob.glob(os.path.join(store_path, "lost", "_tune", "*", "*", "checkpoint_*",
                                               ".metadata.json")):
                try:
                    node = json.load(open(meta))["node_id"]
                except (OSError, ValueError, KeyError):  # being written, or deleted as a newer one landed
                    continue
                if node:
                    victim = [w for w in workers if w.node_id == node][0]
                    cluster.remove_node(victim, allow_graceful=False)
                    killed = node
                    break
            time.sleep(0.2)
        t.join()
        s = box["s"]
        out["lost"] = dict(done=s.done, failed=len(s.failed), missing=s.missing, killed=killed)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """The store both scenarios wrote, and what the driver saw."""
    root = tmp_path_factory.mktemp("multinode")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(root)], capture_output=True, text=True, env=env,
                       timeout=600)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-3000:]
    return root, json.loads(lines[-1][len("RESULT "):])


def test_trials_spread_over_nodes_and_all_reach_the_store(scenarios):
    root, out = scenarios
    assert out["spread"] == {"done": 4, "failed": 0, "missing": 0}
    trials = pd.read_parquet(root / "spread" / "trials")
    assert len(trials) == 4 and trials["node_id"].nunique() == 2
    assert set(trials["node_id"]) == set(out["workers"])


def test_lost_node_trial_resumes_from_checkpoint_elsewhere(scenarios):
    root, out = scenarios
    lost = out["lost"]
    assert lost["killed"] is not None, "the node running the trial was never killed"
    assert (lost["done"], lost["failed"], lost["missing"]) == (1, 0, 0)
    trials = pd.read_parquet(root / "lost" / "trials")
    assert len(trials) == 1
    row = trials.iloc[0]
    assert row["node_id"] != lost["killed"] and row["node_id"] in out["workers"]
    assert row["resumed_from_epoch"] >= 1  # picked up from a checkpoint, not from scratch
    curves = pd.read_parquet(root / "lost" / "curves")
    assert list(curves["epoch"]) == list(range(1, 9))  # every epoch exactly once
