"""The command's report: a JSON object on its last stdout line."""
from __future__ import annotations

import pytest

from fleetclient.report import Report


def test_every_member_is_read():
    line = ('{"insights": {"costUsd": 0.4, "tokensIn": 10}, "prUrl": "https://github.com/o/r/pull/1", '
            '"branch": "aq/job/x", "artifacts": ["a.txt", {"name": "b", "url": "https://x/b"}], "other": 1}')
    report = Report.parse(line)

    assert report.insights == {"costUsd": 0.4, "tokensIn": 10}
    assert (report.pr_url, report.branch) == ("https://github.com/o/r/pull/1", "aq/job/x")
    assert report.artifacts == ["a.txt", {"name": "b", "url": "https://x/b"}]
    assert report.delivers and report.ignored == ("other",)


def test_a_misspelt_member_is_named_as_ignored():
    report = Report.parse('{"insight": {"costUsd": 0.4}, "prURL": "https://x/pull/1"}')

    assert report.insights is None and report.pr_url is None
    assert report.ignored == ("insight", "prURL")


@pytest.mark.parametrize("line", [None, "", "done", "[1, 2]", "{not json", '"text"', '{"insights": 3}',
                                  '{"insights": {"costUsd": 1e999}}', '{"insights": {"costUsd": NaN}}'])
def test_anything_else_is_no_report(line):
    report = Report.parse(line)
    assert report == Report() or report.insights is None
    assert not report.delivers


def test_insights_alone_do_not_deliver():
    report = Report.parse('{"insights": {"costUsd": 1}}')
    assert not report.delivers
    assert report.release_fields() == {"insights": {"costUsd": 1}, "pr_url": None, "branch": None, "artifacts": None}


def test_what_pr_mode_delivered_wins_over_what_the_command_said():
    said = Report.parse('{"prUrl": "https://example.com/old", "branch": "mine"}')
    assert said.with_pull_request("https://github.com/o/r/pull/9", "aq/job/x") == Report(
        pr_url="https://github.com/o/r/pull/9", branch="aq/job/x")
    assert said.with_pull_request(None, "aq/job/x").pr_url == "https://example.com/old"
