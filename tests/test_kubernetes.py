"""deploy/kubernetes/: every manifest is one KubeRay v1.7.0 accepts (its CRD's OpenAPI schema, closed
as the API server closes it), and what the schema cannot say holds too: the Ray version is the
Dockerfile's, each entrypoint parses with segray's own parser, GPUs are asked for by worker groups
only, and credentials come from a service account or a secret, never from the manifest."""

from __future__ import annotations

import ast
import copy
import os
import re
import shlex
import zoneinfo
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from helpers.common import ROOT

from segray.cli import build_parser
from segray.recipe import load_config

DEPLOY = ROOT / "deploy" / "kubernetes"
#: KubeRay v1.7.0's CRDs and samples: $SEGRAY_KUBERAY_DIR, else ../shared/kuberay-v1.7.0 beside the checkout.
KUBERAY = Path(os.environ.get("SEGRAY_KUBERAY_DIR", ROOT.parent / "shared" / "kuberay-v1.7.0"))
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
INT32 = {"minimum": -(2**31), "maximum": 2**31 - 1}
GPU = "nvidia.com/gpu"

#: The part of ObjectMeta a manifest sets; the API server, not the CRD, validates the top-level metadata.
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
    "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
}


def structural(schema: Any) -> Any:
    """A CRD's schema as the API server applies it, for jsonschema: an object schema without
    ``x-kubernetes-preserve-unknown-fields`` is closed (the server prunes or, with strict field
    validation, rejects unknown fields), ``x-kubernetes-int-or-string`` takes an integer or a
    string, ``nullable`` admits null, and int32 fields keep to int32."""
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {k: (v if k == "properties" else structural(v)) for k, v in schema.items()}
    if "properties" in s:
        s["properties"] = {name: structural(sub) for name, sub in s["properties"].items()}
    is_object = s.get("type") == "object" or "properties" in s
    if is_object and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        s["additionalProperties"] = False
    if s.get("x-kubernetes-int-or-string") and "anyOf" not in s:
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable") and "type" in s:
        s["type"] = [s["type"], "null"]
    if s.get("format") == "int32":
        s = {**INT32, **s}
    return s


