"""Dockerfile and Dockerfile.cuda: hadolint clean, and the image promises of the design checked
on the text (no Docker engine here to build them)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from ._support import ROOT, require_tool

DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
COMPILERS = ("build-essential", "gcc", "g++", "cmake", "clang", "-devel-", "python3-dev")


def stages(path: str) -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = (ROOT / path).read_text()
    logical: list[str] = []
    buffer = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        buffer += " " + stripped.rstrip("\\").strip() if buffer else stripped.rstrip("\\").strip()
        if not line.rstrip().endswith("\\"):
            logical.append(buffer)
            buffer = ""
    result: list[list[str]] = []
    for instruction in logical:
        if instruction.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


@pytest.mark.parametrize("path", DOCKERFILES)
def test_hadolint_is_clean(path: str) -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES)
def test_final_stage_is_a_non_root_runtime_without_compilers(path: str) -> None:
    all_stages = stages(path)
    assert len(all_stages) >= 2, "multi-stage: build, then runtime"
    final = all_stages[-1]
    assert "AS runtime" in final[0]
    assert any(i.startswith("COPY --from=build /opt/venv") for i in final)
    for instruction in final:
        if instruction.startswith("RUN"):
            for compiler in COMPILERS:
                assert compiler not in instruction, f"{compiler} in the final stage"
    assert "-devel-" not in final[0] and "devel" not in final[0].split()[1]
    [user] = [i for i in final if i.startswith("USER ")]
    uid = user.split()[1].split(":")[0]
    assert uid not in {"0", "root"}
    assert re.fullmatch(r"\d+", uid), "numeric UID (runAsNonRoot can verify it)"
    [entrypoint] = [i for i in final if i.startswith("ENTRYPOINT")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT")) == ["aiconv"]
    [cmd] = [i for i in final if i.startswith("CMD")]
    assert json.loads(cmd.removeprefix("CMD"))[0] in {"all", "ml", "web", "worker"}
    [health] = [i for i in final if i.startswith("HEALTHCHECK")]
    assert "urllib.request" in health and "127.0.0.1" in health and "/health" in health
    assert "METRICS_PORT" in health
    instructions = " ".join(i for stage in all_stages for i in stage)
    assert "curl" not in instructions and "wget" not in instructions


@pytest.mark.parametrize("path", DOCKERFILES)
def test_build_stage_installs_the_package(path: str) -> None:
    build = stages(path)[0]
    assert "AS build" in build[0]
    assert any("pip install" in i and " ." in i for i in build if i.startswith("RUN"))
    assert any(i.startswith("COPY aiconv") for i in build)


def test_cuda_image_builds_llama_cpp_with_cuda_and_offloads_every_layer() -> None:
    build, runtime = stages("Dockerfile.cuda")[0], stages("Dockerfile.cuda")[-1]
    assert "nvidia/cuda:" in build[0] and "-devel-" in build[0]
    assert "nvidia/cuda:" in runtime[0] and "-runtime-" in runtime[0]
    assert any("-DGGML_CUDA=on" in i for i in build)
    env = " ".join(i for i in runtime if i.startswith("ENV"))
    assert "N_GPU_LAYERS=-1" in env


def test_cpu_image_is_portable() -> None:
    build = " ".join(stages("Dockerfile")[0])
    assert "-DGGML_NATIVE=OFF" in build, "no -march=native: the image must run on other hosts"


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "deny everything, then allow what the Dockerfiles COPY"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "aiconv"}
    for path in DOCKERFILES:
        for instruction in stages(path)[0]:
            if instruction.startswith("COPY") and "--from" not in instruction:
                for source in instruction.split()[1:-1]:
                    assert source.rstrip("/") in allowed, f"{path}: {source} is ignored"
