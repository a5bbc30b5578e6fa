"""The Dockerfile, checked without a Docker engine.

Statically: CUDA base, torch pinned to the constraints' version from the PyTorch CUDA
index, non-root USER, VOLUMEs, EXPOSE of the DICOM port, a HEALTHCHECK and ``appliance
serve`` as the entrypoint, and the default config it writes is valid. Dynamically: the
image's ENTRYPOINT + CMD, run here with the venv's interpreter and a test config, starts
the appliance, which answers C-ECHO; the image's HEALTHCHECK command exits 0 against it
and non-zero when nothing listens.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.config import load_config
from dicom_bridge.sender import RemoteNode, echo
from tests.peers import REPO, Process, free_port, wait_port, write_config

DOCKERFILE = REPO / "Dockerfile"
IMAGE_CONFIG = "/etc/appliance/appliance.toml"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and heredocs skipped."""
    lines = DOCKERFILE.read_text().splitlines()
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        word, _, rest = line.partition(" ")
        heredoc = re.search(r"<<'?(\w+)'?", rest)
        if heredoc:
            end = heredoc.group(1)
            while i < len(lines) and lines[i].strip() != end:
                i += 1
            i += 1
        out.append((word.upper(), rest.strip()))
    return out


def _one(name: str) -> str:
    found = [rest for word, rest in _instructions() if word == name]
    assert found, f"the Dockerfile has no {name}"
    return found[-1]


def _args() -> dict[str, str]:
    values: dict[str, str] = {}
    for word, rest in _instructions():
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            values[key.strip()] = value.strip()
    return values


def _expand(text: str) -> str:
    args = _args()
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def _exec_form(name: str) -> list[str]:
    rest = _one(name)
    if name == "HEALTHCHECK":
        rest = rest.split("CMD", 1)[1].strip()
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_base_image_is_cuda_runtime() -> None:
    base = _expand(_one("FROM"))
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+(\.\d+)?-(cudnn-)?runtime-ubuntu\d\d\.\d\d", base)


def test_torch_is_the_pinned_cuda_build() -> None:
    pinned = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pinned is not None
    args = _args()
    assert args["TORCH_VERSION"] == pinned.group(1) == "2.13.0"
    assert re.fullmatch(r"cu\d{3}", args["TORCH_CUDA"])
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", args["CUDA_IMAGE"])
    assert cuda is not None
    assert args["TORCH_CUDA"] == f"cu{cuda.group(1)}{cuda.group(2)}"  # same CUDA as the base
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    assert "https://download.pytorch.org/whl/${TORCH_CUDA}" in runs
    assert '"torch==${TORCH_VERSION}"' in runs
    assert "pip install -c constraints.txt ." in runs
    assert "python3.11" in runs


def test_runs_as_non_root_with_volumes_port_and_healthcheck() -> None:
    assert _one("USER") not in ("root", "0", "")
    volumes = json.loads(_one("VOLUME"))
    assert "/var/lib/appliance" in volumes and "/var/lib/appliance-models" in volumes
    assert _one("EXPOSE").split() == ["11112"]
    assert _exec_form("HEALTHCHECK")[:2] == ["appliance", "healthcheck"]
    assert _exec_form("ENTRYPOINT") == ["appliance"]
    assert _exec_form("CMD") == ["serve", "--config", IMAGE_CONFIG]


def test_image_config_is_valid(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    match = re.search(r"<<'EOF_CONFIG' (\S+)\n(.*?)\nEOF_CONFIG", text, re.S)
    assert match is not None and match.group(1) == IMAGE_CONFIG
    path = tmp_path / "appliance.toml"
    path.write_text(match.group(2) + "\n")
    cfg = load_config(path)
    assert cfg.dicom.port == 11112
    assert cfg.storage.root == Path("/var/lib/appliance")
    assert cfg.models_root == Path("/var/lib/appliance-models")
    assert cfg.http.enabled and cfg.http.bind == "127.0.0.1"  # the HEALTHCHECK asks /healthz


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "tests"):
        assert entry in ignored


def _local(command: list[str], config: Path) -> list[str]:
    """The image's command line with the venv's interpreter and the test config."""
    assert command[0] == "appliance"
    rest = [str(config) if arg == IMAGE_CONFIG else arg for arg in command[1:]]
    return [sys.executable, "-m", "appliance", *rest]


@pytest.mark.slow
@pytest.mark.alone  # a real serve process and its health check, timed
def test_entrypoint_serves_and_healthcheck_reports(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "appliance.toml",
        port=port,
        root=tmp_path / "root",
        extra=f"[http]\nenabled = true\nport = {free_port()}\n",  # as in the image
    )
    env = {**os.environ, "APPLIANCE_CONFIG": str(config)}
    health = _local(_exec_form("HEALTHCHECK"), config)

    down = subprocess.run(health, env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode != 0
    assert "unhealthy" in down.stderr

    serve = _local(_exec_form("ENTRYPOINT") + _exec_form("CMD"), config)
    process = Process(serve, tmp_path / "serve.log", env=env)
    try:
        wait_port(port, proc=process.proc, log=tmp_path / "serve.log", timeout=60)
        echo(
            RemoteNode(ae_title="SEGAPPLIANCE", host="127.0.0.1", port=port, calling_ae="ECHOTEST")
        )
        deadline = time.monotonic() + 60  # the image's start period: models load
        while True:
            up = subprocess.run(health, env=env, capture_output=True, text=True, timeout=60)
            if up.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert up.returncode == 0, up.stderr
        verbose = subprocess.run(
            [*_local(["appliance", "healthcheck"], config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verbose.returncode == 0 and "checks ok" in verbose.stdout
        dicom = subprocess.run(
            [*_local(["appliance", "healthcheck", "--dicom"], config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dicom.returncode == 0 and "C-ECHO" in dicom.stdout
    finally:
        process.stop()


@pytest.mark.slow
@pytest.mark.alone  # a real serve process and its health check, timed
def test_healthcheck_uses_an_allowed_caller(tmp_path: Path) -> None:
    """With allowed_callers set, the check calls as a caller allowed from loopback."""
    port = free_port()
    config = write_config(
        tmp_path / "appliance.toml",
        port=port,
        root=tmp_path / "root",
        allowed_callers=["PACS", {"ae_title": "HEALTH", "host": "127.0.0.1"}],
    )
    process = Process(
        [sys.executable, "-m", "appliance", "serve", "--config", str(config)], tmp_path / "log"
    )
    try:
        wait_port(port, proc=process.proc, log=tmp_path / "log", timeout=60)
        cmd = [sys.executable, "-m", "appliance", "healthcheck", "--config", str(config)]
        ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        refused = subprocess.run(
            [*cmd, "--calling-ae", "INTRUDER"], capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 1
    finally:
        process.stop()
