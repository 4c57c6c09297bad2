"""Make kuberay-crds.json, the schemas `tests/test_deploy_manifests.py` checks the manifests
against, from KubeRay's CustomResourceDefinitions:

    git clone https://github.com/ray-project/kuberay && git -C kuberay checkout v1.5.1
    python deploy/kubernetes/schema/trim_crds.py kuberay/ray-operator/config/crd/bases v1.5.1

It keeps each CRD's `v1` openAPIV3Schema (what the API server validates a RayCluster or RayJob
against) and drops only what makes the files large: descriptions, and the copies of the pod
template schema (head, workers, RayJob submitter) and of the RayCluster spec (inside RayJob),
which become one definition each, referenced with $ref.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).with_name("kuberay-crds.json")


def _strip(node):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _v1_schema(path: Path) -> dict:
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strip(version["schema"]["openAPIV3Schema"])


def main(crd_dir: str, version: str) -> None:
    cluster = _v1_schema(Path(crd_dir) / "ray.io_rayclusters.yaml")
    job = _v1_schema(Path(crd_dir) / "ray.io_rayjobs.yaml")
    spec = cluster["properties"]["spec"]
    pod = spec["properties"]["headGroupSpec"]["properties"]["template"]
    ref_pod, ref_spec = {"$ref": "#/definitions/PodTemplateSpec"}, {"$ref": "#/definitions/RayClusterSpec"}
    workers = spec["properties"]["workerGroupSpecs"]["items"]["properties"]
    assert workers["template"] == pod, "worker and head pod templates differ in this CRD"
    assert job["properties"]["spec"]["properties"]["rayClusterSpec"] == spec, "RayJob's cluster spec differs"
    spec["properties"]["headGroupSpec"]["properties"]["template"] = ref_pod
    workers["template"] = ref_pod
    job["properties"]["spec"]["properties"]["rayClusterSpec"] = ref_spec
    if "submitterPodTemplate" in job["properties"]["spec"]["properties"]:
        assert job["properties"]["spec"]["properties"]["submitterPodTemplate"] == pod
        job["properties"]["spec"]["properties"]["submitterPodTemplate"] = ref_pod
    cluster["properties"]["spec"] = ref_spec
    out = {"kuberay": version, "RayCluster": cluster, "RayJob": job,
           "definitions": {"PodTemplateSpec": pod, "RayClusterSpec": spec}}
    OUT.write_text(json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(*sys.argv[1:])
