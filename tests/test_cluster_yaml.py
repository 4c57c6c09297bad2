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
    "token",
    "password",
    "private key",
)


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
    (remote, local), = raw["file_mounts"].items()
    assert remote == "/home/ray/sweeper"
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