@cache
def crd_schema(api_version: str, kind: str) -> dict:
    """The closed OpenAPI schema of ``kind`` at ``api_version`` (e.g. ``ray.io/v1``) from KubeRay's CRDs."""
    if not KUBERAY.is_dir():
        pytest.skip(f"KubeRay's CRDs not found at {KUBERAY} (set SEGRAY_KUBERAY_DIR)")
    group, version = api_version.split("/")
    for path in sorted(KUBERAY.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            if crd["spec"]["group"] != group or crd["spec"]["names"]["kind"] != kind:
                continue
            (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
            schema = structural(v["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = OBJECT_META
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
            return schema
    raise AssertionError(f"no CRD in {KUBERAY} serves {kind} at {api_version}")


def schema_errors(doc: dict) -> list[str]:
    """Every way ``doc`` breaks its CRD's schema, as ``path: message`` lines."""
    validator = jsonschema.Draft4Validator(crd_schema(doc["apiVersion"], doc["kind"]))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def load(path: Path) -> dict:
    (doc,) = list(yaml.safe_load_all(path.read_text()))
    return doc


def job_spec(doc: dict) -> dict:
    """The RayJob spec of a RayJob, or of a RayCronJob's template."""
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """(group name, pod spec) of the head (``head``) and each worker group."""
    cluster = job_spec(doc)["rayClusterSpec"]
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def gpus(pod: dict) -> int:
    """GPUs a pod's containers ask for (requests or limits)."""
    return sum(
        int(c.get("resources", {}).get(part, {}).get(GPU, 0))
        for c in [*pod.get("initContainers", []), *pod["containers"]]
        for part in ("requests", "limits")
    )


def dockerfile() -> tuple[str, str]:
    """The Dockerfile's Ray version and working directory (where segray, jobs/ and configs/ live)."""
    text = (ROOT / "Dockerfile").read_text()
    (version,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", text, re.M)
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", text, re.M)
    return version, workdir


def image_problems(doc: dict) -> list[str]:
    """The cluster runs the Dockerfile's image: its Ray version, the image cluster.yaml names."""
    version, _ = dockerfile()
    image = yaml.safe_load((ROOT / "cluster.yaml").read_text())["docker"]["image"]
    spec = job_spec(doc)["rayClusterSpec"]
    out = [] if spec.get("rayVersion") == version else [f"rayVersion {spec.get('rayVersion')!r} is not {version}"]
    for group, pod in pod_specs(doc):
        out += [f"{group}: image {c['image']}, not {image}" for c in pod["containers"] if c.get("image") != image]
    return out


def job_command(script: Path) -> list[str]:
    """The segray subcommand a ``jobs/*.py`` script runs: the list it hands to ``job_main``."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "job_main":
            return ast.literal_eval(node.args[1])
    raise AssertionError(f"{script} does not call job_main")


def entrypoint_problems(doc: dict) -> list[str]:
    """The entrypoint runs a job script of the image with options that ``segray`` itself accepts."""
    _, workdir = dockerfile()
    words = shlex.split(job_spec(doc)["entrypoint"])
    if words[0] != "python" or not words[1].startswith(f"{workdir}/jobs/"):
        return [f"entrypoint runs {words[:2]}, not python {workdir}/jobs/<script>"]
    script = ROOT / Path(words[1]).relative_to(workdir)
    if not script.is_file():
        return [f"{words[1]}: no {script.relative_to(ROOT)} in the repository"]
    command = job_command(script)
    try:
        a = build_parser().parse_args([*command, *words[2:]])
    except SystemExit as e:  # argparse has printed why
        return [f"segray {' '.join(command)} refuses {words[2:]} (exit {e.code})"]
    if command == ["train"]:
        try:
            load_config(str(ROOT / Path(a.config).relative_to(workdir)), a.overrides)
        except ValueError as e:
            return [f"train recipe: {e}"]
    return []


def gpu_problems(doc: dict) -> list[str]:
    """A head that runs no work and asks for no GPU; GPU worker groups that the autoscaler (v2)
    grows from zero pods."""
    spec = job_spec(doc)["rayClusterSpec"]
    out = []
    if spec["headGroupSpec"].get("rayStartParams", {}).get("num-cpus") != "0":
        out.append("the head advertises CPUs: Ray would schedule work there")
    if not (spec.get("enableInTreeAutoscaling") and spec.get("autoscalerOptions", {}).get("version") == "v2"):
        out.append("autoscaler v2 is off")
    if job_spec(doc).get("submitterPodTemplate") and gpus(job_spec(doc)["submitterPodTemplate"]["spec"]):
        out.append("the submitter asks for GPUs")
    pods = dict(pod_specs(doc))
    if gpus(pods.pop("head")):
        out.append("the head asks for GPUs")
    groups = {g["groupName"]: g for g in spec.get("workerGroupSpecs", [])}
    gpu_groups = [name for name, pod in pods.items() if gpus(pod)]
    if not gpu_groups:
        out.append("no GPU worker group")
    for name in gpu_groups:
        pod = pods[name]
        limits = [c.get("resources", {}).get("limits", {}).get(GPU) for c in pod["containers"]]
        if not any(limits):
            out.append(f"{name}: GPUs requested without {GPU} limits")
    for name, group in groups.items():
        if group.get("minReplicas", 0) != 0 or group.get("replicas", 0) != 0:
            out.append(f"{name}: does not start from zero pods")
    return out


CREDENTIAL = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.I)


def credential_problems(doc: dict) -> list[str]:
    """Credentials reach the pods from a service account or a secret reference only."""
    out = []
    text = yaml.safe_dump(doc)
    out += [f"inline {needle}" for needle in ("AKIA", "aws_secret_access_key") if needle.lower() in text.lower()]
    runtime_env = yaml.safe_load(job_spec(doc).get("runtimeEnvYAML") or "{}")
    out += [f"runtimeEnvYAML sets {k}" for k in runtime_env.get("env_vars", {}) if CREDENTIAL.search(k)]
    for group, pod in pod_specs(doc):
        if not pod.get("serviceAccountName"):
            out.append(f"{group}: no serviceAccountName")
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            out += [
                f"{group}: {e['name']} inline"
                for e in c.get("env", [])
                if CREDENTIAL.search(e["name"]) and "value" in e
            ]
            out += [
                f"{group}: envFrom {list(e)}"
                for e in c.get("envFrom", [])
                if not {"secretRef", "configMapRef"} & set(e)
            ]
    return out


def schedule_problems(doc: dict) -> list[str]:
    """The nightly RayCronJob: a daily schedule in a named time zone, and runs that end before the next."""
    if doc["kind"] != "RayCronJob":
        return []
    spec, out = doc["spec"], []
    fields = spec["schedule"].split()
    if len(fields) != 5 or fields[2:] != ["*", "*", "*"] or not all(f.isdigit() for f in fields[:2]):
        out.append(f"schedule {spec['schedule']!r} is not once a day")
    if spec.get("timeZone") not in zoneinfo.available_timezones():
        out.append(f"timeZone {spec.get('timeZone')!r} is not an IANA time zone")
    if not 0 < spec["jobTemplate"].get("activeDeadlineSeconds", 0) < 24 * 3600:
        out.append("a run may still be going when the next one starts")
    if "{date}" not in spec["jobTemplate"]["entrypoint"]:
        out.append("the nightly entrypoint has no {date} prefix")
    return out


def lifecycle_problems(doc: dict) -> list[str]:
    """The cluster goes away after a job (after a TTL for reading logs), and a failed job stays failed."""
    spec, out = job_spec(doc), []
    if spec.get("shutdownAfterJobFinishes") is not True or not spec.get("ttlSecondsAfterFinished", 0) > 0:
        out.append("the cluster outlives the job")
    if spec.get("backoffLimit", 0) != 0:
        out.append("a failed job is retried as a new attempt")
    return out


CHECKS: list[Callable[[dict], list[str]]] = [
    image_problems,
    entrypoint_problems,
    gpu_problems,
    credential_problems,
    schedule_problems,
    lifecycle_problems,
]


def test_the_manifests_are_a_nightly_cronjob_and_jobs_for_training_and_land_cover() -> None:
    docs = {p.name: load(p) for p in MANIFESTS}
    assert {d["kind"] for d in docs.values()} == {"RayCronJob", "RayJob"}, docs.keys()
    commands = sorted(shlex.split(job_spec(d)["entrypoint"])[1].rsplit("/", 1)[1] for d in docs.values())
    assert commands == ["landcover_stats.py", "nightly_label.py", "train.py"]
    assert [d["kind"] for d in docs.values() if "nightly_label.py" in job_spec(d)["entrypoint"]] == ["RayCronJob"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_kuberays_crd(path: Path) -> None:
    assert schema_errors(load(path)) == []


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_holds_what_the_schema_cannot_say(path: Path) -> None:
    doc = load(path)
    assert [p for check in CHECKS for p in check(doc)] == []


def test_kuberays_own_samples_validate_so_the_closed_schema_is_not_too_strict() -> None:
    crd_schema("ray.io/v1", "RayJob")  # skips without the CRDs
    samples = [d for p in sorted(KUBERAY.glob("*.sample.yaml")) for d in yaml.safe_load_all(p.read_text())]
    ray_docs = [d for d in samples if d and d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in ray_docs} == {"RayJob", "RayCronJob"}
    for doc in ray_docs:
        assert schema_errors(doc) == [], doc["metadata"]["name"]


def head_container(doc: dict) -> dict:
    return job_spec(doc)["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def first_group(doc: dict) -> dict:
    return job_spec(doc)["rayClusterSpec"]["workerGroupSpecs"][0]


#: Broken copies the schema must refuse: (what, how to break a manifest, the path the error names).
SCHEMA_BREAKS: list[tuple[str, Callable[[dict], None], str]] = [
    ("misspelt job field", lambda d: job_spec(d).update(shutdownAfterJobFinish=True), "'shutdownAfterJobFinish' was"),
    ("misspelt group field", lambda d: first_group(d).update(minReplica=0), "workerGroupSpecs.0: Additional"),
    (
        "misspelt pod field",
        lambda d: first_group(d)["template"]["spec"].update(serviceAcountName="x"),
        "'serviceAcountName' was",
    ),
    ("misspelt container field", lambda d: head_container(d).update(imagePullPolcy="Always"), "'imagePullPolcy' was"),
    (
        "string for an integer",
        lambda d: first_group(d).update(maxReplicas="eight"),
        "maxReplicas: 'eight' is not of type",
    ),
    ("quoted integer", lambda d: job_spec(d).update(ttlSecondsAfterFinished="3600"), "ttlSecondsAfterFinished"),
    ("integer beyond int32", lambda d: job_spec(d).update(ttlSecondsAfterFinished=2**31), "ttlSecondsAfterFinished"),
    ("bad quantity", lambda d: head_container(d)["resources"]["limits"].update(memory="lots"), "limits.memory"),
    (
        "unknown autoscaler",
        lambda d: job_spec(d)["rayClusterSpec"]["autoscalerOptions"].update(version="v3"),
        "version",
    ),
    ("missing group name", lambda d: first_group(d).pop("groupName"), "'groupName' is a required"),
    ("misspelt metadata field", lambda d: d["metadata"].update(lables={}), "'lables' was"),
    ("misspelt top-level field", lambda d: d["spec"].update(suspnd=False), "'suspnd' was"),
]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize(("what", "breaks", "where"), SCHEMA_BREAKS, ids=[b[0] for b in SCHEMA_BREAKS])
def test_a_broken_copy_fails_the_schema(path: Path, what: str, breaks: Callable[[dict], None], where: str) -> None:
    doc = copy.deepcopy(load(path))
    breaks(doc)
    errors = schema_errors(doc)
    assert errors and any(where in e for e in errors), (what, errors)


#: Broken copies the other checks must refuse: (what, the check, how to break a manifest).
CHECK_BREAKS: list[tuple[str, Callable[[dict], list[str]], Callable[[dict], None]]] = [
    ("ray version", image_problems, lambda d: job_spec(d)["rayClusterSpec"].update(rayVersion="2.52.0")),
    ("image", image_problems, lambda d: head_container(d).update(image="rayproject/ray:2.60.0")),
    (
        "misspelt flag",
        entrypoint_problems,
        lambda d: job_spec(d).update(entrypoint=job_spec(d)["entrypoint"] + " --outptu x"),
    ),
    (
        "missing script",
        entrypoint_problems,
        lambda d: job_spec(d).update(entrypoint="python /home/ray/segray/jobs/nope.py"),
    ),
    ("script outside the image", entrypoint_problems, lambda d: job_spec(d).update(entrypoint="python jobs/train.py")),
    ("bad recipe key", entrypoint_problems, lambda d: job_spec(d).update(entrypoint=TRAIN + " run.num_wrkers=4")),
    ("GPU on the head", gpu_problems, lambda d: head_container(d)["resources"]["limits"].update({GPU: 1})),
    (
        "head runs work",
        gpu_problems,
        lambda d: job_spec(d)["rayClusterSpec"]["headGroupSpec"].update(rayStartParams={}),
    ),
    ("GPUs from one pod", gpu_problems, lambda d: first_group(d).update(minReplicas=1, replicas=1)),
    ("autoscaler v1", gpu_problems, lambda d: job_spec(d)["rayClusterSpec"]["autoscalerOptions"].update(version="v1")),
    (
        "inline key",
        credential_problems,
        lambda d: head_container(d).update(env=[{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]),
    ),
    ("no service account", credential_problems, lambda d: first_group(d)["template"]["spec"].pop("serviceAccountName")),
    (
        "runtime env key",
        credential_problems,
        lambda d: job_spec(d).update(runtimeEnvYAML="env_vars: {AWS_SESSION_TOKEN: x}"),
    ),
    ("cluster kept", lifecycle_problems, lambda d: job_spec(d).update(shutdownAfterJobFinishes=False)),
    ("retried", lifecycle_problems, lambda d: job_spec(d).update(backoffLimit=2)),
]

TRAIN = "python /home/ray/segray/jobs/train.py --config /home/ray/segray/configs/camvid-unet-gpu.yaml"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize(("what", "check", "breaks"), CHECK_BREAKS, ids=[b[0] for b in CHECK_BREAKS])
def test_a_broken_copy_fails_the_other_checks(
    path: Path, what: str, check: Callable[[dict], list[str]], breaks: Callable[[dict], None]
) -> None:
    doc = copy.deepcopy(load(path))
    assert check(doc) == []
    breaks(doc)
    assert check(doc), what


def test_the_nightly_job_breaks_its_schedule_checks() -> None:
    (doc,) = [load(p) for p in MANIFESTS if load(p)["kind"] == "RayCronJob"]
    for key, value in (("timeZone", "UTC+1"), ("schedule", "30 2 * * 1")):
        broken = copy.deepcopy(doc)
        broken["spec"][key] = value
        assert schedule_problems(broken), key
    broken = copy.deepcopy(doc)
    broken["spec"]["jobTemplate"].pop("activeDeadlineSeconds")
    assert schedule_problems(broken)
    broken["spec"]["jobTemplate"]["entrypoint"] = broken["spec"]["jobTemplate"]["entrypoint"].replace("{date}", "x")
    assert len(schedule_problems(broken)) == 2
