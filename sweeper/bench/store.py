"""A store that grew for months (issue 19): a generated study of N finished trials with their `bn`
tables, measured before and after `sweeper compact`, on a local folder and on an S3 server (moto's,
in this process, counting the requests it answers), side by side in one run.

Each measurement runs in a fresh interpreter (wall time as a user sees it, and its peak RSS):
  figures   `sweeper figures STORE --out TMP`: every figure of the study
  status    `sweeper status STORE --json`
  load_bn   `sweeper.load(STORE, STUDY, "bn", columns=["trial_id", "gamma"], categorical=["trial_id"])`:
            one column pair of every trial, as README's notebook reads it
  compact   `sweeper compact STORE`

The `bn` table: one row per BN channel with γ and β. ResNet-218 has 8,176 channels, the size the
issue asks for (ResNet-110's 8,288 BN parameters are γ and β of 4,144 channels), and is the model
of the 1,000-trial figure benchmark (bench/figures.py), so the two compare.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from sweeper.bench.figures import _run_measured, generate_store

STUDY = "bench-store"
MODEL = "resnet-218"



FAKE_AWS = (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"), ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"))  # the S3 test server takes any credentials


def _measured(*args: str, requests: Callable[[], int] | None = None) -> dict[str, Any]:
    """bench.figures' measurement in a fresh interpreter (wall time, peak memory), with the S3
    test server's requests counted around it."""
    before = requests() if requests else 0
    got = _run_measured(*args, env={key: os.environ.get(key, value) for key, value in FAKE_AWS})
    out = {"seconds": got["wall_s"], "peak_rss_gb": round(got["peak_rss_mb"] / 1024, 3), "stdout": got["stdout"]}
    if requests:
        out["requests"] = requests() - before
    return out


def count_files(store, study: str = STUDY) -> int:
    """The study's Parquet files: own files and compacted parts of every table."""
    return sum(len(store.file_infos(study, t)) + len(store.file_infos(study, t, parts=True))
               for t in store.tables(study))


def measure_state(uri: str, requests: Callable[[], int] | None = None) -> dict[str, Any]:
    """figures, status and load_bn on the store as it is now."""
    from sweeper.store import Store

    out: dict[str, Any] = {"files": count_files(Store(uri))}
    folder = tempfile.mkdtemp(prefix="sweeper-bench-figs-")
    try:
        figures = _measured("cli", "figures", uri, "--out", folder, requests=requests)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    status = _measured("cli", "status", uri, "--json", requests=requests)
    # as README's notebook reads `bn`: trial_id as a categorical (82 million strings otherwise)
    load_bn = _measured("load", uri, STUDY, "bn", json.dumps(["trial_id", "gamma"]), json.dumps(["trial_id"]),
                        requests=requests)
    done = json.loads(status["stdout"])["studies"][0]["done"]
    out.update({"figures_seconds": figures["seconds"], "figures_drawn": figures["stdout"].count("drew "),
                "status_seconds": status["seconds"], "status_done": done,
                "load_bn_seconds": load_bn["seconds"], "load_bn_rows": int(load_bn["stdout"].split("rows ")[1]),
                "peak_rss_gb": max(figures["peak_rss_gb"], status["peak_rss_gb"], load_bn["peak_rss_gb"]),
                "peak_rss_gb_each": {"figures": figures["peak_rss_gb"], "status": status["peak_rss_gb"],
                                     "load_bn": load_bn["peak_rss_gb"]}})
    if requests:
        out["requests"] = {"figures": figures["requests"], "status": status["requests"], "load_bn": load_bn["requests"]}
    return out


def compacting(uri: str, requests: Callable[[], int] | None = None) -> dict[str, Any]:
    """`sweeper compact` on the store, measured, and the compacted store's reads."""
    from sweeper.store import Store

    before = count_files(Store(uri))
    compact = _measured("cli", "compact", uri, requests=requests)
    out = {"files_before": before, "files_after": count_files(Store(uri)), "compact_seconds": compact["seconds"],
           "compact_peak_rss_gb": compact["peak_rss_gb"]}
    if requests:
        out["compact_requests"] = compact["requests"]
    out["compacted"] = measure_state(uri, requests)
    return out


