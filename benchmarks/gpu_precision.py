"""bf16 against fp32 on a GPU: the training step every trial runs, on the sweep's BN-only CIFAR ResNets.

    python benchmarks/gpu_precision.py [--nets resnet-20-8,resnet-20-16,...] [--batch 128] [--steps 20] [--repeats 15]

BENCHMARKS.md used to recommend bf16 autocast on a GPU for CIFAR-size networks, having measured only
the digits quickstart's tiny ones (launch-bound: bf16 bought nothing). This measures it where it
matters: for each network, `train_step` (autocast included, as `run_trial` builds it: BN-only, channels_last,
the frozen-conv weight-gradient skip) in fp32 and in bf16, on one CUDA device, timed side by side
(interleaved round-robin, `--steps` steps per timing, the device synchronised before the clock stops).
It also times the trial's evaluation forward pass; `--compile` adds each precision under
torch.compile (inductor, as the recipe field `compile: inductor` runs it). JSON lines on stdout: the
device, then one line per network as it is measured, then the total seconds.
"""
import argparse
import json
import time


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":  # kernels run asynchronously: stop the clock when they are done
        torch.cuda.synchronize(device)


def timed_steps(step, x, y, steps: int, device):
    def run():
        for _ in range(steps):
            step(x, y)
        synchronize(device)

    return run


def timed_forward(model, spec, x, steps: int, device):
    import torch

    from sweeper.experiments.train.loop import autocast

    @torch.no_grad()
    def run():
        model.eval()
        for _ in range(steps):
            with autocast(spec, device):
                model(x)
        synchronize(device)
        model.train()

    return run


def measure(net: str, batch: int, steps: int, repeats: int, device_name: str = "cuda", compile: bool = False) -> dict:
    import torch

    from sweeper.bench.common import time_interleaved
    from sweeper.bench.step import bn_only_model, cifar_batch
    from sweeper.experiments.train.loop import train_step

    _, depth, width = net.split("-")
    device = torch.device(device_name)
    x, y = cifar_batch(batch, channels_last=True)
    x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
    variants = {}
    compile_seconds = {}
    for precision in ("fp32", "bf16"):
        for compiled in (False, True) if compile else (False,):
            name = precision + ("_inductor" if compiled else "")
            model, optimizer, masks, spec = bn_only_model(int(depth), int(width), precision=precision)
            model = model.to(device)  # moves each parameter in place: the optimizer still holds them
            # as run_trial does with recipe field `compile: inductor`: the steps run the compiled module
            step_model = torch.compile(model, backend="inductor") if compiled else model
            variants[f"train_{name}"] = timed_steps(train_step(step_model, optimizer, masks, spec, device), x, y, steps,
                                                    device)
            variants[f"eval_{name}"] = timed_forward(step_model, spec, x, steps, device)
            if compiled:  # the first calls compile (train and eval graphs): time them apart
                t0 = time.perf_counter()
                variants[f"train_{name}"]()
                variants[f"eval_{name}"]()
                compile_seconds[name] = round(time.perf_counter() - t0, 1)
    seconds = time_interleaved(variants, repeats=repeats, warmup=3)
    per_step = {k: v / steps for k, v in seconds.items()}
    names = [k.removeprefix("train_") for k in variants if k.startswith("train_")]
    return {"net": net, "batch": batch,
            "ms_per_step": {k: round(v * 1e3, 3) for k, v in per_step.items()},
            "speedup_vs_fp32_train": {n: round(per_step["train_fp32"] / per_step[f"train_{n}"], 3) for n in names},
            "speedup_vs_fp32_eval": {n: round(per_step["eval_fp32"] / per_step[f"eval_{n}"], 3) for n in names},
            "images_per_s_train": {n: round(batch / per_step[f"train_{n}"]) for n in names},
            "compile_seconds": compile_seconds}


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--nets", default="resnet-20-8,resnet-20-16,resnet-56-16,resnet-110-16,resnet-20-64,resnet-14-128")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cuda", help="cpu only to try the script where there is no GPU")
    p.add_argument("--compile", action="store_true", help="also time each precision under torch.compile (inductor)")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_precision.py: no CUDA device (this measures the GPU path; --device cpu to try it)")
    started = time.perf_counter()
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__, "batch": a.batch,
                      "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32}),
          flush=True)
    for net in a.nets.split(","):  # one line each, so that a run stopped early keeps what it measured
        print(json.dumps(measure(net, a.batch, a.steps, a.repeats, a.device, a.compile)), flush=True)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
