"""An S3 store end to end, against moto's S3 server (conftest's `s3_server`): the quickstart sweep
through the real CLI, on the embedded cluster and on a two-node `ray.cluster_utils.Cluster` (where
a trial whose node dies resumes from its checkpoint in the bucket); the server stopped mid-sweep;
nightly's lock on S3; `status`, `figures` and `sweeper.load` reading the bucket; and bad input
(no bucket, a missing bucket, wrong or missing credentials, a dead endpoint) refused up front.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
import requests

import sweeper
from sweeper.errors import SweeperError
from sweeper.nightly.lock import LOCK, Holder
from sweeper.nightly.run import EXIT_LOCKED, EXIT_OK
from sweeper.report.layout import REPORTS
from sweeper.store import RetryingS3FileSystem, Store

from conftest import REPO, sweeper_in_process

QUICKSTART = str(REPO / "studies" / "quickstart.py")
QUICK_STUDY = "quickstart-quick"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}

TINY = """\
from sweeper import Study

study = Study(name={name!r}, dataset="digits", axes={{"seed": {seeds!r}}},
              recipe={{"model": {model!r}, "epochs": {epochs}, "augment": "none", "batch_size": 32}},
              measure=[], figures=["accuracy_vs_bn_params"])
"""


def tiny_study(folder: Path, name: str, seeds=(0, 1), model="resnet-8-4", epochs=1) -> Path:
    path = folder / f"{name}.py"
    path.write_text(TINY.format(name=name, seeds=list(seeds), model=model, epochs=epochs))
    return path


def s3fs(endpoint: str) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="testing",
                             secret_key="testing", region="us-east-1")


def objects(endpoint: str, bucket: str) -> list[str]:
    """Every object key in the bucket (not the folders pyarrow infers from them)."""
    infos = s3fs(endpoint).get_file_info(pafs.FileSelector(bucket, recursive=True, allow_not_found=True))
    return sorted(i.path[len(bucket) + 1:] for i in infos if i.type == pafs.FileType.File)


def run_cli(*argv: str) -> tuple[int, str, str]:
    r = sweeper_in_process(*argv)
    return r.returncode, r.stdout, r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the quickstart sweep on the embedded cluster ---------------------------------------------------
@pytest.fixture(scope="module")
def quickstart(ray_local, s3_server, tmp_path_factory):
    """`sweeper run studies/quickstart.py --quick --store s3://BUCKET/sweeps`, twice, with the
    endpoint in AWS_ENDPOINT_URL_S3 on the driver only: the session's Ray workers started before it
    was set, so they reach the bucket through the store URI the trials carry."""
    bucket = "quickstart-" + os.urandom(4).hex()
    s3_server.create_bucket(bucket)
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_S3", f"http://{s3_server.endpoint}")
        mp.chdir(cwd)
        uri = f"s3://{bucket}/sweeps"
        assert Store(uri).uri == f"{uri}?endpoint_override={s3_server.endpoint}&scheme=http"
        started = time.perf_counter()
        first = run_cli("run", QUICKSTART, "--quick", "--store", uri)
        seconds = time.perf_counter() - started
        after_first = objects(s3_server.endpoint, bucket)
        second = run_cli("run", QUICKSTART, "--quick", "--store", uri)
        after_second = objects(s3_server.endpoint, bucket)
    return dict(bucket=bucket, cwd=cwd, first=first, second=second, seconds=seconds,
                after_first=after_first, after_second=after_second, uri=s3_server.uri(bucket, "sweeps"))


def test_quickstart_sweep_writes_everything_to_the_bucket(quickstart):
    code, out, err = quickstart["first"]
    assert code == 0, out + err
    keys = quickstart["after_first"]
    prefix = f"sweeps/{QUICK_STUDY}"
    trial_ids = sorted(k.rsplit("/", 1)[1][: -len(".parquet")] for k in keys if k.startswith(f"{prefix}/trials/"))
    assert len(trial_ids) == 3
    for table in ("trials", "curves", "bn"):  # every table, one file per trial
        assert sorted(k for k in keys if k.startswith(f"{prefix}/{table}/")) == \
            [f"{prefix}/{table}/{t}.parquet" for t in trial_ids]
    assert "sweeps/_sweeper.json" in keys
    # Tune's experiment state and each trial's folder are in the bucket, not in ~/ray_results.
    tune = [k for k in keys if k.startswith(f"{prefix}/_tune/")]
    assert any(k.rsplit("/", 1)[1].startswith("experiment_state") for k in tune)
    assert {t for t in trial_ids if any(f"/{t}/result.json" in k for k in tune)} == set(trial_ids)
    home = Path.home() / "ray_results"
    assert not [p for t in trial_ids for p in home.glob(f"*/{t}")]
    # Figures: drawn into a local folder named after the store (said so), copied to the bucket.
    local = quickstart["cwd"] / "figures" / quickstart["bucket"] / "sweeps" / QUICK_STUDY
    assert (local / "accuracy_vs_bn_params.png").is_file()
    assert f"drawn locally in {local}" in out and f"s3://{quickstart['bucket']}/{prefix}/figures" in out
    assert f"{prefix}/figures/accuracy_vs_bn_params.png" in keys
    assert not (quickstart["cwd"] / quickstart["bucket"]).exists()
    assert f"results in s3://{quickstart['bucket']}/{prefix}" in out


def test_a_rerun_skips_every_trial(quickstart):
    code, out, err = quickstart["second"]
    assert code == 0, out + err
    assert "3 of 3 trials already in the store; skipped" in out
    assert "0 ran and done" in out
    trials = [k for k in quickstart["after_second"] if "/trials/" in k]
    assert trials == [k for k in quickstart["after_first"] if "/trials/" in k]


def test_status_figures_and_load_read_the_bucket(quickstart, tmp_path, monkeypatch):
    uri = quickstart["uri"]
    code, out, err = run_cli("status", uri, "--json")
    assert code == 0, err
    (row,) = json.loads(out)["studies"]
    assert (row["study"], row["done"], row["failed"], row["corrupt"]) == (QUICK_STUDY, 3, 0, 0)
    # counted over the plan the run recorded in the bucket: all of it done, nothing else there
    assert (row["plan"], row["missing"], row["other"], row["left_out"]) == ("last run", 0, 0, [])

    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("figures", uri)  # no --out: a local folder named after the store
    assert code == 0, err
    local = tmp_path / "figures" / quickstart["bucket"] / "sweeps" / QUICK_STUDY
    assert (local / "accuracy_vs_bn_params.png").is_file() and f"drawn locally in {local}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]  # nothing named after the bucket

    code, out, err = run_cli("figures", uri, "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert (tmp_path / "out" / QUICK_STUDY / "accuracy_vs_bn_params.png").is_file()

    trials = sweeper.load(uri)
    assert len(trials) == 3 and set(trials["status"]) == {"done"} and set(trials["study"]) == {QUICK_STUDY}
    bn = sweeper.load(uri, QUICK_STUDY, "bn")
    assert set(bn["trial_id"]) == set(trials["trial_id"]) and bn["gamma"].notna().all()


def test_the_notebook_reads_the_bucket(quickstart, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = REPO / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    env = {"SWEEPER_STORE": quickstart["uri"], "SWEEPER_STUDY": QUICK_STUDY}
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this process's environment
        for k, v in env.items():
            mp.setenv(k, v)
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 2
    assert (tmp_path / "figures" / quickstart["bucket"] / "sweeps" / QUICK_STUDY / "accuracy_vs_bn_params.png").is_file()


# -- a two-node cluster ------------------------------------------------------------------------------
CLUSTER_SCRIPT = textwrap.dedent(r'''
    import json, socket, sys, threading, time
    import pyarrow.fs as pafs
    from ray.cluster_utils import Cluster
    from sweeper.cli import main
    from sweeper.store import Store

    uri, spread, lost = sys.argv[1:4]
    store = Store(uri)
    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    # The head runs no trial; free ports only (no dashboard, no default agent port).
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "dashboard_agent_listen_port": free_port()})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    run = lambda path, *flags: main(["run", path, "--store", uri, "--address", cluster.address, "--no-figures", *flags])
    out = {"workers": [w.node_id for w in workers]}
    try:
        out["spread"] = run(spread)
        out["again"] = run(spread)
        box = {}
        t = threading.Thread(target=lambda: box.update(code=run(lost, "--checkpoint-seconds", "0", "--max-failures", "3")))
        t.start()
        killed, deadline = None, time.time() + 300
        while killed is None and time.time() < deadline and t.is_alive():
            sel = pafs.FileSelector(store.path("lost", "_tune"), recursive=True, allow_not_found=True)
            infos = store.fs.get_file_info(sel)
            for info in infos:
                # a checkpoint names the node that wrote it: the node the trial runs on (Tune's
                # result.json reaches the bucket only at its periodic sync)
                if info.base_name == ".metadata.json" and "/checkpoint_" in info.path:
                    try:
                        with store.fs.open_input_stream(info.path) as f:
                            node = json.loads(f.read().decode())["node_id"]
                    except (OSError, ValueError, KeyError):  # deleted as a newer one landed
                        continue
                    cluster.remove_node([w for w in workers if w.node_id == node][0], allow_graceful=False)
                    killed = node
                    break
            time.sleep(0.3)
        t.join()
        out.update(lost=box.get("code"), killed=killed)
    finally:
        cluster.shutdown()
    print("RESULT " + json.dumps(out))
''')


def test_two_node_cluster_sweeps_to_the_bucket_and_resumes_a_lost_trial(s3_server, s3_store, tmp_path):
    spread = tiny_study(tmp_path, "spread", seeds=[0, 1, 2, 3], epochs=2)
    lost = tiny_study(tmp_path, "lost", seeds=[0], model="resnet-14-8", epochs=8)
    r = subprocess.run([sys.executable, "-c", CLUSTER_SCRIPT, s3_store, str(spread), str(lost)],
                       capture_output=True, text=True, env=ENV, timeout=600, cwd=tmp_path)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["spread"] == 0 and out["again"] == 0 and out["lost"] == 0, r.stdout[-3000:]
    assert "spread: 4 of 4 trials already in the store; skipped" in r.stdout

    trials = sweeper.load(s3_store, "spread")
    assert len(trials) == 4 and set(trials["status"]) == {"done"}
    assert set(trials["node_id"]) == set(out["workers"])  # both nodes ran trials, both reached the bucket

    assert out["killed"] is not None, "the node running the trial was never killed"
    (row,) = sweeper.load(s3_store, "lost").to_dict("records")
    assert row["status"] == "done" and row["node_id"] != out["killed"] and row["node_id"] in out["workers"]
    assert row["resumed_from_epoch"] >= 1  # from the checkpoint in the bucket, not from scratch
    curves = sweeper.load(s3_store, "lost", "curves")
    assert list(curves["epoch"]) == list(range(1, 9))  # every epoch exactly once


# -- the S3 server stopped mid-sweep --------------------------------------------------------------------
def test_a_few_seconds_of_s3_outage_lose_and_double_nothing(ray_local, tmp_path):
    """moto keeps its buckets in this process across a stop and a start on the same port. With no
    trial retries allowed (--max-failures 0), every trial must still end done: the writes that met
    the outage were retried, not failed. (With pyarrow's default of 3 tries the same run lost
    writes here, and only Tune's trial retries saved the results.)"""
    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir("outage")
    uri = f"s3://outage/sweeps?endpoint_override={endpoint}&scheme=http"
    study = tiny_study(tmp_path, "outage", seeds=[0, 1, 2, 3, 4], epochs=3)
    box: dict = {}
    sweep = threading.Thread(target=lambda: box.update(result=run_cli(
        "run", str(study), "--store", uri, "--no-figures", "--checkpoint-seconds", "0", "--max-failures", "0")))
    outage = None
    try:
        sweep.start()
        deadline = time.time() + 300
        while sweep.is_alive() and time.time() < deadline:
            if len([k for k in objects(endpoint, "outage") if "/trials/" in k]) >= 2:
                break
            time.sleep(0.2)
        assert sweep.is_alive(), "the sweep ended before the outage"
        server.stop()  # connections are refused from here on
        stopped = time.time()
        time.sleep(5)
        assert sweep.is_alive(), "the sweep ended during the outage: nothing met it"
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        outage = time.time() - stopped
        sweep.join(timeout=300)
        keys = objects(endpoint, "outage")
    finally:
        server.stop()
    assert outage is not None and outage >= 5
    code, out, err = box["result"]
    assert code == 0, out[-3000:] + err[-3000:]
    trials = [k for k in keys if k.startswith("sweeps/outage/trials/")]
    curves = [k for k in keys if k.startswith("sweeps/outage/curves/")]
    assert len(trials) == 5 and [k.replace("/curves/", "/trials/") for k in curves] == trials
    assert "5 ran and done, 0 failed, 0 missing" in out


# -- nightly on S3 ----------------------------------------------------------------------------------
def test_nightly_lock_on_s3_second_exits_3_and_stale_lock_is_taken_over(ray_local, s3_server, s3_store, tmp_path):
    study = tiny_study(tmp_path, "night", seeds=[0, 1], epochs=2)
    store = Store(s3_store)
    lock_key = store.path(REPORTS, LOCK)
    gcs = ray_local.get_runtime_context().gcs_address
    first = subprocess.Popen([sys.executable, "-m", "sweeper.cli", "nightly", str(study), "--store", s3_store,
                              "--address", gcs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=ENV, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while not store.exists(lock_key) and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert store.exists(lock_key), "the first nightly never took the lock"
        code, out, err = run_cli("nightly", str(study), "--store", s3_store)
        assert code == EXIT_LOCKED
        assert f"another nightly holds the lock {store.url(REPORTS, LOCK)} (pid {first.pid} " in err
        assert len(err.strip().splitlines()) == 1
        log, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == EXIT_OK, log[-3000:]
    assert not store.exists(lock_key)  # released
    (report,) = [i.base_name for i in store.fs.get_file_info(pafs.FileSelector(store.path(REPORTS)))
                 if i.type == pafs.FileType.Directory]
    for name in ("report.md", "report.html", "summary.json", "snapshot.parquet",
                 "figures/night/accuracy_vs_bn_params.png"):
        assert store.exists(store.path(REPORTS, report, name)), name
    assert store.exists(store.path("night", "figures", "accuracy_vs_bn_params.png"))

    # A lock left by a nightly that died on this host: the next one takes it over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Holder(dead.pid, socket.gethostname(), "2020-01-01T00:00:00+00:00", "deadbeef", None, "sweeper nightly")
    store.write_bytes(lock_key, stale.dumps())
    code, out, err = run_cli("nightly", str(study), "--store", s3_store)
    assert code == EXIT_OK, out[-3000:] + err
    assert f"took over the stale lock {store.url(REPORTS, LOCK)} (pid {dead.pid} on" in out
    assert not store.exists(lock_key)


# -- bad input, refused before any trial ----------------------------------------------------------------
@contextlib.contextmanager
def moto_checks_signatures(s3_server):
    """moto's own switch: from now on it checks each request's signature against its IAM users."""
    url = f"http://{s3_server.endpoint}/moto-api/reset-auth"
    previous = requests.post(url, data=b"0", timeout=10).json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
    try:
        yield
    finally:
        requests.post(url, data=previous.encode(), timeout=10)


@pytest.mark.parametrize("case", ["no bucket", "missing bucket", "invalid credentials", "missing credentials",
                                  "dead endpoint"])
def test_bad_store_refused_up_front_in_one_line(case, s3_server, s3_store, tmp_path, monkeypatch):
    study = tiny_study(tmp_path, "bad")
    bucket = s3_store.split("://", 1)[1].split("/", 1)[0]
    monkeypatch.chdir(tmp_path)
    expect = {"no bucket": "s3:// URI names no bucket", "missing bucket": "bucket 'no-such-bucket' does not exist",
              "invalid credentials": f"access to bucket {bucket!r}", "missing credentials": "no AWS credentials found",
              "dead endpoint": "cannot reach http://127.0.0.1:"}[case]
    uri = {"no bucket": "s3://", "missing bucket": s3_server.uri("no-such-bucket", "sweeps"),
           "dead endpoint": f"s3://{bucket}/sweeps?endpoint_override=127.0.0.1:{free_port()}&scheme=http"}.get(case, s3_store)
    with contextlib.ExitStack() as stack:
        if case in ("invalid credentials", "missing credentials"):
            stack.enter_context(moto_checks_signatures(s3_server))  # "testing" is no key moto's IAM knows
        if case == "missing credentials":
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
                monkeypatch.delenv(key, raising=False)
            monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
            monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        for command in (["run", str(study)], ["nightly", str(study)]):
            started = time.perf_counter()
            code, out, err = run_cli(*command, "--store", uri)
            assert time.perf_counter() - started < 10  # seconds, not a minute of retries
            assert code == 2 and out == "", out + err
            assert len(err.strip().splitlines()) == 1 and "--store" in err and expect in err, err
    assert objects(s3_server.endpoint, bucket) == []  # nothing written
    assert s3fs(s3_server.endpoint).get_file_info("no-such-bucket").type == pafs.FileType.NotFound
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.py"]  # nor any local folder


# -- endpoint and credentials the standard AWS ways ---------------------------------------------------------
def test_profile_credentials_and_endpoint_from_the_environment(s3_server, s3_store, tmp_path, monkeypatch):
    """With moto checking signatures: keys from AWS_PROFILE open the store, wrong ones are refused;
    the endpoint comes from AWS_ENDPOINT_URL and lands in the store's URI for the workers."""
    import boto3

    iam = boto3.client("iam", endpoint_url=f"http://{s3_server.endpoint}", region_name="us-east-1")
    user = "sweeper-" + os.urandom(3).hex()
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[sweeper]\naws_access_key_id = {key['AccessKeyId']}\n"
                           f"aws_secret_access_key = {key['SecretAccessKey']}\n"
                           f"[wrong]\naws_access_key_id = {key['AccessKeyId']}\naws_secret_access_key = nope\n")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3_server.endpoint}")
    plain = s3_store.split("?", 1)[0]  # s3://BUCKET/sweeps: the endpoint from the environment
    with moto_checks_signatures(s3_server):
        monkeypatch.setenv("AWS_PROFILE", "sweeper")
        store = Store(plain)
        assert store.uri == f"{plain}?endpoint_override={s3_server.endpoint}&scheme=http"
        store.ensure_writable()
        assert store.schema_version() == 1
        monkeypatch.setenv("AWS_PROFILE", "wrong")
        with pytest.raises(SweeperError, match="denied .*AWS_PROFILE=wrong"):
            Store(plain).ensure_writable()
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert Store(store.uri).exists(store.path("_sweeper.json"))  # the URI alone finds it again


def test_the_retry_strategy_survives_pickling():
    """Ray Tune pickles the storage filesystem to every trial; pyarrow's own pickling drops it."""
    fs = Store("s3://b/p?endpoint_override=127.0.0.1:9&scheme=http").fs
    again = pickle.loads(pickle.dumps(fs))
    assert isinstance(again, RetryingS3FileSystem) and again.attempts == fs.attempts > 3
    assert again.options == fs.options and again.options["endpoint_override"] == "127.0.0.1:9"
