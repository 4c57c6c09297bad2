"""One epoch of crop+flip batches from uint8 CIFAR-shaped images, as sweeper.data.batches.Batches
makes them (argv[1] labels the line). Run it under two checkouts with PYTHONPATH to compare."""
import time, torch, sys
torch.set_num_threads(1)
from sweeper.data.batches import Batches
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8, generator=g); y = torch.randint(0, 10, (10000,), generator=g)
mean, std = torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)
b = Batches(x, y, 128, mean, std, torch.device("cpu"), False, "crop_flip")
best = 1e9
for _ in range(3):
    t0 = time.perf_counter()
    n = sum(len(xb) for xb, yb in (b.epoch(torch.Generator().manual_seed(1)) if hasattr(b, "epoch") else b))
    best = min(best, time.perf_counter() - t0)
print(sys.argv[1], f"{best:.3f} s per epoch of {n} images (crop_flip, batch 128, 1 thread)")
