"""The README documents every setting and every metric (so they cannot drift apart)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from consumer.observability.metrics import Metrics
from consumer.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in README]
    assert missing == []


def test_every_metric_is_documented() -> None:
    metrics = Metrics(CollectorRegistry())
    names = {m.name for m in metrics.registry.collect()}
    missing = []
    for name in names:
        documented = f"`{name}`" in README or f"`{name}_total`" in README
        if not documented:
            missing.append(name)
    assert missing == []


def test_quick_start_has_the_two_commands() -> None:
    assert "make demo" in README
    assert "make test" in README


def test_the_architecture_section_has_one_line_per_folder() -> None:
    section = README.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    package = Path(__file__).resolve().parents[2] / "consumer"
    folders = sorted(
        p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    )
    assert folders, "no sub-packages found"
    missing = [f for f in folders if f"| `{f}/` |" not in section]
    assert missing == []
