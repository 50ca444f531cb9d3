"""What a data check returns: a pure outcome, turned into ``dg.AssetCheckResult`` by one adapter
(``convrec_dagster.checks.run_checks``). No Dagster here."""

from __future__ import annotations

from dataclasses import dataclass, field


class Markdown(str):
    """A metadata value shown as markdown (e.g. a table of example rows)."""


@dataclass
class CheckOutcome:
    """Result of one data check: passed or not, a sentence, and numbers or examples as metadata
    (plain values; dicts and lists show as JSON, :class:`Markdown` as markdown)."""

    passed: bool
    description: str = ""
    metadata: dict = field(default_factory=dict)


def examples_markdown(frame) -> Markdown:
    """Up to 10 rows of a DataFrame as a markdown table ("none" when empty)."""
    return Markdown(frame.head(10).to_markdown(index=False) if len(frame) else "none")
