"""Datasets under an s3:// prefix (the moto S3 server): the driver checks the layout before any
trial, each node copies once under a lock, a half-finished copy is redone, and trials on a real
two-node Ray cluster read the copies and get the results a run from local disk gets. Also: the
CIFAR download from the network happens once per node."""
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweeper import data
from sweeper.data import cifar, imagenet, remote
from sweeper.errors import SweeperError

REPO = Path(__file__).resolve().parents[1]
CIFAR = data.CIFAR10
CIFAR_FILES = (*CIFAR.train_files, CIFAR.test_file)


def tiny_cifar(root: Path, per_file: int = 60) -> Path:
    """A CIFAR-10 root in the standard pickled batches layout: 5 x per_file training images and
    per_file test images, random pixels and labels (seeded)."""
    folder = root / CIFAR.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_FILES:
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_file)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return root


def upload(local: Path, uri: str) -> None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@pytest.fixture
def bucket_uri(s3_server, request):
    """A fresh bucket's prefix URI (with the endpoint in its query string)."""
    import re
    import uuid

    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    s3_server.create_bucket(bucket)
    return s3_server.uri(bucket, "datasets")


@pytest.fixture
def remote_cifar(tmp_path, bucket_uri):
    local = tiny_cifar(tmp_path / "local")
    upload(local, bucket_uri)
    return bucket_uri, local


def under(uri: str, folder: str) -> str:
    """The URI of a folder under the prefix (the endpoint stays in the query string)."""
    path, _, query = uri.partition("?")
    return f"{path}/{folder}?{query}"


def log_lines(cache: Path) -> list[dict]:
    logs = list((cache / "data").glob(f"*/{remote.LOG}"))
    return [json.loads(line) for log in logs for line in log.read_text().splitlines()]


def same_files(a: Path, b: Path) -> bool:
    return all((a / CIFAR.folder / f).read_bytes() == (b / CIFAR.folder / f).read_bytes() for f in CIFAR_FILES)


# -- the driver's check -------------------------------------------------------------------------
def test_check_names_the_uri_and_what_is_missing(tmp_path, bucket_uri, monkeypatch):
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    shown = bucket_uri  # no credentials in it: shown as given
    with pytest.raises(SweeperError) as e:
        data.check_data("cifar10", bucket_uri)
    assert str(e.value) == f"data_root: {shown} holds no cifar10 data: it lacks cifar-10-batches-py/"
    partial = tiny_cifar(tmp_path / "partial")
    (partial / CIFAR.folder / "test_batch").unlink()
    (partial / CIFAR.folder / "data_batch_3").unlink()
    upload(partial, bucket_uri)
    with pytest.raises(SweeperError, match=r"it lacks cifar-10-batches-py/data_batch_3, cifar-10-batches-py/test_batch$"):
        data.check_data("cifar10", bucket_uri)
    with pytest.raises(SweeperError, match=r"holds no imagenet224 data: it lacks train/, val/ "
                                           r"\(nor imagenet/train/, imagenet/val/\)$"):
        data.check_data("imagenet224", bucket_uri)
    assert not (tmp_path / "cache").exists()  # checking copies nothing
    # credentials written into a URI never reach the message
    secret = bucket_uri.replace("s3://", "s3://KEYID:SECRETKEY@")
    with pytest.raises(SweeperError) as e:
        data.check_data("cifar100", secret)
    assert "SECRETKEY" not in str(e.value) and "KEYID" not in str(e.value)


def test_run_refuses_a_prefix_without_the_layout_before_any_trial(tmp_path, bucket_uri):
    study = tmp_path / "c.py"
    study.write_text("from sweeper import Study\nstudy = Study(name='c', dataset='cifar10', axes={'seed': [0]})\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), remote.CACHE_ENV: str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "run", str(study), "--store", str(tmp_path / "store"),
                        "--data-root", under(bucket_uri, "nothing-here")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"sweeper: error: data_root: {under(bucket_uri, 'nothing-here')} holds no cifar10 data: "
        "it lacks cifar-10-batches-py/"]
    assert not (tmp_path / "store" / "c").exists() and not (tmp_path / "cache").exists()


# -- one copy per node ----------------------------------------------------------------------------
RACER = textwrap.dedent('''
    import os, sys, time
    from sweeper.data import require_root
    uri, ready, go = sys.argv[1:4]
    open(ready, "w").close()
    while not os.path.exists(go):  # a start line: every racer asks at the same moment
        time.sleep(0.001)
    print(require_root("cifar10", uri))
''')


