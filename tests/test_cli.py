"""The command line: exit codes, one-line errors, machine-readable output (run in this process,
conftest.sweeper_in_process; `sweeper_process` starts the command itself)."""
import json
import subprocess
import sys

import pytest
from conftest import REPO, sweeper_in_process


def sweeper(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return sweeper_in_process(*args, cwd=cwd)


def sweeper_process(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeper.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_plan_json_lists_trials():
    r = sweeper("plan", "studies/quickstart.py", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["count"] == len(plan["trials"]) == 12
    assert {"trial_id", "depth", "width", "trainable", "seed", "model"} <= set(plan["trials"][0])


def test_params_json_keyed_by_model():
    r = sweeper("params", "resnet-110", "wrn-14-8", "--json", "--trainable", "random")
    out = json.loads(r.stdout)
    assert set(out) == {"resnet-110", "wrn-14-8"}
    assert out["resnet-110"]["batchnorm"] == 8288 and out["resnet-110"]["trainable"] == 8288


@pytest.mark.parametrize("args,needle", [
    (["plan", "studies/nope.py"], "studies/nope.py: no such study file"),
    (["run", "studies/quickstart.py", "--bogus"], "unrecognized arguments: --bogus"),
    (["params", "resnet-15"], "resnet-15: depth: CIFAR ResNet depth must be 6n+2"),
    (["params", "vgg-16"], "unknown model family 'vgg'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_errors_are_one_line_exit_2(args, needle):
    r = sweeper(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_study_writes_nothing(tmp_path):
    study = tmp_path / "bad.py"
    study.write_text("from sweeper import Study\nstudy = Study(name='b', dataset='digits', axes={'trainable': ['bn', 'bnn']})\n")
    store = tmp_path / "store"
    r = sweeper("run", study, "--store", store)
    assert r.returncode == 2 and "axes.trainable: unknown trainable subset 'bnn'; valid choices:" in r.stderr
    assert not store.exists()


def test_missing_data_root_is_refused_before_work(tmp_path):
    study = tmp_path / "c.py"
    study.write_text("from sweeper import Study\nstudy = Study(name='c', dataset='cifar10', axes={'seed': [0]})\n")
    r = sweeper("run", study, "--store", tmp_path / "store", "--data-root", tmp_path / "empty")
    assert r.returncode == 2
    assert "data_root: no cifar-10-batches-py under" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_dead_address_is_refused_within_seconds(tmp_path):
    r = sweeper("run", "studies/quickstart.py", "--store", tmp_path / "s", "--address", "127.0.0.1:9")
    assert r.returncode == 2 and "--address: no Ray cluster answers at 127.0.0.1:9" in r.stderr


def test_address_auto_reads_the_cluster_file_where_ray_writes_it(tmp_path, monkeypatch):
    """`--address auto` finds this host's cluster through the file Ray writes, which lives under
    $RAY_TMPDIR when that is set (clusters whose /tmp is small), not always under /tmp/ray."""
    from sweeper.errors import SweeperError
    from sweeper.orchestration.connect import check_address

    from ray._private import services

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    # Ray's "auto" also scans this host's processes for a GCS and takes the one it finds over the
    # file's address: a cluster another test worker runs would answer in place of the dead one.
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    with pytest.raises(SweeperError, match="no Ray cluster is running on this host"):
        check_address("auto")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # found, and then probed: dead
    with pytest.raises(SweeperError, match=r"no Ray cluster answers at \S+:9 \(from auto\)"):
        check_address("auto", timeout=1)


def test_debug_shows_the_traceback():
    r = sweeper_process("--debug", "plan", "studies/nope.py")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_plan_estimates_cost_from_flops():
    from sweeper.experiments.train.cost import forward_flops, trial_cost
    from sweeper.experiments.train.spec import TrainSpec

    # ResNet-8 width 4 on 1x8x8 digits, counted by hand: conv FLOPs are 2*k*k*c_in*c_out*h*w
    convs = 2 * 9 * (1 * 4 * 64 + 4 * 4 * 64 * 2 + 4 * 8 * 16 + 8 * 8 * 16 + 8 * 16 * 4 + 16 * 16 * 4)
    shortcuts = 2 * (4 * 8 * 16 + 8 * 16 * 4)
    linear = 2 * 16 * 10
    assert forward_flops("resnet", 8, 4, "digits", "relu", "batch") == convs + shortcuts + linear
    spec = TrainSpec.from_values({"dataset": "digits", "model": "resnet-8-4", "epochs": 3, "trainable": "all"})
    f = convs + shortcuts + linear
    # 3 epochs of 1,442 training images (3 passes a step) and a test pass of 355 after each (the
    # last is the final evaluation); with eval_every 2, after epochs 2 and 3
    assert trial_cost(spec).flops == f * (3 * 1442 * 3 + 3 * 355) and trial_cost(spec).precision == "fp32"
    assert trial_cost(spec.replace(eval_every=2)).flops == f * (3 * 1442 * 3 + 2 * 355)
    r = sweeper("plan", "studies/quickstart.py", "--json")
    est = json.loads(r.stdout)["estimate"]
    assert est["total_flops"] > 0 and est["total_trial_seconds"] > 0 and est["unknown_trials"] == 0


# -- plan: GPU trials estimated at a card's rate on the cluster's workers ----------------------------
TINY_GPU_STUDY = """from sweeper import Study
study = Study(name="tiny_gpu", dataset="digits", axes={"seed": [0, 1, 2, 3]},
              recipe={"model": "resnet-8-4", "epochs": 1, "precision": "PRECISION"}, resources={"cpu": 1, "gpu": 0.25})
"""


def tiny_gpu_study(tmp_path, precision="fp32"):
    path = tmp_path / "tiny_gpu.py"
    path.write_text(TINY_GPU_STUDY.replace("PRECISION", precision))
    return path


def one_trial_flops(path):
    from sweeper.plan import trial_cost
    from sweeper.study import load_study

    flops = {trial_cost(s).flops for s in load_study(path).specs()}
    assert len(flops) == 1  # the seed changes no FLOP
    return flops.pop()


def test_plan_gpu_estimate_arithmetic(tmp_path):
    """4 trials at 0.25 GPU on 2 one-GPU workers: 2 trials share each card, so the sweep takes twice
    one trial's time alone on a card, and 4 trials' worth of GPU-hours."""
    study = tiny_gpu_study(tmp_path)
    r = sweeper("plan", study, "--json", "--workers", "2", "--gpu", "a100", cwd=tmp_path)  # no cluster.yaml here
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)["estimate"]
    assert {"flops_per_second", "total_flops", "total_trial_seconds", "unknown_trials"} <= set(est)  # kept
    alone = one_trial_flops(study) / (156e12 * 0.3)  # A100: fp32 convolutions run in TF32, 156 TFLOP/s stated
    assert est["device"] == "gpu" and est["gpu"] == "NVIDIA A100 SXM" and est["efficiency"] == 0.3
    assert est["workers"] == 2 and est["gpus_per_worker"] == 1 and est["trials_per_worker"] == 4
    assert est["total_flops"] == 4 * one_trial_flops(study)
    assert est["gpu_hours"] == pytest.approx(4 * alone / 3600)
    assert est["wall_seconds"] == pytest.approx(2 * alone)
    assert est["flops_per_second"] == pytest.approx(156e12 * 0.3)
    assert est["rates"]["fp32"]["stated_flops_per_second"] == 156e12
    # one worker: all four share its card; a worker of a bigger cluster file is limited by its CPUs
    r = sweeper("plan", study, "--json", "--workers", "1", "--gpu", "A100", "--efficiency", "0.5", cwd=tmp_path)
    est = json.loads(r.stdout)["estimate"]
    assert est["wall_seconds"] == pytest.approx(4 * one_trial_flops(study) / (156e12 * 0.5))


def test_plan_reads_the_cluster_file_and_prints_its_assumptions(tmp_path):
    study = tiny_gpu_study(tmp_path, precision="bf16")
    (tmp_path / "gpus.yaml").write_text(
        "cluster_name: t\nmax_workers: 3\nhead_node_type: head\navailable_node_types:\n"
        "  head: {resources: {CPU: 0}, node_config: {InstanceType: m5.large}}\n"
        "  gpu: {min_workers: 0, max_workers: 5, resources: {CPU: 2, GPU: 1}, node_config: {InstanceType: g4dn.xlarge}}\n")
    r = sweeper("plan", study, "--cluster", "gpus.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    *lines, floor = r.stdout.splitlines()[-5:]
    assert floor.startswith("  a floor for networks narrower than 16 channels")  # resnet-8-4
    # T4 has no bf16: estimated at its fp32 rate; 3 workers (the file's cap), 2 CPUs each -> 2 trials each
    alone = one_trial_flops(study) / (8.1e12 * 0.3)
    assert lines[0].startswith(f"estimated cost of the remaining trials: {4 * one_trial_flops(study):.3g} FLOPs: "
                               f"about {4 * alone / 3600:.4g} GPU-hours, about ")
    assert lines[0].endswith(" of wall time on 3 workers")
    assert lines[1] == ("  card: NVIDIA T4, from gpus.yaml's worker type gpu (g4dn.xlarge) "
                        "(--gpu NAME for another: A10, A100, A10G, H100, L4, T4, V100)")
    assert lines[2] == ("  workers: 3, from gpus.yaml's worker type gpu (g4dn.xlarge); 1 GPU and 2 CPU each, so 2 trials "
                        "at a time on each (a trial asks for 0.25 GPU and 1 CPU; trials on a worker share its GPUs)")
    assert lines[3] == ("  bf16 trials: the fp32 rate (NVIDIA T4 has no bf16 tensor cores), 8.1 TFLOP/s stated x 0.3 "
                        "efficiency (assumed; --efficiency) = 2.43 TFLOP/s per trial with a card to itself")
    # no cluster file anywhere: A10G and one worker, and it says so
    r = sweeper("plan", study, cwd=tmp_path)
    assert "  card: NVIDIA A10G, from the default, with no cluster file naming one: --cluster FILE" in r.stdout
    assert "  workers: 1, from the default, with no cluster file: --cluster FILE, --workers N; 1 GPU each" in r.stdout
    assert "  bf16 trials: the bf16 tensor-core rate, 70 TFLOP/s stated" in r.stdout


def test_the_repository_cluster_file_is_read():
    from sweeper.plan import Cluster, read_cluster

    assert read_cluster(REPO / "cluster.yaml") == Cluster(8, 1.0, 4.0, "A10G", "cluster.yaml's worker type gpu_worker (g5.xlarge)")


@pytest.mark.parametrize("args,needle", [
    (["--efficiency", "0"], "--efficiency: must be in (0, 1], got 0"),
    (["--workers", "0"], "--workers: must be at least 1, got 0"),
    (["--gpu", "Z100"], "--gpu: unknown GPU 'Z100'; valid choices: A10, A100, A10G, H100, L4, T4, V100"),
    (["--cluster", "cpu.yaml"], "cpu.yaml: available_node_types: no worker type has a GPU"),
])
def test_plan_refuses_bad_gpu_options(tmp_path, args, needle):
    study = tiny_gpu_study(tmp_path)
    (tmp_path / "cpu.yaml").write_text("head_node_type: h\navailable_node_types:\n  h: {resources: {CPU: 0}}\n"
                                       "  w: {resources: {CPU: 8}, node_config: {InstanceType: m5.2xlarge}}\n")
    r = sweeper("plan", study, *args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"sweeper: error: {needle}"], r.stderr


def test_plan_says_when_trials_do_not_fit_the_workers(tmp_path):
    """Trials that ask for more than a worker has are a finding (listed, GPU-hours, no wall time),
    not a refusal: `run` on that cluster would wait forever for a worker that never comes."""
    study = tiny_gpu_study(tmp_path)
    (tmp_path / "gpu.yaml").write_text("head_node_type: h\navailable_node_types:\n  h: {resources: {CPU: 0}}\n"
                                       "  w: {resources: {CPU: 2, GPU: 1}, node_config: {InstanceType: g5.xlarge}}\n")
    r = sweeper("plan", study, "--cluster", "gpu.yaml", "--cpus-per-trial", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()[:-1]  # the last: a floor for narrow networks (resnet-8-4)
    assert lines[-4].endswith(" GPU-hours; no wall time: the trials do not fit on these workers")
    assert lines[-2] == ("  workers: 1, from gpu.yaml's worker type w (g5.xlarge); 1 GPU and 2 CPU each, too small: "
                         "each trial asks for 4 CPUs, but a worker has 2; `run` would wait forever")
    r = sweeper("plan", study, "--gpus-per-trial", "2", "--json", cwd=tmp_path)
    est = json.loads(r.stdout)["estimate"]
    assert est["fits"] is False and est["wall_seconds"] is None and est["gpu_hours"] > 0
    assert est["problem"] == ("each trial asks for 2 GPUs, but a worker has 1 (workers from the default, with no "
                              "cluster file: --cluster FILE, --workers N)")


def test_wall_time_shares_gpus_among_a_workers_trials():
    from sweeper.plan import wall_time

    assert wall_time([10.0] * 5, workers=2, per_worker=1, gpus_per_worker=1) == pytest.approx(30)  # 3 rounds
    assert wall_time([10.0] * 5, workers=2, per_worker=4, gpus_per_worker=1) == pytest.approx(30)  # 3 share one card
    assert wall_time([10.0] * 4, workers=1, per_worker=4, gpus_per_worker=2) == pytest.approx(20)  # 2 cards, 4 trials
    assert wall_time([10.0] * 2, workers=1, per_worker=4, gpus_per_worker=2) == pytest.approx(10)  # a card each
    # a long trial beside short ones: it speeds up as they end; work is conserved
    assert wall_time([30.0, 10.0], workers=1, per_worker=2, gpus_per_worker=1) == pytest.approx(40)
    assert wall_time([], workers=3, per_worker=1, gpus_per_worker=1) == 0


def test_shape_only_flops_equal_torch_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sweeper.data import DATASETS
    from sweeper.experiments.train.cost import forward_flops
    from sweeper.experiments.train.model import build_model
    from sweeper.experiments.train.spec import TrainSpec

    for model, dataset, norm, act in [("resnet-56", "cifar10", "batch", "relu"), ("wrn-14-2", "cifar100", "layer", "gelu"),
                                      ("mlp-4-64", "digits", "batch", "tanh"), ("convnet-4-16", "cifar10", "affine", "relu"),
                                      ("resnet-20", "digits", "group(groups=4)", "relu"), ("resnet-14", "cifar10", "none", "elu"),
                                      ("imagenet-resnet-18", "imagenet", "batch", "relu")]:
        spec = TrainSpec.from_values({"model": model, "dataset": dataset, "norm": norm, "activation": act})
        with FlopCounterMode(display=False) as counter:
            build_model(spec, device="meta").eval()(torch.empty(1, *DATASETS[dataset].shape, device="meta"))
        ours = forward_flops(spec.family, spec.depth, spec.width, spec.dataset, spec.activation, spec.norm)
        assert ours == counter.get_total_flops() > 0, model


def test_fp32_convolutions_run_in_tf32_as_the_estimate_assumes():
    import torch

    from sweeper.plan import FP32_CONVS_IN_TF32

    # sweeper leaves PyTorch's default alone; if a torch upgrade (or sweeper) changes it, so must the estimate
    assert FP32_CONVS_IN_TF32 == (torch.backends.cudnn.conv.fp32_precision == "tf32")


# -- plan reads the Experiment interface ---------------------------------------------------------------
def _a_teraflop_in_bf16(spec):
    """A cost hook for the test below (named as "test_cli:_a_teraflop_in_bf16")."""
    from sweeper.experiment import TrialCost

    return TrialCost(10**12, "bf16")


def test_plan_reads_each_kinds_cost_hook(monkeypatch):
    """The estimate comes from `Experiment.cost`, not from naming kinds: a kind without a hook is a
    trial of unknown cost; give it one and plan counts its FLOPs at its precision's rate."""
    from dataclasses import replace

    from sweeper.experiments import EXPERIMENTS
    from sweeper.plan import GPUS, Cluster, estimate_gpu, trial_cost
    from sweeper.study import load_study

    specs = load_study(REPO / "studies" / "bn_decomposed.py", quick=True).specs()
    assert EXPERIMENTS["decomposed"].cost is None and trial_cost(specs[0]) is None
    est = estimate_gpu(specs, GPUS["A100"], Cluster(1), 1.0, 1.0)
    assert est["unknown_trials"] == len(specs) and est["total_flops"] == 0 and est["rates"] == {}
    hooked = replace(EXPERIMENTS["decomposed"], cost="test_cli:_a_teraflop_in_bf16")
    monkeypatch.setitem(EXPERIMENTS._entries, "decomposed", hooked)  # registered for this test only
    est = estimate_gpu(specs, GPUS["A100"], Cluster(1), 1.0, 1.0)
    assert est["unknown_trials"] == 0 and est["total_flops"] == len(specs) * 10**12
    assert list(est["rates"]) == ["bf16"]  # the hook's precision picks the card's rate: 312 TFLOP/s
    assert est["gpu_hours"] == pytest.approx(len(specs) * 1e12 / (312e12 * 0.3) / 3600)
    # and the command, with the registry as shipped, says which trials it could not estimate
    monkeypatch.undo()  # the command runs in this process: it would see the hook
    r = sweeper("plan", "studies/bn_decomposed.py", "--quick")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"({len(specs)} trials of experiment 'decomposed' have no cost model)"


# -- plan --store: a folder or an object store -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_plan_marks_the_trials_a_store_has(kind, tmp_path, request):
    """`plan --store` marks done trials and estimates only the rest, for an s3:// store as for a folder."""
    from sweeper.plan import trial_cost
    from sweeper.store import Store
    from sweeper.study import load_study

    uri = str(tmp_path / "store") if kind == "folder" else request.getfixturevalue("s3_store")
    specs = load_study(REPO / "studies" / "quickstart.py").specs()
    before = json.loads(sweeper("plan", "studies/quickstart.py", "--json", "--store", uri).stdout)
    assert before["done"] == 0 and not any(t["done"] for t in before["trials"])
    store = Store(uri)
    store.ensure_writable()
    s = specs[3]
    store.commit_trial("quickstart", s, {"trial_id": s.trial_id, "study": "quickstart", "experiment": "train",
                                         "status": "done", "error": "", **s.to_row(), "test_acc": 0.5}, {})
    r = sweeper("plan", "studies/quickstart.py", "--json", "--store", uri)
    assert r.returncode == 0, r.stderr
    after = json.loads(r.stdout)
    assert after["done"] == 1 and [t["trial_id"] for t in after["trials"] if t["done"]] == [s.trial_id]
    assert after["estimate"]["total_flops"] == before["estimate"]["total_flops"] - trial_cost(s).flops
    r = sweeper("plan", "studies/quickstart.py", "--store", uri)
    assert r.stdout.splitlines()[0] == f"study quickstart: {len(specs)} trials (1 already done)"


def test_plan_refuses_an_object_store_it_cannot_read(s3_server):
    r = sweeper("plan", "studies/quickstart.py", "--store",
                f"s3://no-such-bucket/sweeps?endpoint_override={s3_server.endpoint}&scheme=http")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"sweeper: error: --store: bucket 'no-such-bucket' does not exist at http://{s3_server.endpoint}"], r.stderr


def test_plan_says_its_cpu_estimate_is_a_floor_for_narrow_networks(tmp_path):
    """Width-8 ResNets measured 3.5-7x the FLOP-model estimate on 2 cores (docs/laptop_scale.md):
    a CPU plan with such networks says so under its estimate; one without them does not."""
    narrow = sweeper("plan", "studies/quickstart.py")  # resnet-8-8, resnet-14-8, ...
    assert narrow.returncode == 0, narrow.stderr
    floor = "  a floor for networks narrower than 16 channels: width-8 ResNets took 3.5-7x this estimate"
    assert any(line.startswith(floor) for line in narrow.stdout.splitlines())
    wide = sweeper("plan", "studies/quickstart.py", "--set", "axes.model=resnet-8,resnet-14")  # width 16
    assert wide.returncode == 0, wide.stderr
    assert "estimated cost of the remaining trials" in wide.stdout and floor not in wide.stdout


def test_plan_says_its_gpu_estimate_is_a_floor_for_narrow_networks():
    """On an H200 the laptop-scale width-8 ResNets took 312 s where the GPU estimate said 4 s
    (BENCHMARKS.md): a GPU plan with networks narrower than 16 channels says so; one without does not."""
    from sweeper.plan import describe
    from sweeper.study import load_study

    specs = load_study(REPO / "studies" / "depth_vs_width.py").variant("cpu").specs()  # base width 8
    _, lines = describe(specs, 1, 0.0625, gpu="H100", workers=1)
    floor = "  a floor for networks narrower than 16 channels: on an H200, the 63 width-8 ResNets"
    assert any(line.startswith(floor) for line in lines), lines
    wide = [s for s in load_study(REPO / "studies" / "depth_vs_width.py").specs() if s.width >= 16][:4]
    _, lines = describe(wide, 4, 1, gpu="H100", workers=1)
    assert lines and not any(line.startswith(floor[:40]) for line in lines), lines


def test_plan_time_steps_times_each_network_once(monkeypatch):
    """`plan --time-steps`: CPU trials estimated from real training steps of each network (its
    step and evaluation pass, as run_trial builds them), timed once per network, not per trial."""
    from sweeper.experiments.train import timing
    from sweeper.plan import estimate
    from sweeper.study import load_study

    specs = load_study(REPO / "studies" / "quickstart.py").specs()
    specs += [s.replace(seed=1) for s in specs]  # the same networks again: not timed again
    calls = []
    real = timing.step_seconds
    monkeypatch.setattr(timing, "step_seconds", lambda spec, threads=1: calls.append(spec) or real(spec, threads))
    est = estimate(specs, 1.0, time_steps=True)
    assert est["timed_trials"] == len(specs) and len(calls) == len({timing.network(s) for s in specs}) < len(specs)
    assert all(0 < s < 3600 for s in est["trial_seconds"])
    r = sweeper("plan", "studies/quickstart.py", "--time-steps")
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[-1]
    assert line.startswith("estimated cost of the remaining trials: ") and "from real training steps" in line
    assert json.loads(sweeper("plan", "studies/quickstart.py", "--time-steps", "--json").stdout)["estimate"][
        "timed_trials"] == len(specs) // 2


def test_plan_time_steps_refuses_gpu_trials_in_one_line(tmp_path):
    study = tiny_gpu_study(tmp_path)
    r = sweeper("plan", study, "--time-steps", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "sweeper: error: --time-steps: times CPU trials on this machine; these trials ask for GPUs "
        "(add --gpus-per-trial 0 to time them here as CPU trials)"], r.stderr
