"""The quickstart sweep to a local store against the same sweep to an S3 store, side by side.

    flock /tmp/sweeper-heavy.lock .venv/bin/python benchmarks/s3_store.py [--pairs 2] [--study studies/quickstart.py]

The S3 store is moto's server (`moto_server`, a separate process on a free loopback port): the
S3 protocol and pyarrow's client are real, the network and the object store's latency are not.
Each pair runs `sweeper run STUDY --quick --store X` (figures included, as a user runs it) once to
a fresh local folder and once to a fresh bucket, alternating which goes first; every run starts
its own embedded Ray cluster. Per run: wall time, files/objects written, bytes, and for S3 the
HTTP requests the server answered. Prints one JSON object.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

REPO = Path(__file__).resolve().parents[1]
p = argparse.ArgumentParser()
p.add_argument("--pairs", type=int, default=2)
p.add_argument("--study", default=str(REPO / "studies" / "quickstart.py"))
a = p.parse_args()

env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "RAY_AUTH_MODE": "disabled"}
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
endpoint = f"127.0.0.1:{port}"
work = Path(tempfile.mkdtemp(prefix="s3bench-"))
log = open(work / "moto.log", "w")
server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                          stdout=log, stderr=subprocess.STDOUT, env=env)
fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="testing", secret_key="testing",
                       allow_bucket_creation=True)
for _ in range(100):
    try:
        fs.get_file_info("probe")
        break
    except OSError:
        time.sleep(0.1)


def requests_so_far() -> int:
    log.flush()
    return sum("HTTP/1.1" in line for line in (work / "moto.log").read_text().splitlines())


def run(kind: str, n: int) -> dict:
    if kind == "local":
        store = str(work / f"local-{n}")
    else:
        fs.create_dir(f"bench-{n}")
        store = f"s3://bench-{n}/sweeps?endpoint_override={endpoint}&scheme=http"
    before = requests_so_far()
    t0 = time.perf_counter()
    r = subprocess.run([str(Path(sys.executable).parent / "sweeper"), "run", a.study, "--quick", "--store", store],
                       capture_output=True, text=True, env=env, cwd=work)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    if kind == "local":
        files = [f for f in Path(store).rglob("*") if f.is_file()]
        count, size = len(files), sum(f.stat().st_size for f in files)
    else:
        infos = [i for i in fs.get_file_info(pafs.FileSelector(f"bench-{n}", recursive=True)) if i.type == pafs.FileType.File]
        count, size = len(infos), sum(i.size for i in infos)
    out = {"kind": kind, "wall_s": round(wall, 2), "files": count, "bytes": size}
    if kind == "s3":
        out["requests"] = requests_so_far() - before
    return out


runs = []
try:
    for n in range(a.pairs):
        for kind in (("local", "s3") if n % 2 == 0 else ("s3", "local")):
            runs.append(run(kind, n))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
finally:
    server.terminate()
    server.wait()
    shutil.rmtree(work, ignore_errors=True)
summary = {k: {"median_wall_s": round(statistics.median(r["wall_s"] for r in runs if r["kind"] == k), 2)}
           for k in ("local", "s3")}
print(json.dumps({"study": a.study, "pairs": a.pairs, "runs": runs, "summary": summary,
                  "load_avg": os.getloadavg()}, indent=1))
