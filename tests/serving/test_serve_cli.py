"""``segray serve`` and the Serve config file, up to the point where Ray would start: options, the
refusals that come first, and ``configs/serve.yaml`` read by Serve's own schema and builder."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from helpers.cli import run
from helpers.common import ROOT

from segray.cli import build_parser
from segray.serving.app import REPLICA_ENV, Segmenter, build, deployment_options
from segray.serving.inputs import RequestError, image_bytes
from segray.serving.labeller import ServeOptions


def test_help_names_every_limit(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run(capsys, "serve", "--help")
    assert code == 0 and "exit codes: 0 stopped by Ctrl-C or SIGTERM" in text
    assert "143" not in text  # serve stops on SIGTERM with 0: running until stopped is its job
    for default in ("(default 127.0.0.1)", "(default 8000)", "(default 8)", "(default 10ms)", "(default 64MiB)"):
        assert default in text, default
    assert "(default 16,777,216 = 4096x4096)" in text and "(default 30)" in text


def test_a_host_others_can_reach_needs_a_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_model: str
) -> None:
    monkeypatch.delenv("SEGRAY_API_KEY", raising=False)
    code, text = run(capsys, "serve", "--model", tiny_model, "--host", "0.0.0.0")
    assert code == 2 and "--host 0.0.0.0 is reachable from other machines: set SEGRAY_API_KEY" in text


def test_a_bad_model_fails_before_ray_starts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, text = run(capsys, "serve", "--model", str(tmp_path / "nothing"))
    assert code == 2 and str(tmp_path / "nothing") in text


def test_replica_counts() -> None:
    fixed = deployment_options(0.5, 0.0, 2, 2, 8)
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    scaled = deployment_options(1.0, 1.0, 0, 4, 8)
    assert scaled["autoscaling_config"] == {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8,
    }
    assert scaled["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0, "runtime_env": {"env_vars": REPLICA_ENV}}
    with pytest.raises(ValueError, match=r"min_replicas \(3\) <= max_replicas \(2\)"):
        deployment_options(1.0, 0.0, 3, 2, 8)


def test_the_config_file_is_a_valid_serve_config(tiny_model: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "segray.serving.app:build"
    assert [d.name for d in app.deployments] == [Segmenter.name]
    assert app.deployments[0].autoscaling_config["min_replicas"] == 0
    assert app.deployments[0].ray_actor_options.num_gpus == 1
    # A file's ray_actor_options replace the deployment's own: the allocator settings are repeated there.
    assert app.deployments[0].ray_actor_options.runtime_env["env_vars"] == REPLICA_ENV
    built = build({**app.args, "model": tiny_model})
    assert ServeOptions(**built._bound_deployment.init_args[0]).max_batch_size == app.args["max_batch_size"]


def test_the_builder_refuses_keys_and_unknown_args(tiny_model: str) -> None:
    with pytest.raises(ValueError, match="SEGRAY_API_KEY"):
        build({"model": tiny_model, "api_key": "x"})
    with pytest.raises(ValueError, match="known args: model, max_batch_size"):
        build({"model": tiny_model, "batch_size": 4})


def test_multipart_bodies() -> None:
    boundary = "xyz"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="f.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\x89PNG\r\n\x00\xff"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    assert image_bytes(body, f"multipart/form-data; boundary={boundary}") == b"\x89PNG\r\n\x00\xff"
    assert image_bytes(b"raw", "image/png") == b"raw"
    with pytest.raises(RequestError, match="is the boundary in Content-Type right"):
        image_bytes(body, "multipart/form-data; boundary=other")


def test_every_documented_serve_command_parses() -> None:
    """docs/serving.md shows ``segray serve`` in console blocks (it runs until stopped, so the docs walk
    of tests/test_docs.py does not run it): each one parses with the real parser."""
    text = (ROOT / "docs" / "serving.md").read_text()
    commands = [
        shlex.split(line.replace("\\\n", " "), comments=True)
        for block in re.findall(r"```\w*\n(.*?)```", text, re.S)
        for line in block.replace("\\\n", " ").splitlines()
        if re.match(r"^\$?\s*segray serve", line)
    ]
    assert len(commands) >= 3
    for words in commands:
        argv = words[1:] if words[0] == "$" else words
        build_parser().parse_args(argv[1:])
