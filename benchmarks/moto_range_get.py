"""What bounds `load bn` on the S3 test server: the same 8 MB ranged GET from a small object and from
one the size of a compacted `bn` part, side by side.

    .venv/bin/python benchmarks/moto_range_get.py [--part-mb 400] [--rounds 5]

moto answers a ranged GET by reading the whole object into memory and slicing it (moto.s3.models
FakeKey.value, then S3Response._handle_range_header), so its time grows with the object, not the
range; S3 itself serves a range in time proportional to the range. A compacted part of the
10,000-trial bench store is about 400 MB (16 million `bn` rows), and `load bn` makes about 300
ranged GETs of them. Prints one JSON object: median seconds per GET for each object, and the ratio.
"""
import argparse
import json
import os
import statistics
import time

import pyarrow.fs as pafs

from sweeper.bench.store import _CountingS3

p = argparse.ArgumentParser()
p.add_argument("--part-mb", type=int, default=400)
p.add_argument("--rounds", type=int, default=5)
a = p.parse_args()

s3 = _CountingS3()
s3.bucket("rangebench")
fs = pafs.S3FileSystem(endpoint_override=s3.endpoint, scheme="http", access_key="bench", secret_key="bench",
                       region="us-east-1")
big = os.urandom(a.part_mb * 2**20)
objects = {"small_9mb": big[: 9 * 2**20], f"part_{a.part_mb}mb": big}
for name, data in objects.items():
    with fs.open_output_stream(f"rangebench/{name}") as f:
        f.write(data)
out = {}
for _ in range(a.rounds):  # alternating, so that a slower moment hits both
    for name in objects:
        with fs.open_input_file(f"rangebench/{name}") as f:
            t = time.perf_counter()
            assert len(f.read_at(8 * 2**20, 0)) == 8 * 2**20
            out.setdefault(name, []).append(time.perf_counter() - t)
s3.stop()
result = {f"{name}_8mb_get_seconds": round(statistics.median(ts), 4) for name, ts in out.items()}
result["ratio"] = round(statistics.median(out[f"part_{a.part_mb}mb"]) / statistics.median(out["small_9mb"]), 1)
print(json.dumps(result))
