"""Validate the mapping against the org: used by ``python -m consumer check`` and at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from consumer.errors import SalesforceRequestError
from consumer.mapping import (
    MappingConfig,
    Problem,
    TargetPlan,
    describe_fields,
    plan_target,
    validate_against_describe,
    warnings_for,
)
from consumer.salesforce.client import SalesforceClient


@dataclass
class CheckReport:
    """What the check found: the plans to run with, and every problem."""

    instance_url: str = ""
    api_version: str = ""
    api_usage: tuple[int, int] | None = None
    plans: list[TargetPlan] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: Allowed but risky (printed; they do not fail the check).
    warnings: list[Problem] = field(default_factory=list)
    field_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def render(self) -> str:
        """The report for an operator, one line per finding."""
        lines = [
            f"Salesforce instance: {self.instance_url or '(no session)'}",
            f"API version: {self.api_version}",
        ]
        if self.api_usage is not None:
            used, limit = self.api_usage
            lines.append(f"API usage: {used} of {limit} calls in the last 24 hours")
        for plan in self.plans:
            mapping = plan.mapping
            lines.append(
                f"Target {mapping.sobject}: {self.field_counts.get(mapping.sobject, 0)} fields "
                f"described; {sum(1 for _ in mapping.mapped_fields())} mapped; "
                f"upsert_mode={'on' if mapping.upsert_mode else 'off'}; "
                f"match_field={mapping.match_field}; "
                f"sync_state_field={mapping.sync_state_field or '(none)'}"
            )
            for pref, sep in plan.preference_separators.items():
                how = "';'-joined (multipicklist)" if sep == ";" else "comma list (text)"
                lines.append(f"  preference {pref} -> {mapping.preferences[pref]}: {how}")
        if self.warnings:
            lines.append(f"WARNINGS ({len(self.warnings)}):")
            lines.extend(f"  - {w}" for w in self.warnings)
        if self.problems:
            lines.append(f"PROBLEMS ({len(self.problems)}):")
            lines.extend(f"  - {p}" for p in self.problems)
        else:
            lines.append("OK: the mapping fits the org.")
        return "\n".join(lines)


async def check_mapping(client: SalesforceClient, mapping: MappingConfig) -> CheckReport:
    """Get a session, check the API version, describe each target and validate the mapping.

    Raises the client's errors for a refused login or an unreachable org.
    """
    token = await client.token()
    version = client.api_version
    report = CheckReport(instance_url=token.instance_url, api_version=version)
    served = {str(v.get("version")) for v in await client.versions()}
    if version not in served:
        newest = max(served, key=float) if served else "none"
        report.problems.append(
            Problem(
                "(org)",
                "SALESFORCE_API_VERSION",
                f"version {version} is not served by the org (newest: {newest})",
            )
        )
        return report
    for target in mapping.targets:
        try:
            described = await client.describe(target.sobject)
        except SalesforceRequestError as exc:
            report.problems.append(
                Problem(target.sobject, "sobject", f"cannot describe {target.sobject}: {exc}")
            )
            continue
        fields, ambiguous = describe_fields(described.get("fields") or ())
        report.field_counts[target.sobject] = len(fields)
        report.problems.extend(validate_against_describe(target, fields, ambiguous))
        report.warnings.extend(warnings_for(target))
        report.plans.append(plan_target(target, fields))
    report.api_usage = client.api_usage
    return report
