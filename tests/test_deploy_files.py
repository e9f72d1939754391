"""Deployment files and CLI guards.

The files: deploy/cluster.yaml, deploy/kuberay/*.yaml, deploy/Dockerfile and docs/cluster.md.

The YAML files are checked against Ray's own schemas, and every `farm` command they (and the
cluster walkthrough) run is parsed by the real `farm` CLI, so a renamed option breaks a test
instead of a cluster launch. No Ray needed.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import ray
import typer.main
import yaml
from ray.serve.schema import ServeDeploySchema

from deploy.cli import app, main
from deploy.serve.app import AppArgs, build_app
from deploy.serve.launch import DEFAULT_HOST, ServeOptions

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ghcr.io/bss2-farm/bss2-farm:{VERSION}"


def load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def images(node) -> list[str]:
    """Every `image:` value anywhere in a parsed YAML document."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "image" and isinstance(v, str):
                found.append(v)
            found += images(v)
    elif isinstance(node, list):
        for v in node:
            found += images(v)
    return found


def farm_commands(text: str) -> list[list[str]]:
    """`farm ...` calls in shell text (split on &&, ;, newlines), as argv lists without `farm`."""
    out = []
    for part in re.split(r"&&|;|\n|\|\|", text):
        part = part.strip().lstrip("$ ").strip()
        if part.startswith("farm "):
            argv = shlex.split(part.split(" #")[0])[1:]
            argv = [a for a in argv if a not in (">", "/dev/null")]
            out.append(argv)
    return out


def parse_farm(argv: list[str]) -> dict:
    """Parse argv with the real `farm` CLI (types, ranges, option names) without running it."""
    group = typer.main.get_command(app)
    cmd, name, rest = group, "farm", list(argv)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        name, rest = rest[0], rest[1:]
        assert name in cmd.commands, (
            f"`farm ... {name}` is not a farm sub-command (have {sorted(cmd.commands)})"
        )
        cmd = cmd.commands[name]
    if rest == ["--help"]:
        return {}
    ctx = cmd.make_context(name, rest)
    return dict(ctx.params)


def test_cluster_yaml_valid_for_ray_up():
    config = load("cluster.yaml")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["docker"]["image"] == IMAGE
    commands = "\n".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "ray start --head" in commands and "--address=$RAY_HEAD_IP:6379" in commands
    for argv in farm_commands(commands):
        parse_farm(argv)


def test_serve_config_valid_and_builds():
    config = load("serve_config.yaml")
    ServeDeploySchema.model_validate(config)
    assert config["http_options"]["host"] == "127.0.0.1"  # loopback unless told otherwise
    (application,) = config["applications"]
    module, attr = application["import_path"].split(":")
    assert (module, attr) == ("deploy.serve.app", "build_app")
    AppArgs.model_validate(application["args"])
    built = build_app(application["args"])  # binding needs no Ray
    assert type(built).__name__ == "Application"
    (dep,) = application["deployments"]
    assert dep["name"] == "PosteriorService" and dep["ray_actor_options"]["num_cpus"] <= 1
    assert (
        1 <= dep["autoscaling_config"]["min_replicas"] <= dep["autoscaling_config"]["max_replicas"]
    )


def test_build_app_rejects_unknown_args():
    with pytest.raises(ValueError, match="extra"):
        build_app({"posterior": "x", "store": "s3://anything"})


def test_kuberay_manifests():
    service = load("kuberay/rayservice.yaml")
    job = load("kuberay/rayjob.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    assert serve_config["applications"][0]["import_path"] == "deploy.serve.app:build_app"
    AppArgs.model_validate(serve_config["applications"][0]["args"])
    for doc, cluster in (
        (service, service["spec"]["rayClusterConfig"]),
        (job, job["spec"]["rayClusterSpec"]),
    ):
        assert cluster["rayVersion"] == ray.__version__
        found = images(doc)
        assert found and set(found) == {IMAGE}, found
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:1] == ["bash"] and entry[-2] == "-c"
    commands = farm_commands(entry[-1])
    assert [c[:2] for c in commands] == [
        ["simulate", "--n"],
        ["train", "classifier"],
        ["simulate", "--n"],
        ["train", "npe"],
    ]
    for argv in commands:
        params = parse_farm(argv)
        assert params.get("address") == "auto", argv


