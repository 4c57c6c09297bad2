"""Side by side on an S3 server: `sweeper figures` and `load bn` of one store with the code of two
checkouts, each in a fresh interpreter, the server counting the requests it answers.

    .venv/bin/python benchmarks/s3_before_after.py STORE STUDY OLD_CHECKOUT NEW_CHECKOUT [--rounds 1]

STORE (a local folder, e.g. one made by `sweeper bench --only store` or
`sweeper.bench.figures.generate_store` and `sweeper compact`) is uploaded once to moto's server in
this process (the bench's `_CountingS3`); a checkout is a folder with the code, e.g. `git worktree
add /tmp/old COMMIT`. Prints one line per measurement: seconds, requests, peak MB.
"""
import argparse
import os
import subprocess
import sys
import time

import pyarrow.fs as pafs

from sweeper.bench.store import _CountingS3

p = argparse.ArgumentParser()
p.add_argument("store")
p.add_argument("study")
p.add_argument("checkouts", nargs=2)
p.add_argument("--rounds", type=int, default=1)
a = p.parse_args()

s3 = _CountingS3()
uri = s3.bucket("beforeafter")
fs = pafs.S3FileSystem(endpoint_override=s3.endpoint, scheme="http", access_key="bench", secret_key="bench",
                       region="us-east-1")
t = time.time()
pafs.copy_files(a.store, "beforeafter/store", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
print(f"upload {time.time() - t:.1f} s", flush=True)
LOAD = ("import sweeper; f = sweeper.load({uri!r}, {study!r}, 'bn', columns=['trial_id', 'gamma'], "
        "categorical=['trial_id']); print('rows', len(f))")
try:
    for _ in range(a.rounds):
        for what in ("figures", "load"):
            for src in a.checkouts:  # alternating, so that a slower moment hits both
                cmd = ([sys.executable, "-m", "sweeper.cli", "figures", uri, "--study", a.study, "--out",
                        f"/tmp/s3-before-after-{os.getpid()}"] if what == "figures"
                       else [sys.executable, "-c", LOAD.format(uri=uri, study=a.study)])
                before = s3.total()
                t = time.time()
                r = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], cwd=src, capture_output=True, text=True,
                                   env={**os.environ, "PYTHONPATH": src})
                print(f"{what} {src}: rc {r.returncode}, {time.time() - t:.1f} s, {s3.total() - before} requests, "
                      f"peak {int(r.stderr.strip().splitlines()[-1]) // 1024} MB", flush=True)
finally:
    s3.stop()
