"""The bench's pure parts: its input is what the service accepts, its arithmetic is right."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import orjson
import pytest
import yaml

from consumer.devkit.bench.cli import options_from, parse_args
from consumer.devkit.bench.events import (
    EXTERNAL_ID_MAPPING,
    MATCH_MAPPING,
    Backlog,
    EventFactory,
    iso_ms,
    message_key,
    person_email,
    seed_records,
    zipf_chooser,
)
from consumer.devkit.bench.figures import (
    CallFigures,
    Row,
    match_latencies,
    people_bound,
    percentile,
    render_table,
    rss_profile,
    steady_rate,
)
from consumer.devkit.emulator.fields import EXAMPLE_MAPPING
from consumer.mapping import parse_mapping
from consumer.model.changes import Accepted, Ignored
from consumer.stages.parse import ParseRules, parse_message

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mapping.example.yaml"


def test_the_bench_mapping_is_the_project_example() -> None:
    assert yaml.safe_load(EXAMPLE_MAPPING) == yaml.safe_load(FIXTURE.read_text())


def test_the_mappings_parse_and_use_the_modes_they_are_named_for() -> None:
    external = parse_mapping(EXTERNAL_ID_MAPPING).targets[0]
    assert external.external_id_field and external.upsert_mode
    assert external.sync_state_field is None
    match = parse_mapping(MATCH_MAPPING).targets[0]
    assert match.external_id_field is None and match.sync_state_field


def test_events_are_accepted_or_ignored_by_design_with_increasing_times() -> None:
    backlog = Backlog(3000, 300, 1.0, seed=2, start_ms=1_780_000_000_000)
    kinds: Counter[str] = Counter()
    last = None
    for key, value, when in backlog.records():
        result = parse_message(value, ParseRules(), when)
        doc = orjson.loads(value)
        kinds[doc["type"]] += 1
        if isinstance(result, Accepted):
            change = result.change
            assert message_key(change.organization_user_id) == key
            assert change.event_time.timestamp() * 1000 == pytest.approx(when)
            assert last is None or change.event_time > last
            last = change.event_time
        else:
            # Only pending approvals and CPRA events are ignored; nothing is rejected.
            assert isinstance(result, Ignored), result
            assert "pending_approval" in result.reason or "cpra" in result.reason
    assert kinds["event.created"] > 0.8 * 3000
    assert kinds["user.updated"] > 0.05 * 3000
    assert kinds["event.updated"] > 0.01 * 3000


def test_user_updates_change_something_between_old_and_new() -> None:
    factory = EventFactory(seed=3)
    seen = 0
    for n in range(400):
        doc = orjson.loads(factory.message(person_email(n), 1_780_000_000_000 + n))
        if doc["type"] != "user.updated":
            continue
        seen += 1
        params = doc["parameters"]
        old = params["old_entity"]["consents"]["purposes"]
        new = params["new_entity"]["consents"]["purposes"]
        assert old != new
        assert params["old_entity"]["updated_at"] < params["new_entity"]["updated_at"]
    assert seen > 10


def test_emails_are_unique_valid_and_keyed_lower_case() -> None:
    emails = [person_email(n) for n in range(5000)]
    assert len({e.lower() for e in emails}) == 5000
    assert any(e != e.lower() for e in emails)
    for email in emails[:50]:
        assert message_key(email) == email.lower().encode()
        local, _, domain = email.partition("@")
        assert local and "." in domain and " " not in email


def test_zipf_is_skewed_and_a_permutation_is_every_person_once() -> None:
    draw = zipf_chooser(1000, 1.0, random.Random(1))
    counts = Counter(draw() for _ in range(20_000))
    top = counts.most_common(1)[0][1]
    # Rank 1 takes 1/H(1000) (about 13%) of the draws under s=1; uniform would be 0.1%.
    assert 0.09 < top / 20_000 < 0.17
    assert all(0 <= k < 1000 for k in counts)
    uniform = list(Backlog(500, 500, None).people_order())
    assert sorted(uniform) == list(range(500))


def test_seed_records_hold_what_the_service_looks_up() -> None:
    contact, lead = seed_records([7]), seed_records([7], lead=True)
    assert contact == [
        {"Email": person_email(7), "LastName": "Seeded", "Didomi_Id__c": person_email(7).lower()}
    ]
    assert lead[0]["Company"] and lead[0]["Email"] == person_email(7)


def test_iso_ms_is_didomis_format() -> None:
    assert iso_ms(1_779_268_443_512) == "2026-05-20T09:14:03.512Z"


def test_percentile_interpolates() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.99) == pytest.approx(9.9)
    assert math.isnan(percentile([], 0.5))


def test_steady_rate_leaves_out_the_ramp_and_the_tail() -> None:
    # 10 records/s for 10 s, with a slow start and a straggler at the end.
    points = [(0.0, 1), *((float(t), 10) for t in range(1, 11)), (30.0, 1)]
    rate, window = steady_rate(points)
    assert rate == pytest.approx(10.0)
    assert window == pytest.approx(9.0)
    assert math.isnan(steady_rate([(0.0, 5)])[0])


def test_latencies_match_the_first_write_at_or_after_production() -> None:
    produced = [("a", 1.0), ("a", 5.0), ("b", 2.0), ("c", 3.0)]
    writes = [("a", 1.4), ("a", 5.2), ("b", 1.0), ("b", 2.5)]
    found, missing = match_latencies(produced, writes)
    assert found == pytest.approx([0.4, 0.2, 0.5])
    assert missing == 1  # c was never written


def test_call_figures_and_bounds() -> None:
    figures = CallFigures.from_summary(
        [
            {"kind": "query", "sobject": "Contact", "calls": 3, "sent": 450, "ok": 300},
            {"kind": "update", "sobject": "Contact", "calls": 3, "sent": 300, "ok": 300},
            {"kind": "create", "sobject": "Contact", "calls": 2, "sent": 150, "ok": 150},
            {"kind": "delete", "sobject": "Contact", "calls": 9, "sent": 9, "ok": 9},
        ]
    )
    assert figures.calls(("update", "create")) == 5
    assert figures.records_per_write() == pytest.approx(90.0)
    # ceil(450/200) + ceil(300/200) + ceil(150/200); deletes are not the sync's work.
    assert figures.packed_bound() == 3 + 2 + 1
    assert len(figures.lines()) == 4
    written = {("Contact", "update"): {f"p{i}" for i in range(250)}}
    assert people_bound(written, {"Contact": 401}) == 2 + 3


def test_rows_judge_ratios_or_figures_and_explain_misses() -> None:
    slow = Row("a", 50.0, "events/s", 100.0, "passthrough", 0.7, why="CPU")
    assert slow.ratio == 0.5 and slow.met is False
    small = Row("d", 120.0, "MB", None, "-", 250.0, at_most=True, absolute=True)
    assert small.met is True
    info = Row("p50", 10.0, "ms", 20.0, "ideal", None)
    assert info.met is None
    table = render_table([slow, small, info])
    assert "MISSED" in table and "a: MISSED. CPU" in table
    assert "<= 250 MB" in table and "ratio >= 0.7" in table


def test_quick_and_million_options() -> None:
    assert options_from(parse_args(["--million"])).rss_events == (100_000, 1_000_000)
    quick = options_from(parse_args(["--quick"]))
    assert quick.events < 100_000 and quick.rss_events == (10_000,)
    assert parse_args(["--only", "b"]).sections == {"a", "b"}
    with pytest.raises(SystemExit):
        parse_args(["--only", "z"])


def test_rss_profile_marks_quarters_and_the_growth_while_draining() -> None:
    # 100 MB growing by 1 MB per 10,000 outputs, and a drop at the very end (drained).
    samples = [(n, 102_400 + n // 10_000 * 1024) for n in range(0, 100_000, 5000)]
    samples.append((100_000, 90 * 1024))
    marks, growth = rss_profile(samples, 100_000)
    assert marks == [102.0, 105.0, 107.0, 90.0]
    assert growth == pytest.approx(10.0, rel=0.1)
    flat = [(n, 100 * 1024) for n in range(0, 100_001, 5000)]
    assert rss_profile(flat, 100_000)[1] == 0.0
    assert math.isnan(rss_profile([(10, 1024)], 100)[1])
    # The last sample stands for the end when the run ended between two samples.
    assert rss_profile([(0, 1024), (90, 2048)], 100)[0][3] == 2.0


def test_a_profiled_service_keeps_its_exit_code_and_writes_its_stats(tmp_path: Path) -> None:
    from consumer.devkit.bench import profiled

    out = tmp_path / "service.prof"
    # A usage error ends the command before it touches logging or the network.
    with pytest.raises(SystemExit) as ended:
        profiled.main([str(out), "run", "--no-such-option"])
    assert ended.value.code == 2  # not swallowed, as `python -m cProfile` does
    assert out.stat().st_size > 0