def test_dockerfile_matches_project():
    text = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert base == f"rayproject/ray:{ray.__version__}-py311-cpu"
    ray_pin = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), flags=re.M)
    assert ray_pin and ray_pin.group(1) == ray.__version__
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", text, flags=re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    assert "-c constraints.txt" in text and IMAGE in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = " ".join(re.findall(r"^COPY\s+(.+)$", text, flags=re.M))
    for needed in [
        p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]
    ] + [project["project"]["readme"]]:
        assert re.search(rf"(^|\s){re.escape(needed)}(\s|$)", copied), (
            f"Dockerfile does not copy {needed}"
        )


def test_cluster_walkthrough_commands_parse():
    doc = (ROOT / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", doc, flags=re.S)
    commands = [argv for block in blocks for argv in farm_commands(block)]
    verbs = {argv[0] for argv in commands}
    assert {"simulate", "train", "serve", "query"} <= verbs, verbs
    for argv in commands:
        parse_farm(argv)
    assert any(
        argv[0] == "simulate" and "--address" in argv and parse_farm(argv)["n"] == "1e6"
        for argv in commands
    )


def test_serve_binds_loopback_by_default():
    assert DEFAULT_HOST == "127.0.0.1"
    assert ServeOptions(posterior="x").host == "127.0.0.1"
    assert parse_farm(["serve", "--posterior", "x"])["host"] == "127.0.0.1"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"port": 0}, "port=0"),
        ({"replicas": 0}, "replicas=0"),
        ({"max_batch_size": 999}, "max_batch_size=999"),
        ({"direct_ingress": True, "replicas": 2}, "replicas=2"),
        ({"direct_ingress": True, "address": "auto"}, "address='auto'"),
    ],
)
def test_serve_options_validate(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ServeOptions(posterior="x", **kwargs)


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    """Run `farm` in-process through its console entry; returns (exit code, stderr)."""
    code = main(args)
    return code, capsys.readouterr().err


def one_line_error(capsys, args: list[str]) -> str:
    code, err = run_cli(capsys, args)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("make", ["missing", "empty", "not-an-artifact"])
def test_cli_serve_rejects_bad_posterior(tmp_path, capsys, make):
    path = tmp_path / "artifact"
    if make != "missing":
        path.mkdir()
    if make == "not-an-artifact":
        (path / "manifest.json").write_text('{"kind": "something else"}')
    assert "--posterior" in one_line_error(capsys, ["serve", "--posterior", str(path)])


def test_cli_serve_rejects_bad_port(capsys):
    assert "--port" in one_line_error(capsys, ["serve", "--posterior", "x", "--port", "70000"])


@pytest.mark.parametrize(
    "extra, named",
    [(["--replicas", "2"], "--replicas 2"), (["--address", "auto"], "--address auto")],
)
def test_cli_serve_direct_ingress_needs_one_replica_on_a_local_ray(capsys, extra, named):
    line = one_line_error(capsys, ["serve", "--posterior", "x", "--direct-ingress", *extra])
    assert "--direct-ingress" in line and named in line, line


@pytest.mark.parametrize(
    "args", [[], ["--trace", "a.npy", "--store", "s.zarr", "--index", "0"], ["--store", "s.zarr"]]
)
def test_cli_query_needs_one_observation(args, capsys):
    assert "--" in one_line_error(capsys, ["query", "--url", "http://127.0.0.1:9", *args])


@pytest.mark.parametrize(
    "content, match",
    [
        (np.arange(5.0) + 0.5, "whole ADC codes"),
        (np.full(1000, np.nan), "NaN"),
        (np.zeros((2, 3, 1000)), "shape"),
    ],
)  # (sweeps, T) is an observation now; 3-D never is
def test_cli_query_rejects_bad_trace_file(tmp_path, capsys, content, match):
    path = tmp_path / "obs.npy"
    np.save(path, content)
    line = one_line_error(capsys, ["query", "--url", "http://127.0.0.1:9", "--trace", str(path)])
    assert match in line and "--trace" in line


def test_cli_query_rejects_bad_url(tmp_path, capsys):
    path = tmp_path / "obs.npy"
    np.save(path, np.full(1000, 500, dtype=np.int16))
    assert "--url" in one_line_error(
        capsys, ["query", "--url", "localhost:8000", "--trace", str(path)]
    )


def test_cli_query_unreachable_service(tmp_path, capsys):
    path = tmp_path / "obs.npy"
    np.save(path, np.full(1000, 500, dtype=np.int16))
    code, err = run_cli(capsys, ["query", "--url", "http://127.0.0.1:9", "--trace", str(path)])
    assert (
        code == 1
        and "cannot reach" in err
        and "Traceback" not in err
        and len(err.strip().splitlines()) == 1
    )


def test_recorded_trace_files_load_or_fail_on_one_line(tmp_path):
    from deploy.client import load_trace_file

    codes = np.arange(1000) % 1024
    np.save(tmp_path / "t.npy", codes[None, :])
    np.savetxt(tmp_path / "t.csv", codes[None, :], delimiter=",", fmt="%d")
    np.savetxt(tmp_path / "t.txt", codes, fmt="%d")
    for name in ("t.npy", "t.csv", "t.txt"):
        trace = load_trace_file(tmp_path / name)
        assert trace.dtype == np.int16 and np.array_equal(trace, codes), name
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "high.npy", codes + 100)
    (tmp_path / "t.json").write_text("[1, 2]")
    for name, needle in (
        ("missing.npy", "does not exist"),
        ("t.json", "unknown format '.json'"),
        ("high.npy", "[0, 1023]"),
        ("pickled.npy", "allow_pickle"),
    ):
        with pytest.raises(ValueError, match=re.escape(needle)):
            load_trace_file(tmp_path / name)


