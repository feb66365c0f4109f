"""What a factory command reports about its run: a JSON object on its last stdout line.

    {"insights": {"costUsd": 0.42, "tokensIn": 1200, "tokensOut": 300},
     "prUrl": "https://github.com/o/r/pull/7", "branch": "aq/job/web-abc", "artifacts": ["log.txt"]}

Every member is optional; anything else in the object is ignored, and named in `ignored` (a
misspelt `insight` would otherwise lose the run's cost without a word). A last line that is not a
JSON object is no report (the command's output is shown, never parsed further).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any


MEMBERS = frozenset({"insights", "prUrl", "branch", "artifacts"})


@dataclass(frozen=True)
class Report:
    insights: dict[str, Any] | None = None
    pr_url: str | None = None
    branch: str | None = None
    artifacts: list[Any] | None = None
    #: Members of the line that are not part of a report, sorted.
    ignored: tuple[str, ...] = ()

    @classmethod
    def parse(cls, line: str | None) -> "Report":
        """The report on `line` (the command's last non-empty stdout line); empty if none."""
        if not line or not line.strip().startswith("{"):
            return cls()
        try:
            # A number no JSON body may carry (NaN, Infinity, 1e999) makes the line no report:
            # the coordinator could not be sent it.
            doc = json.loads(line, parse_constant=_refuse, parse_float=_finite)
        except ValueError:
            return cls()
        if not isinstance(doc, dict):
            return cls()
        insights = doc.get("insights")
        artifacts = doc.get("artifacts")
        return cls(
            insights=insights if isinstance(insights, dict) and insights else None,
            pr_url=_text(doc.get("prUrl")),
            branch=_text(doc.get("branch")),
            artifacts=artifacts if isinstance(artifacts, list) and artifacts else None,
            ignored=tuple(sorted(set(doc) - MEMBERS)),
        )

    def with_pull_request(self, url: str | None, branch: str) -> "Report":
        """The report with what PR mode delivered (it wins over what the command said)."""
        return replace(self, pr_url=url or self.pr_url, branch=branch)

    @property
    def delivers(self) -> bool:
        """Whether it carries more than insights (which only a lease release can record)."""
        return bool(self.pr_url or self.branch or self.artifacts)

    def release_fields(self) -> dict[str, Any]:
        """Keyword arguments for `FleetClient.release_lease`."""
        return {"insights": self.insights, "pr_url": self.pr_url, "branch": self.branch, "artifacts": self.artifacts}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value
