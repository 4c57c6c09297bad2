"""The deployment files beside cluster.yaml agree with the project and pass their platforms' own
checks, offline.

Kubernetes (deploy/kubernetes/): the RayCluster and RayJob are validated against KubeRay's own CRD
schemas (v1.5.1, the first release with `authOptions`; deploy/kubernetes/schema/ says how the file
was cut from KubeRay's repository), made strict as `kubectl apply` is by default (an unknown field
is an error, not silently dropped), and the runtime environment by Ray's own RuntimeEnv parser. The
API server's CEL rules and the operator's own checks are not run.

GCP (deploy/gcp/cluster.yaml): Ray's prepare_config + validate_config, what `ray up` runs before it
talks to the cloud (as tests/test_cluster_yaml.py does for AWS). For provider type "gcp" both only
read files shipped in the Ray wheel: prepare_config merges ray/autoscaler/gcp/defaults.yaml; the GCP
node provider (which imports googleapiclient) is never imported. What `ray up` does next needs the
cloud and is not run here: bootstrap_gcp (project, service accounts and IAM roles, SSH key, subnet)
and the VM creation, where GCE checks the machine type, image, accelerator and zone. Ray's schema
treats node_config as free-form, so the GCE rules for GPU VMs that matter here are checked below.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import socket
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
GCP = REPO / "deploy" / "gcp" / "cluster.yaml"
IMAGE_RE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<pyminor>\d+)-(?:gpu|cu\d+)$")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network while Ray's validators run: a check that needs the cloud fails instead of passing."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in list(os.environ):
        if name.startswith(("GOOGLE_", "CLOUDSDK_")):
            monkeypatch.delenv(name)


def aws_image() -> str:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())["docker"]["image"]


def check_image(image: str) -> None:
    match = IMAGE_RE.match(image)
    assert match, f"unexpected image name {image!r}"
    assert match["ray"] == ray.__version__, image
    assert (int(match["py"]), int(match["pyminor"])) == sys.version_info[:2], image
    assert image == aws_image(), "not the image cluster.yaml runs"


def project_requirements() -> tuple[str, list[str]]:
    """pyproject's pinned Ray version, and every other dependency as written there."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_pin,) = [d for d in deps if re.match(r"ray\b", d)]
    return ray_pin.split("==")[1], [d for d in deps if d != ray_pin]