def test_racing_processes_copy_once(tmp_path, remote_cifar):
    uri, local = remote_cifar
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), remote.CACHE_ENV: str(cache)}
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, uri, str(tmp_path / f"ready{i}"), str(go)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(4)]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready*"))) < 4 and time.time() < deadline:  # all imported, waiting
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=120) for p in racers]
    assert all(p.returncode == 0 for p in racers), [o[1][-2000:] for o in outs]
    roots = {o[0].strip() for o in outs}
    assert len(roots) == 1
    root = Path(roots.pop())
    assert root.parent.parent == cache / "data" and same_files(root, local)
    copies = log_lines(cache)
    assert len(copies) == 1 and copies[0]["files"] == 6  # four asked, one copied
    assert (root / remote.MARKER).is_file() and not list(root.parent.glob(".partial-*"))
    # and the copy serves the in-memory loader: the same arrays as the local root
    x, y, xt, yt = cifar._cifar_loader(CIFAR)(root, False)
    lx, ly, lxt, lyt = cifar._cifar_loader(CIFAR)(local, False)
    assert x.shape == (300, 3, 32, 32) and (x == lx).all() and (yt == lyt).all()


def test_racing_threads_copy_once(tmp_path, remote_cifar, monkeypatch):
    uri, local = remote_cifar
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    start = threading.Barrier(4)
    roots = []

    def ask():
        start.wait()
        roots.append(remote.fetch(uri, data.DATASETS["cifar10"].remote, "CIFAR-10"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(roots)) == 1 and len(roots) == 4
    assert len(log_lines(tmp_path / "cache")) == 1


def test_a_half_finished_copy_is_redone(tmp_path, remote_cifar, monkeypatch):
    uri, local = remote_cifar
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    layout = data.DATASETS["cifar10"].remote[0]
    target = remote.cache_dir(uri) / remote.unit_name(layout)
    # What a copier killed mid-way leaves: its scratch folder, and (killed between an older
    # version's rename and marker) a folder in place without the marker, one file cut short.
    scratch = target.parent / f".partial-{target.name}-deadbeef"
    (scratch / CIFAR.folder).mkdir(parents=True)
    (scratch / CIFAR.folder / "data_batch_1").write_bytes(b"half")
    tiny_cifar(target)
    cut = target / CIFAR.folder / "test_batch"
    cut.write_bytes(cut.read_bytes()[:100])
    root = data.require_root("cifar10", uri)
    assert root == target and same_files(root, local)
    assert not scratch.exists() and (root / remote.MARKER).is_file()
    assert len(log_lines(tmp_path / "cache")) == 1
    # a complete copy is reused without asking the server
    def no_server(uri):
        raise AssertionError("asked the server")

    monkeypatch.setattr(remote, "_open", no_server)
    assert data.require_root("cifar10", uri) == root
    assert len(log_lines(tmp_path / "cache")) == 1


KILLED = textwrap.dedent('''
    import sys, time
    import pyarrow.fs as pafs
    from sweeper.data import require_root

    real = pafs.copy_files

    def slow(*args, **kwargs):  # the copier gets one file across, then is killed in the middle
        real(*args, **kwargs)
        print("one file copied", flush=True)
        time.sleep(600)

    pafs.copy_files = slow
    require_root("cifar10", sys.argv[1])
''')


def test_a_copier_killed_mid_copy_leaves_nothing_that_looks_complete(tmp_path, remote_cifar, monkeypatch):
    uri, local = remote_cifar
    cache = tmp_path / "cache"
    monkeypatch.setenv(remote.CACHE_ENV, str(cache))
    victim = subprocess.Popen([sys.executable, "-c", KILLED, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert victim.stdout.readline().strip() == "one file copied", victim.stderr.read()
    finally:
        victim.kill()
        victim.wait()
    target = remote.cache_dir(uri) / remote.unit_name(data.DATASETS["cifar10"].remote[0])
    assert not target.exists() and len(list(target.parent.glob(".partial-*"))) == 1  # its scratch folder
    root = data.require_root("cifar10", uri)  # the lock died with it: copied again, whole
    assert root == target and same_files(root, local) and (root / remote.MARKER).is_file()
    assert not list(target.parent.glob(".partial-*")) and len(log_lines(cache)) == 1


def test_copy_needs_room_on_disk(tmp_path, remote_cifar, monkeypatch):
    import shutil

    uri, _ = remote_cifar
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(SweeperError, match=r"needs 1.1 MB; 0.0 MB are free \(set SWEEPER_CACHE"):
        data.require_root("cifar10", uri)
    assert not [p for p in (tmp_path / "cache" / "data").glob("*/*") if p.is_dir()]  # no copy, no scratch


def test_imagenet_folders_under_a_prefix(tmp_path, bucket_uri, monkeypatch):
    """An ImageFolder root in its `imagenet/` folder: checked, copied (train/ and val/ only), read."""
    from test_data import image_folder

    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    local = tmp_path / "local"
    image_folder(local / "imagenet")
    (local / "unrelated").mkdir()
    (local / "unrelated" / "big.bin").write_bytes(b"not copied")
    upload(local, bucket_uri)
    data.check_data("imagenet224", bucket_uri)
    root = data.require_root("imagenet", bucket_uri)
    assert sorted(p.name for p in root.iterdir()) == [remote.MARKER, "imagenet"]
    assert data.require_root("imagenet224", bucket_uri) == root  # one copy serves both datasets
    x_tr, y_tr, x_te, y_te = data.load_arrays("imagenet", bucket_uri)
    lx, ly, lxt, lyt = imagenet._load_imagenet(local, False)
    assert x_tr.shape == (12, 3, 64, 64) and (x_tr == lx).all() and (y_te == lyt).all()
    assert [c["files"] for c in log_lines(tmp_path / "cache")] == [18]


# -- the CIFAR download, once per node ------------------------------------------------------------
def test_concurrent_loads_download_once(tmp_path, monkeypatch):
    """Two trials on one node load CIFAR-10 from an empty local root at once: one downloads
    (from a loopback HTTP server standing in for the dataset's host), the other waits and reads."""
    import dataclasses
    import functools
    import http.server

    from test_data import fake_cifar_archive

    archive, md5 = fake_cifar_archive(tmp_path)
    gets = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            gets.append(self.path)
            time.sleep(0.3)  # a slow network: the second loader arrives while the first downloads
            super().do_GET()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        layout = dataclasses.replace(CIFAR, url=f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", md5=md5)
        load = cifar._cifar_loader(layout)
        load(tmp_path / "alone", True)  # what one download asks of the server (torchvision probes for redirects)
        one_download, gets[:] = list(gets), []
        root = tmp_path / "root"
        start = threading.Barrier(2)
        shapes, errors = [], []

        def trial():
            start.wait()
            try:
                shapes.append(tuple(load(root, True)[0].shape))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=trial) for _ in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        server.shutdown()
        server.server_close()
    assert not errors and shapes == [(100, 3, 32, 32)] * 2
    assert gets == one_download and one_download  # one download for two loads
    assert sorted(p.name for p in root.iterdir()) == [f".{CIFAR.folder}.lock", CIFAR.folder]  # no scratch left


# -- a real two-node cluster ----------------------------------------------------------------------
CLUSTER = textwrap.dedent(r'''
    import json, os, sys
    from ray.cluster_utils import Cluster
    from sweeper.cli import main

    tmp, uri, study = sys.argv[1:4]
    # The head runs no trial; each worker node has 2 CPUs and its own cache folder, as the nodes of
    # a real cluster have their own disks (a raylet's workers inherit the environment it starts with).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "dashboard_agent_listen_port": None})
    nodes = []
    for i in range(2):
        os.environ["SWEEPER_CACHE"] = os.path.join(tmp, f"node{i}")
        nodes.append(cluster.add_node(num_cpus=2))
    cluster.wait_for_nodes()
    os.environ["SWEEPER_CACHE"] = os.path.join(tmp, "driver")
    try:
        code = main(["run", study, "--address", cluster.address, "--store", os.path.join(tmp, "store"),
                     "--data-root", uri, "--no-figures"])
    finally:
        import ray
        ray.shutdown()
        cluster.shutdown()
    print("RESULT " + json.dumps({"code": code, "nodes": [n.node_id for n in nodes]}))
''')


def test_two_nodes_copy_once_each_and_match_local_disk(tmp_path, remote_cifar):
    uri, local = remote_cifar
    study = tmp_path / "tiny.py"
    study.write_text(textwrap.dedent('''
        from sweeper import Study
        study = Study(name="tiny", dataset="cifar10", axes={"seed": [0, 1, 2, 3]},
                      recipe={"model": "resnet-8-4", "epochs": 1, "train_size": 200, "test_size": 100,
                              "batch_size": 50}, resources={"cpu": 1})
    '''))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-c", CLUSTER, str(tmp_path), uri, str(study)], capture_output=True,
                       text=True, env=env, timeout=600, cwd=tmp_path)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["code"] == 0, r.stdout[-3000:]
    trials = pd.read_parquet(tmp_path / "store" / "tiny" / "trials")
    assert len(trials) == 4 and set(trials["status"]) == {"done"}
    assert trials["node_id"].value_counts().sort_index().tolist() == [2, 2]  # two trials per node
    assert set(trials["node_id"]) == set(out["nodes"])
    for i in range(2):  # each node copied once, though two trials on it asked
        copies = log_lines(tmp_path / f"node{i}")
        assert len(copies) == 1 and copies[0]["files"] == 6, copies
    assert not (tmp_path / "driver").exists()  # the driver only checked the prefix
    # the same trials from the same data on local disk give the same numbers
    from sweeper.study import load_study
    from sweeper.experiments.train.loop import run_trial

    for spec in load_study(study).specs():
        row = trials.set_index("trial_id").loc[spec.trial_id]
        ref = run_trial(spec, str(local), threads=1).row
        for key in ("test_acc", "test_loss", "train_loss", "train_acc"):
            assert row[key] == ref[key], (spec.seed, key, row[key], ref[key])