# ---------------------------------------------------------------- cluster security (issue 11)
def containers(doc) -> list[dict]:
    """Every container spec anywhere in a parsed KubeRay manifest."""
    found = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "containers" and isinstance(v, list):
                found += v
            else:
                found += containers(v)
    elif isinstance(doc, list):
        for v in doc:
            found += containers(v)
    return found


@pytest.mark.parametrize("name", ["kuberay/rayjob.yaml", "kuberay/rayservice.yaml"])
def test_kuberay_containers_use_token_auth_from_a_secret(name):
    found = containers(load(name))
    assert len(found) >= 2, found  # head and workers
    for c in found:
        env = {e["name"]: e for e in c.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", (name, c["name"])
        token = env.get("RAY_AUTH_TOKEN", {})
        assert "value" not in token and token.get("valueFrom", {}).get("secretKeyRef", {}).get(
            "key"
        ), (name, c["name"], token)


def test_cluster_launcher_uses_token_auth_without_a_literal_token():
    config = load("cluster.yaml")
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd
    # The token travels as a file from the launching machine, Ray's default token path on every
    # node.
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def test_image_turns_token_auth_on_and_no_file_holds_a_token():
    text = (DEPLOY / "Dockerfile").read_text()
    env = dict(
        re.findall(
            r"(RAY_[A-Z_]+)=(\S+)",
            " ".join(re.findall(r"^ENV\s+(.+?)(?<!\\)$", text, flags=re.M | re.S)),
        )
    )
    assert env.get("RAY_AUTH_MODE") == "token", env
    assert (
        env.get("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH")
        == "deploy.serve.limits:proxy_middlewares"
    ), env
    for path in [
        DEPLOY / "Dockerfile",
        DEPLOY / "cluster.yaml",
        *sorted((DEPLOY / "kuberay").glob("*.yaml")),
        ROOT / "docs" / "cluster.md",
    ]:
        literal = re.findall(
            r"RAY_AUTH_TOKEN\s*[=:]\s*['\"]?(?!\$)[A-Za-z0-9]{8,}", path.read_text()
        )
        assert not literal, (path.name, literal)


def test_proxy_callback_refuses_big_bodies_from_the_header():
    """Serve's proxy middleware: 413 from Content-Length without calling the app or receive."""
    import asyncio

    from deploy.serve.limits import ContentLengthLimit, proxy_middlewares
    from deploy.serve.schemas import MAX_BODY_BYTES

    (mw,) = proxy_middlewares()
    assert mw.cls is ContentLengthLimit
    sent, called = [], []

    async def app(scope, receive, send):
        called.append(scope["path"])

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    limit = ContentLengthLimit(app)
    scope = {
        "type": "http",
        "path": "/sample",
        "headers": [(b"content-length", str(MAX_BODY_BYTES + 1).encode())],
    }
    asyncio.run(limit(scope, receive, send))
    assert (
        sent[0]["status"] == 413 and not called and str(MAX_BODY_BYTES) in sent[1]["body"].decode()
    )
    asyncio.run(
        limit(
            {**scope, "headers": [(b"content-length", str(MAX_BODY_BYTES).encode())]}, receive, send
        )
    )
    assert called == ["/sample"]