# -- Kubernetes -----------------------------------------------------------------------------------
def load_one(path: Path) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return doc


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load_one(K8S / "raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load_one(K8S / "rayjob.yaml")


def strict(node):
    """An object schema with properties and no escape hatch admits no other keys, as the API server
    does for `kubectl apply` (field validation Strict, kubectl's default)."""
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


@pytest.fixture(scope="module")
def crd() -> dict:
    schemas = json.loads((K8S / "schema" / "kuberay-crds.json").read_text())
    definitions = strict(schemas["definitions"])

    def validator(kind: str):
        schema = {**strict(schemas[kind]), "definitions": definitions}
        return jsonschema.Draft7Validator(schema)

    return {"version": schemas["kuberay"], "RayCluster": validator("RayCluster"), "RayJob": validator("RayJob")}


def errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_manifests_are_valid_kuberay_objects(raycluster, rayjob, crd):
    assert crd["version"] == "v1.5.1"
    for doc, kind in ((raycluster, "RayCluster"), (rayjob, "RayJob")):
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
        assert errors(crd[kind], doc) == []


@pytest.mark.parametrize("mistake", [
    lambda c: c["spec"]["workerGroupSpecs"][0].update(minReplica=0),  # a typo
    lambda c: c["spec"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-gpus": 1}),  # not a string
    lambda c: c["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(resource={}),
    lambda c: c["spec"].update(authOptions={"mode": "password"}),
])
def test_the_schema_check_catches_mistakes(raycluster, crd, mistake):
    bad = copy.deepcopy(raycluster)
    mistake(bad)
    assert errors(crd["RayCluster"], bad)


def head_and_workers(spec: dict):
    head = spec["headGroupSpec"]
    return head, spec["workerGroupSpecs"]


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_image_and_ray_version_agree_with_the_project(raycluster, rayjob):
    ray_pin, _ = project_requirements()
    for spec in (raycluster["spec"], rayjob["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == ray.__version__ == ray_pin
        head, workers = head_and_workers(spec)
        for group in [head, *workers]:
            for container in containers(group):
                check_image(container["image"])


def test_head_runs_no_trials_and_is_not_exposed(raycluster):
    head, _ = head_and_workers(raycluster["spec"])
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert int(head["rayStartParams"].get("num-gpus", "0")) == 0
    for container in containers(head):
        for part in ("requests", "limits"):
            assert "nvidia.com/gpu" not in container["resources"].get(part, {})
    # reachable only inside the Kubernetes cluster (kubectl port-forward from outside)
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    assert raycluster["spec"]["authOptions"]["mode"] == "token"


def test_gpu_workers_scale_from_zero_with_consistent_resources(raycluster):
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    _, workers = head_and_workers(spec)
    assert workers
    for group in workers:
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0 and group["maxReplicas"] >= 1
        (container,) = containers(group)
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert requests == limits, "requests below limits: Ray would count resources the pod may not get"
        params = group["rayStartParams"]
        assert int(params["num-gpus"]) == int(limits["nvidia.com/gpu"]) >= 1
        assert int(params["num-cpus"]) == int(limits["cpu"])
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def runtime_env_of(rayjob: dict) -> dict:
    return yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])


def test_the_job_runs_the_same_cluster_and_the_project_code(raycluster, rayjob):
    from ray.runtime_env import RuntimeEnv

    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"]
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    env = runtime_env_of(rayjob)
    RuntimeEnv(**env)  # Ray's own parser: field names, pip options, working_dir a valid URI
    assert env["working_dir"].startswith("https://") and env["working_dir"].endswith(".zip")
    # the project's dependencies, as pyproject.toml has them, without the image's Ray
    _, deps = project_requirements()
    assert env["pip"]["packages"] == deps
    standalone = yaml.safe_load((K8S / "runtime-env.yaml").read_text())
    RuntimeEnv(**standalone)
    assert standalone == {k: v for k, v in env.items() if k != "working_dir"}


def test_the_entrypoint_is_a_sweeper_run_the_cluster_can_hold(raycluster, rayjob):
    from sweeper.cli import build_parser
    from sweeper.study import load_study

    words = shlex.split(rayjob["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "sweeper.cli"]
    args = build_parser().parse_args(words[3:])  # sweeper's own command line: flags that exist
    assert args.command == "run" and args.address == "auto"
    assert "://" in args.store or args.store.startswith("/"), "a store every pod reaches"
    study = load_study(REPO / args.study)  # the study is in the repository the job downloads
    _, workers = head_and_workers(raycluster["spec"])
    params = workers[0]["rayStartParams"]
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else study.resources.get("cpu", 1)
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else study.resources.get("gpu", 0)
    assert cpus <= int(params["num-cpus"]) and gpus <= int(params["num-gpus"])


def test_no_secrets_in_the_manifests():
    for path in K8S.glob("*.yaml"):
        docs = list(yaml.safe_load_all(path.read_text()))
        assert not [d for d in docs if d and d.get("kind") == "Secret"], path
        text = path.read_text()
        assert "auth_token:" not in text and "RAY_AUTH_TOKEN:" not in text, path
        assert not re.search(r"(?i)aws_secret|private_key|password", text), path


# -- GCP ------------------------------------------------------------------------------------------
@pytest.fixture
def gcp_raw() -> dict:
    return yaml.safe_load(GCP.read_text())


@pytest.fixture
def gcp(gcp_raw) -> dict:
    config = prepare_config(copy.deepcopy(gcp_raw))
    validate_config(config)
    return config


def gcp_workers(config: dict) -> dict:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def test_ray_validator_accepts_the_gcp_file(gcp):
    assert gcp["provider"]["type"] == "gcp"
    assert gcp["head_node_type"] in gcp["available_node_types"]
    assert not any("ray-wheels" in c for c in gcp["setup_commands"])  # no GCP default leaked in
    check_image(gcp["docker"]["image"])


def test_gcp_dashboard_on_loopback_and_token_auth(gcp_raw, gcp):
    for config in (gcp_raw, gcp):
        heads = [c for c in config["head_start_ray_commands"] if "ray start" in c and "--head" in c]
        assert heads
        for command in heads:
            assert re.findall(r"--dashboard-host[= ](\S+)", command) == ["127.0.0.1"]
        assert not any("0.0.0.0" in c for c in config["head_start_ray_commands"])
    assert "-e RAY_AUTH_MODE=token" in gcp_raw["docker"]["run_options"]
    assert gcp_raw["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def test_gcp_head_runs_no_trials(gcp_raw):
    head = gcp_raw["available_node_types"][gcp_raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert "guestAccelerators" not in head["node_config"]


def test_gcp_gpu_workers_from_zero_follow_the_gce_rules(gcp_raw):
    workers = gcp_workers(gcp_raw)
    assert workers
    for name, node in workers.items():
        config = node["node_config"]
        assert node["min_workers"] == 0 and node["max_workers"] >= 1, name
        assert all(type(v) is int for v in node["resources"].values()), name
        (accelerator,) = config["guestAccelerators"]
        assert accelerator["acceleratorType"].startswith("nvidia-")
        # what the autoscaler is told is what the VM has
        assert node["resources"]["GPU"] == accelerator["acceleratorCount"] >= 1, name
        vcpus = int(config["machineType"].rsplit("-", 1)[1])
        assert node["resources"]["CPU"] == vcpus, name
        # guest accelerators exist on N1 only (A2, G2, A3 come with theirs)
        assert config["machineType"].startswith("n1-"), name
        # GCE: `scheduling` is an object; a VM with GPUs cannot live-migrate
        assert isinstance(config["scheduling"], dict)
        assert config["scheduling"]["onHostMaintenance"] == "TERMINATE"
        if config["scheduling"].get("provisioningModel") == "SPOT":
            assert config["scheduling"]["automaticRestart"] is False
        # trials write to the gs:// store from the worker: an identity with a Cloud Storage scope
        (account,) = config["serviceAccounts"]
        assert account["email"].endswith(".iam.gserviceaccount.com")
        assert set(account["scopes"]) & {"https://www.googleapis.com/auth/devstorage.read_write",
                                         "https://www.googleapis.com/auth/cloud-platform"}
    # the provider's zone is where every VM is created: it names the region
    assert gcp_raw["provider"]["availability_zone"].startswith(gcp_raw["provider"]["region"] + "-")


def test_gcp_file_has_no_credentials(gcp_raw):
    text = GCP.read_text()
    assert "ssh_private_key" not in gcp_raw["auth"]
    assert "gcp_credentials" not in gcp_raw["provider"]  # a real Ray option: keys inside the file
    assert not re.search(r"(?i)private_key|BEGIN [A-Z ]*PRIVATE KEY|client_secret", text)


def test_gcp_project_mount_is_the_repo_root_only_from_the_repo_root(gcp_raw, tmp_path):
    local = gcp_raw["file_mounts"]["/home/ray/sweeper"]
    assert (REPO / local).resolve() == REPO
    assert not os.path.exists(tmp_path / local)


def test_gcp_validator_rejects_what_ray_up_would(gcp_raw):
    bad = copy.deepcopy(gcp_raw)
    bad["not_a_ray_option"] = True
    with pytest.raises(jsonschema.ValidationError, match="not_a_ray_option"):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(gcp_raw)
    next(iter(gcp_workers(bad).values()))["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
