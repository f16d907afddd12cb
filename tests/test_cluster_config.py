"""cluster.yaml and the Dockerfile: valid for the Ray we pin, and free of credentials."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def pinned_ray_version() -> str:
    (version,) = re.findall(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    return version


def test_cluster_yaml_matches_rays_json_schema(cluster: dict) -> None:
    jsonschema.validate(cluster, json.loads(SCHEMA.read_text()))


def test_cluster_yaml_passes_rays_own_preparation_and_validation(cluster: dict) -> None:
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}, "the head must run no model work"
    gpu_types = [t for t, v in types.items() if v["resources"].get("GPU", 0) > 0]
    assert sorted(gpu_types) == ["gpu_multi", "gpu_small"]
    for name in gpu_types:
        assert types[name]["min_workers"] == 0 and types[name]["max_workers"] > 0, name
    assert any(v["resources"].get("GPU", 0) == 1 for v in types.values())
    assert any(v["resources"].get("GPU", 0) > 1 for v in types.values())
    assert "cpu_decode" in types and types["cpu_decode"]["resources"].get("GPU", 0) == 0
    assert prepared["idle_timeout_minutes"] > 0
    assert "--num-cpus=0" in " ".join(prepared["head_start_ray_commands"])


def test_schema_check_is_not_vacuous(cluster: dict) -> None:
    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["gpu_small"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads(SCHEMA.read_text()))
    bad = copy.deepcopy(cluster)
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(bad))


def test_cluster_yaml_holds_no_credentials() -> None:
    text = (ROOT / "cluster.yaml").read_text()
    for needle in ("aws_access_key_id", "aws_secret_access_key", "AWS_SECRET", "AWS_ACCESS_KEY", "AKIA"):
        assert needle.lower() not in text.lower(), needle


def dockerfile_ray_version() -> str:
    text = (ROOT / "Dockerfile").read_text()
    (arg,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", text, re.M)
    (base,) = re.findall(r"^FROM (\S+)$", text, re.M)
    assert base.startswith("rayproject/ray:${RAY_VERSION}-"), base
    assert "-gpu" in base or "-cu" in base, f"{base}: segray's image needs Ray's CUDA build"
    return arg


def test_dockerfile_base_image_matches_pinned_ray() -> None:
    assert dockerfile_ray_version() == pinned_ray_version() == ray.__version__


def test_dockerfile_runs_as_non_root_and_holds_no_secrets() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert not re.search(r"^(ENV|ARG)\s+AWS_", text, re.M)
    ignore = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "tests"):
        assert path in ignore, path
    for copied in re.findall(r"^COPY (?:--\S+ )*(\S+)", text, re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies {copied}, which is not in the repository"