class _CountingS3:
    """moto's S3 server in this process, counting the HTTP requests it answers."""

    def __init__(self):
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
        for key, value in FAKE_AWS:
            os.environ.setdefault(key, value)
        from moto.server import DomainDispatcherApplication, ThreadedMotoServer, create_backend_app
        from moto.server import MotoRequestHandler  # noqa: F401 (the handler ThreadedMotoServer uses)

        counts = self.counts = Counter()

        class Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                from werkzeug.serving import make_server

                inner = DomainDispatcherApplication(create_backend_app)

                def app(environ, start_response):
                    counts[environ.get("REQUEST_METHOD", "?")] += 1
                    return inner(environ, start_response)

                self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
                self._server_ready_event.set()
                self._server.serve_forever()

        self.server = Server(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"{host}:{port}"

    def total(self) -> int:
        return sum(self.counts.values())

    def bucket(self, name: str) -> str:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True,
                               access_key="bench", secret_key="bench", region="us-east-1")
        fs.create_dir(name)
        return f"s3://{name}/store?endpoint_override={self.endpoint}&scheme=http"

    def stop(self) -> None:
        self.server.stop()


# Above this many trials the uncompacted store is not measured on the S3 server (at 10,000 trials its
# reads are about 300,000 requests, hours on a shared 2-core machine): the S3 numbers are then the
# compacted store's alone (uploaded as compacted locally); a smaller run gives both.
S3_UNCOMPACTED_MAX = 2000


def measure_store(trials: int = 10_000, model: str = MODEL, s3: bool = True,
                  say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Generate the store; compact it and measure it; measure an uncompacted copy (hard links);
    the same on the S3 server (see S3_UNCOMPACTED_MAX)."""
    import pyarrow.fs as pafs

    from sweeper.store import Store

    root = tempfile.mkdtemp(prefix="sweeper-bench-bigstore-")
    copy = root + "-uncompacted"
    out: dict[str, Any] = {"model": model, "trials": trials}
    server = None

    def upload(folder: str, uri: str) -> float:
        t0 = time.perf_counter()
        pafs.copy_files(folder, Store(uri).root, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=Store(uri).fs, use_threads=True)
        return round(time.perf_counter() - t0, 1)

    try:
        say(f"store: generating {trials} {model} trials ...")
        gen = generate_store(root, trials=trials, model=model, study=STUDY)
        out.update({"bn_rows": gen["bn_rows"], "write_seconds": gen["write_s"]})
        shutil.copytree(root, copy, copy_function=os.link)  # the uncompacted store, kept for its reads
        if s3:
            try:
                server = _CountingS3()
            except ImportError as e:  # moto is a test dependency
                out["s3"] = f"skipped: {e}"
        s3_uncompacted = server is not None and trials <= S3_UNCOMPACTED_MAX
        if s3_uncompacted:
            uri = server.bucket("bench-store")
            out["s3_upload_seconds"] = upload(root, uri)
        say("store: compacting the local store, then its reads ...")
        local = out["local"] = {"trials": trials, **compacting(root)}
        say("__partial__ " + json.dumps(out))
        if server is not None and not s3_uncompacted:
            uri = server.bucket("bench-store")
            out["s3_upload_seconds"] = upload(root, uri)
            say("store: the compacted store's reads on S3 ...")
            out["s3"] = {"trials": trials, "files_after": count_files(Store(uri)),
                         "compacted": measure_state(uri, server.total),
                         "uncompacted": f"not measured above {S3_UNCOMPACTED_MAX} trials"}
            say("__partial__ " + json.dumps(out))
        say("store: the uncompacted copy's reads ...")
        local["uncompacted"] = measure_state(copy)
        say("__partial__ " + json.dumps(out))
        if s3_uncompacted:
            say("store: S3, uncompacted, compacting, compacted ...")
            before = measure_state(uri, server.total)
            out["s3"] = {"trials": trials, **compacting(uri, server.total), "uncompacted": before}
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
    return out


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The flat keys `sweeper bench --only store` reports: `<where>_<state>_<key>`."""
    out: dict[str, Any] = {"store_trials": result["trials"]}
    for where in ("local", "s3"):
        r = result.get(where)
        if not isinstance(r, dict):
            continue
        for key in ("files_before", "files_after", "compact_seconds", "compact_requests"):
            if key in r:
                out[f"store_{where}_{key}"] = r[key]
        for state in ("uncompacted", "compacted"):
            if not isinstance(r.get(state), dict):
                continue
            for key in ("figures_seconds", "status_seconds", "load_bn_seconds", "peak_rss_gb"):
                out[f"store_{where}_{state}_{key}"] = r[state][key]
            for key, n in r[state].get("requests", {}).items():
                out[f"store_{where}_{state}_{key}_requests"] = n
    return out
