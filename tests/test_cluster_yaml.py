"""cluster.yaml passes Ray's own cluster-config checks, offline.

`ray up` runs, in ray.autoscaler._private.commands._bootstrap_config:
  1. prepare_config(config)   - merges ray/autoscaler/aws/defaults.yaml into the
                                config, merges setup commands, checks the docker
                                section, fills per-type min/max workers;
  2. AWS fillout of node resources (boto3 + EC2 DescribeInstanceTypes);
  3. validate_config(config)  - jsonschema against ray/autoscaler/ray-schema.json
                                plus Ray's extra checks;
  4. AWSNodeProvider.bootstrap_config (boto3: IAM, key pair, subnets, AMI).

Steps 2 and 4 need boto3, AWS credentials and the network, and step 2 merely
adds resources the config already declares.  This test runs steps 1 and 3,
which for provider type "aws" only read files shipped in the Ray wheel (the
defaults are looked up by provider type; the provider class is never
imported).  The `offline` fixture makes that a guarantee rather than a hope:
sockets refuse to connect and no AWS credentials are visible.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"

IMAGE_RE = re.compile(
    r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<pyminor>\d+)-(?:gpu|cu\d+)$"
)
AWS_KEY_ID_RE = re.compile(r"(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|A3T[A-Z0-9])[A-Z0-9]{16}")
# A 40-character run of the alphabet AWS secret keys use, with mixed case and digits.
AWS_SECRET_RE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")
SECRET_WORDS = (
    "aws_secret",
    "aws_access_key",
    "aws_session",
    "aws_credentials",  # provider.aws_credentials is a real Ray option: keys in the file
    "password",
    "private key",
)
# Ray's own token: a value in RAY_AUTH_TOKEN, or a long hex run like `ray get-auth-token` prints.
RAY_TOKEN_VALUE_RE = re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*\S|(?<![0-9a-fA-F])[0-9a-fA-F]{32,}(?![0-9a-fA-F])")
# Ray reads the token from ~/.ray/auth_token; HOME is /home/ray in rayproject/ray images.
NODE_TOKEN_PATH = "/home/ray/.ray/auth_token"
PROJECT_MOUNT = "/home/ray/sweeper"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and no AWS credentials while the Ray validators run."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def raw_text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture
def raw(raw_text) -> dict:
    return yaml.safe_load(raw_text)


@pytest.fixture
def prepared(raw) -> dict:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def head_start_commands(config: dict) -> list[str]:
    return [c for c in config["head_start_ray_commands"] if "ray start" in c and "--head" in c]


def worker_types(config: dict) -> dict:
    return {
        name: node_type
        for name, node_type in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


def test_ray_validator_accepts_the_file(prepared):
    # `prepared` already ran prepare_config + validate_config; check what
    # prepare_config produced is still what we wrote, i.e. no AWS default
    # (nightly-wheel setup command, 0.0.0.0 dashboard) leaked in.
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert not any("ray-wheels" in c for c in prepared["setup_commands"])


def test_dashboard_only_on_loopback(raw, prepared):
    for config in (raw, prepared):
        commands = head_start_commands(config)
        assert commands, "no `ray start --head` command"
        for command in commands:
            hosts = re.findall(r"--dashboard-host[= ](\S+)", command)
            assert hosts == ["127.0.0.1"], command
        assert not any("0.0.0.0" in c for c in config["head_start_ray_commands"])


def test_no_secrets_in_file(raw_text, raw):
    assert not AWS_KEY_ID_RE.search(raw_text)
    for match in AWS_SECRET_RE.findall(raw_text):
        looks_random = (
            re.search(r"[A-Z]", match) and re.search(r"[a-z]", match) and re.search(r"\d", match)
        )
        assert not looks_random, f"possible secret key: {match}"
    lowered = raw_text.lower()
    for word in SECRET_WORDS:
        assert word not in lowered, f"{word!r} appears in cluster.yaml"
    assert "ssh_private_key" not in raw.get("auth", {})
    assert not RAY_TOKEN_VALUE_RE.search(raw_text), "a Ray token value in cluster.yaml"


def test_gpu_workers_scale_from_zero_and_declare_gpus(raw):
    workers = worker_types(raw)
    assert workers, "no worker node type"
    for name, node_type in workers.items():
        assert node_type.get("min_workers") == 0, name
        assert node_type.get("max_workers", 0) >= 1, name
        assert node_type["resources"].get("GPU", 0) >= 1, f"{name} declares no GPU"
        assert node_type["node_config"]["InstanceType"].startswith("g5."), name
        # Trials write to the store from the worker: the worker needs a role.
        assert "IamInstanceProfile" in node_type["node_config"], name


def test_head_runs_no_trials(raw):
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0


def test_resources_are_integers(raw):
    for name, node_type in raw["available_node_types"].items():
        for key, value in node_type["resources"].items():
            assert type(value) is int, f"{name}.resources.{key} = {value!r}"


def test_image_matches_installed_ray_and_python(raw):
    docker = raw["docker"]
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    assert images
    for image in images:
        match = IMAGE_RE.match(image)
        assert match, f"unexpected image name {image!r}"
        assert match["ray"] == ray.__version__, image
        assert (int(match["py"]), int(match["pyminor"])) == sys.version_info[:2], image


def test_project_mount_is_the_repo_root_only_from_the_repo_root(raw, tmp_path):
    local = raw["file_mounts"][PROJECT_MOUNT]
    remote = PROJECT_MOUNT
    assert (REPO_ROOT / local).resolve() == REPO_ROOT
    # Run from anywhere else, the path does not exist and `ray up` stops
    # instead of uploading that directory.
    assert not os.path.exists(tmp_path / local)
    assert all(remote in c for c in raw["setup_commands"] if "pip install -e" in c)


def test_validator_rejects_unknown_top_level_key(raw):
    bad = copy.deepcopy(raw)
    bad["not_a_ray_option"] = True
    with pytest.raises(jsonschema.ValidationError, match="not_a_ray_option"):
        validate_config(prepare_config(bad))


def test_validator_rejects_fractional_resources(raw):
    bad = copy.deepcopy(raw)
    name = next(iter(worker_types(bad)))
    bad["available_node_types"][name]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


# -- token authentication -------------------------------------------------------------------------
def test_every_node_runs_ray_with_token_authentication(raw, prepared):
    for config in (raw, prepared):
        docker = config["docker"]
        # the container's environment: `ray start`, the autoscaler, the dashboard, job drivers and
        # `ray exec`/`ray attach` shells on head and workers alike (worker_run_options add to it)
        assert "-e RAY_AUTH_MODE=token" in docker["run_options"]
        assert docker["container_name"], "commands must run inside the container to see its environment"
        for key in ("head_run_options", "worker_run_options"):
            assert not any("RAY_AUTH_MODE" in o for o in docker.get(key, [])), key
        for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
            assert "RAY_AUTH_MODE" not in command  # one place sets it; nothing turns it off


def test_the_token_travels_as_a_file_never_as_a_value(raw, prepared, raw_text):
    for config in (raw, prepared):
        # the user's token file, from `ray get-auth-token --generate`, to Ray's default path on
        # the nodes; the autoscaler copies head -> workers from the head's copy
        assert config["file_mounts"][NODE_TOKEN_PATH] == "~/.ray/auth_token"
    assert "RAY_AUTH_TOKEN" not in raw_text  # neither a value nor a path in the environment


# -- the shipped studies and the cluster fit each other -------------------------------------------
def shipped_studies() -> list[tuple[str, object]]:
    from sweeper.study import load_study

    out = []
    for path in sorted((REPO_ROOT / "studies").glob("*.py")):
        study = load_study(path)
        out.append((path.name, study))
        if study.quick is not None:
            out.append((f"{path.name} --quick", load_study(path, quick=True)))
    return out


def test_every_shipped_study_fits_a_worker_type(raw):
    from sweeper.orchestration.resources import _bundle, _fits

    workers = {name: t["resources"] for name, t in worker_types(raw).items() if t.get("max_workers", 0) > 0}
    studies = shipped_studies()
    assert len(studies) >= 7
    for name, study in studies:
        bundle = _bundle(float(study.resources.get("cpu", 1)), float(study.resources.get("gpu", 0)))
        fitting = [w for w, r in workers.items() if _fits(bundle, r)]
        assert fitting, f"{name}: a trial asks for {bundle}; no worker type of cluster.yaml has that: {workers}"


def test_imagenet_trials_get_their_eight_cpus_and_the_rest_the_smaller_node(raw):
    """The autoscaler adds, for each trial, the node type it fits best: the 4-CPU studies must not
    need the 8-CPU type, so their nodes stay the cheaper g5.xlarge."""
    from sweeper.orchestration.resources import _bundle, _fits

    workers = {name: t["resources"] for name, t in worker_types(raw).items()}
    smallest_gpu = min((r for r in workers.values() if r.get("GPU", 0) >= 1), key=lambda r: r["CPU"])
    for name, study in shipped_studies():
        bundle = _bundle(float(study.resources.get("cpu", 1)), float(study.resources.get("gpu", 0)))
        if not name.startswith("imagenet.py") or "--quick" in name:
            assert _fits(bundle, smallest_gpu), name
    imagenet = dict(shipped_studies())["imagenet.py"]
    assert imagenet.resources == {"cpu": 8, "gpu": 1}
    assert sum(_fits(_bundle(8, 1), r) for r in workers.values()) == 1


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_nodes_install_the_project_with_what_trials_need(raw):
    installs = [c for c in raw["setup_commands"] if "pip install" in c]
    assert installs, "setup_commands do not install the project"
    project = _pyproject()
    extras_known = set(project["project"].get("optional-dependencies", {}))
    for command in installs:
        match = re.search(r"cd (\S+) && pip install -e \.(?:\[([\w,-]+)\])?(?:\s|$)", command)
        assert match, command
        assert match[1] == PROJECT_MOUNT  # the synced checkout, editable: a re-sync updates the code
        extras = set(filter(None, (match[2] or "").split(",")))
        assert extras <= extras_known, f"unknown extras {extras - extras_known}"
        assert "test" not in extras  # nodes run trials, not the test suite
    # What a worker imports to run a trial comes with the project itself, not with an extra: Tune
    # (the trial function), torch, the Parquet/S3 store. And the Ray pin is the image's Ray: pip
    # would otherwise replace the image's Ray on every node, or fail.
    deps = {re.split(r"[\[=<>~! ;]", d, maxsplit=1)[0].lower(): d for d in project["project"]["dependencies"]}
    for needed in ("ray", "torch", "torchvision", "pyarrow", "pandas", "numpy", "scikit-learn"):
        assert needed in deps, needed
    ray_pin = re.fullmatch(r"ray\[([\w,]+)\]==([\d.]+)", deps["ray"])
    assert ray_pin and {"tune", "default"} <= set(ray_pin[1].split(",")), deps["ray"]
    image_ray = IMAGE_RE.match(raw["docker"]["image"])["ray"]
    assert ray_pin[2] == image_ray == ray.__version__
