"""Throughput of the streamed full-resolution ImageNet pipeline (`imagenet224`), per loader setting.

    .venv/bin/python benchmarks/imagenet_stream.py [--images 384] [--workers 0 1]

Writes `--images` JPEGs of ImageNet's typical size (about 500x375, quality 90, smooth random
content) into a temporary ImageFolder, then times one training pass (RandomResizedCrop(224) +
flip, decode included) and one evaluation pass (Resize(256) + CenterCrop(224)) through
`sweeper.data.imagenet_stream.StreamBatches` for each worker count, after one warm-up pass (page
cache, worker start). Prints images per second as JSON. Use it to size `--cpus-per-trial`: a trial
gets cpus - 1 decoding workers, and the GPU's step rate in images/s divided by one worker's rate is
how many it needs.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sweeper.data.imagenet_stream import stream_imagenet
from sweeper.experiments.train.spec import TrainSpec

p = argparse.ArgumentParser()
p.add_argument("--images", type=int, default=384)
p.add_argument("--workers", type=int, nargs="+", default=[0, 1])
p.add_argument("--batch-size", type=int, default=64)
a = p.parse_args()
torch.set_num_threads(1)
rng = np.random.default_rng(0)
out = {"images": a.images, "batch_size": a.batch_size, "torch_threads": 1, "images_per_s": {}}
with tempfile.TemporaryDirectory() as d:
    root = Path(d)
    classes = 8
    for split, n in (("train", a.images), ("val", a.images)):
        for i in range(n):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = int(rng.integers(400, 600)), int(rng.integers(300, 450))
            # smooth content compresses like a photograph, unlike white noise
            small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
            img.save(folder / f"{i}.JPEG", quality=90)
    spec = TrainSpec.from_values({"dataset": "imagenet224", "model": "imagenet-resnet-18",
                                  "batch_size": a.batch_size})
    for workers in a.workers:
        train, test = stream_imagenet(spec, root, "cpu", True, workers)
        rates = {}
        for name, passes in (("train", lambda e: train.epoch(torch.Generator().manual_seed(e))),
                             ("eval", lambda e: test.ordered())):
            for e in range(2):  # the first pass warms the page cache and starts the workers
                t0, n = time.perf_counter(), 0
                for x, y in passes(e):
                    n += len(y)
                seconds = time.perf_counter() - t0
            rates[name] = round(n / seconds, 1)
        out["images_per_s"][f"workers={workers}"] = rates
print(json.dumps(out, indent=1))
