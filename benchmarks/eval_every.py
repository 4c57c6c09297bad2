"""Testing every epoch against every fifth: real trials of `depth_vs_width --scale cpu`, side by side.

    .venv/bin/python benchmarks/eval_every.py --data-root ../shared/data/cifar10 [--precision fp32]
        [--trials resnet-14-8:bn,resnet-14-8:output,resnet-20-8:random] [--epochs 20]

For each (network, subset) it runs the cpu recipe's trial twice at the same time, one process and one
torch thread each (two cores): with `eval_every` 1 (the test set after every epoch, as the cpu scale
did before) and with the cpu scale's 5 (after epochs 5, 10, 15, 20). It reports each trial's
`train_seconds`, their ratio, and whether the final accuracy, loss and training curve agree bit for
bit (they must: a test pass reads the model and consumes no randomness). One JSON object.

`--precision fp32` is for a CPU without AVX-512, whose bf16 is about 10x slower (docs/laptop_scale.md).
"""
import argparse
import json
import multiprocessing as mp
import time


def trial(model: str, subset: str, every: int, epochs: int, precision: str, data_root: str, out) -> None:
    from sweeper.experiments.train.loop import run_trial
    from sweeper.study import load_study

    study = load_study("studies/depth_vs_width.py", scale="cpu",
                       overrides=[f"cpu.recipe.eval_every={every}", f"cpu.recipe.epochs={epochs}",
                                  f"cpu.recipe.precision={precision}"])
    spec = next(s for s in study.specs() if s.model == model and s.trainable == subset and s.seed == 0)
    result = run_trial(spec, data_root, device="cpu", threads=1)
    out.put((every, {k: result.row[k] for k in ("test_acc", "test_loss", "train_loss", "train_seconds")}
             | {"curve": result.tables["curves"]["train_loss"].tolist(), "trial_id": spec.trial_id}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", required=True)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--trials", default="resnet-14-8:bn,resnet-14-8:output,resnet-20-8:random")
    a = p.parse_args()
    started = time.perf_counter()
    rows = []
    ctx = mp.get_context("spawn")
    for item in a.trials.split(","):
        model, subset = item.split(":")
        queue = ctx.Queue()
        procs = [ctx.Process(target=trial, args=(model, subset, every, a.epochs, a.precision, a.data_root, queue))
                 for every in (1, 5)]
        for proc in procs:
            proc.start()
        got = dict(queue.get() for _ in procs)
        for proc in procs:
            proc.join()
        every, fifth = got[1], got[5]
        rows.append({"model": model, "trainable": subset,
                     "seconds_every_epoch": round(every["train_seconds"], 1),
                     "seconds_every_5th": round(fifth["train_seconds"], 1),
                     "speedup": round(every["train_seconds"] / fifth["train_seconds"], 3),
                     "test_acc": every["test_acc"],
                     "identical": all(every[k] == fifth[k] for k in ("test_acc", "test_loss", "train_loss", "curve"))})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"epochs": a.epochs, "precision": a.precision, "threads_per_trial": 1, "trials": rows,
                      "seconds": round(time.perf_counter() - started)}))


if __name__ == "__main__":
    main()
