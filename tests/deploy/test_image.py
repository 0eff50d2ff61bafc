"""The image builds reproducibly: base image by digest, locked and hash-checked packages,
OCI labels; hadolint accepts the Dockerfile; the lock files cover pyproject.toml."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from tests.deploy.tools import DEPLOY, ROOT, require_tool, run

DOCKERFILE = DEPLOY / "Dockerfile"


def _instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _locked(name: str) -> dict[str, str]:
    """Package -> pinned version of a lock file (every pin must carry hashes)."""
    text = (ROOT / name).read_text(encoding="utf-8")
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split(";")[0].split("\\")[0].strip()
        if not first or first.startswith("#"):
            continue
        package, version = first.split("==")
        assert "--hash=sha256:" in block, f"{name}: {package} has no hash"
        pins[package.lower().replace("_", "-")] = version
    return pins


def test_the_base_image_is_pinned_by_digest() -> None:
    lines = _instructions()
    [arg] = [line for line in lines if line.startswith("ARG PYTHON_IMAGE=")]
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11-slim@sha256:[0-9a-f]{64}", arg)
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms
    assert all(line.startswith("FROM ${PYTHON_IMAGE} AS ") for line in froms)


def test_every_package_comes_from_a_lock_with_its_hash_checked() -> None:
    installs = [line for line in _instructions() if "pip" in line and " install " in line]
    assert installs
    for line in installs:
        for command in line.split("&&"):
            if " install " not in command:
                continue
            locked = "--require-hashes" in command and "-r requirements" in command
            own_wheel = "--no-index" in command and "/wheels/" in command
            assert locked or own_wheel, command
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    assert "!requirements.lock" in ignore
    assert "!requirements-build.lock" in ignore


def test_the_image_carries_oci_source_and_revision_labels() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    for label in ("source", "revision", "version", "base.name"):
        assert f"org.opencontainers.image.{label}=" in text


def test_the_locks_pin_every_dependency_of_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    runtime, dev, build = (
        _locked(n)
        for n in ("requirements.lock", "requirements-dev.lock", "requirements-build.lock")
    )
    wanted = [
        (runtime, project["project"]["dependencies"]),
        (dev, project["project"]["dependencies"]),
        (dev, project["project"]["optional-dependencies"]["dev"]),
        (build, project["build-system"]["requires"]),
    ]
    for pins, requirements in wanted:
        for text in requirements:
            req = Requirement(text)
            name = req.name.lower().replace("_", "-")
            assert name in pins, f"{name} is not locked (run make lock)"
            assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    # The image runs what the tests ran: the same versions in both locks.
    assert {k: v for k, v in dev.items() if k in runtime} == runtime


def test_hadolint_accepts_the_dockerfile() -> None:
    done = run(require_tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert done.returncode == 0, done.stdout + done.stderr
