"""The `fleet` operator commands, run in-process against a real `fleet serve`: tables for people,
`--json` for scripts, a non-zero exit with the coordinator's code and detail on error."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from fleetclient import commands, tables
from tests.factory.conftest import closed_port


def submit(cli, product, key, *options):
    return cli.json("jobs", "submit", "--product", product, "--idempotency-key", key, "--title", f"Job {key}", *options)


class TestJobs:
    def test_submit_prints_the_job_and_a_repeat_says_so(self, fleet_cli, product):
        code, out, _ = fleet_cli("jobs", "submit", "-p", product, "-k", "k1", "-t", "Fix login", "-c", "python,web",
                                 "--priority", "high")
        again_code, again, _ = fleet_cli("jobs", "submit", "-p", product, "-k", "k1", "-t", "Fix login",
                                         "-c", "python,web", "--priority", "high")

        assert code == again_code == 0
        assert out.startswith(f"submitted {product}:") and "queued" in out and "Fix login" in out
        assert again.startswith("already submitted:")

    def test_the_connection_options_may_come_before_the_command(self, fleet_cli, product, monkeypatch):
        submit(fleet_cli, product, "k1")
        monkeypatch.setenv("FLEET_URL", f"http://127.0.0.1:{closed_port()}")

        before = fleet_cli("--url", fleet_cli.url, "--timeout", "5", "jobs", "list", "--product", product)
        after = fleet_cli("--url", "http://127.0.0.1:1", "jobs", "list", "--url", fleet_cli.url, "--product", product)
        neither = fleet_cli("jobs", "list", "--product", product, "--timeout", "2")

        assert before[0] == after[0] == 0 and "k1" not in before[2]
        assert len(before[1].splitlines()) == len(after[1].splitlines()) == 2  # the header, the job
        assert neither[0] == 3  # FLEET_URL names a closed port

    @pytest.mark.parametrize("argv, named", [
        (("--timeout", "0", "jobs", "list"), "--timeout"),
        (("--timeout", "-1", "jobs", "list"), "--timeout"),
        (("weights", "set", "web", "--age", "1e999"), "--age"),
        (("jobs", "submit", "-p", "web", "-t", "x", "--estimated-cost", "nan"), "--estimated-cost"),
        (("budgets", "set", "web", "--ceiling", "inf"), "--ceiling"),
        (("factory", "run", "--factory-id", "f", "--product", "web", "--drain-seconds", "-5", "--", "true"), "--drain-seconds"),
        (("factory", "run", "--factory-id", "f", "--product", "web", "--kill-grace", "-1", "--", "true"), "--kill-grace"),
        (("factory", "run", "--factory-id", "f", "--product", "web", "--once", "--max-jobs", "3", "--", "true"), "--once"),
        (("factory", "run", "--factory-id", "f", "--product", "web", "--seats", "0", "--", "true"), "--seats"),
        (("factory", "run", "--factory-id", "f", "--product", "web", "--max-jobs", "0", "--", "true"), "--max-jobs"),
        (("factory", "run", "--factory-id", "f", "--product", "web", "--backstop-polls", "0", "--", "true"),
         "--backstop-polls"),
    ])
    def test_a_number_out_of_range_is_a_usage_error_naming_its_option(self, fleet_cli, argv, named):
        # Regression: these were a ValueError traceback and exit 1 ("the coordinator refused")
        code, _, err = fleet_cli(*argv)
        assert code == commands.EXIT_USAGE and named in err and "Traceback" not in err

    def test_submit_json_is_the_job_document(self, fleet_cli, product):
        submit(fleet_cli, product, "a")
        job = submit(fleet_cli, product, "k1", "--capabilities", "go", "--max-attempts", "5", "--deps", "a")

        assert (job["productId"], job["idempotencyKey"], job["stage"]) == (product, "k1", "blocked")
        assert (job["capabilities"], job["maxAttempts"], job["deps"]) == (["go"], 5, ["a"])

    def test_submit_from_a_file_with_options_winning(self, fleet_cli, product, tmp_path):
        spec = tmp_path / "job.json"
        spec.write_text(json.dumps({"productId": product, "idempotencyKey": "from-file", "title": "file title",
                                    "bodyMd": "# details"}))

        job = fleet_cli.json("jobs", "submit", "--file", str(spec), "--title", "option title")

        assert (job["idempotencyKey"], job["title"], job["bodyMd"]) == ("from-file", "option title", "# details")

    def test_submit_without_a_key_makes_one_up(self, fleet_cli, product):
        job = fleet_cli.json("jobs", "submit", "-p", product, "-t", "anything")
        assert job["idempotencyKey"].startswith("cli-")

    def test_list_shows_a_table_and_json_the_page(self, fleet_cli, product):
        first = submit(fleet_cli, product, "k1")
        second = submit(fleet_cli, product, "k2")

        code, out, _ = fleet_cli("jobs", "list", "--product", product)
        page = fleet_cli.json("jobs", "list", "--product", product, "--limit", "1")
        everything = fleet_cli.json("jobs", "list", "--product", product, "--limit", "1", "--all")

        assert code == 0
        header, *rows = out.splitlines()
        assert header.split() == ["ID", "STAGE", "PRIORITY", "ATTEMPTS", "FACTORY", "UPDATED", "TITLE"]
        assert [row.split()[0] for row in rows] == [second["id"], first["id"]]  # newest first
        assert [job["id"] for job in page["items"]] == [second["id"]]
        assert page["nextOffset"] == 1 or page["continuation"]
        assert [job["id"] for job in everything["items"]] == [second["id"], first["id"]]

    def test_list_says_where_the_next_page_starts(self, fleet_cli, product):
        submit(fleet_cli, product, "k1")
        submit(fleet_cli, product, "k2")
        _, out, _ = fleet_cli("jobs", "list", "--product", product, "--limit", "1")
        assert out.splitlines()[-1].startswith("more: --")

    def test_list_filters_by_stage(self, fleet_cli, product):
        submit(fleet_cli, product, "k1")
        assert fleet_cli.json("jobs", "list", "-p", product, "--stage", "shipped")["items"] == []
        _, out, _ = fleet_cli("jobs", "list", "-p", product, "--stage", "shipped")
        assert out.strip() == "no jobs"

    def test_show_lists_fields_runs_and_events(self, fleet_cli, client, product):
        job = submit(fleet_cli, product, "k1", "--body", "Make it *fast*")
        lease = client.claim("f1", product).lease.lease_id
        client.release_lease(job["id"], lease, stage="testing", insights={"costUsd": 1.25})

        code, out, _ = fleet_cli("jobs", "show", job["id"])

        assert code == 0
        assert f"id:              {job['id']}" in out and "stage:           testing" in out
        assert "Make it *fast*" in out
        assert "runs:" in out and "$1.25" in out and "f1" in out
        assert "events (latest" in out and "claimed" in out
        assert fleet_cli.json("jobs", "show", job["id"])["runs"][0]["insights"] == {"costUsd": 1.25}

    def test_action_moves_the_job_and_records_the_actor(self, fleet_cli, product):
        job = submit(fleet_cli, product, "k1")

        code, out, _ = fleet_cli("jobs", "action", job["id"], "cancel", "--reason", "dup", "--actor", "ops")
        shown = fleet_cli.json("jobs", "show", job["id"])

        assert code == 0 and out.startswith("cancel: ") and "cancelled" in out
        assert shown["events"][-1]["actor"] == "ops" and shown["events"][-1]["detail"] == {"reason": "dup"}

    def test_dag_draws_the_tree(self, fleet_cli, product, tmp_path):
        spec = tmp_path / "composite.json"
        spec.write_text(json.dumps({
            "productId": product, "idempotencyKey": "parent", "title": "Epic", "kind": "composite",
            "children": [{"idempotencyKey": "c1", "title": "Part one"}, {"idempotencyKey": "c2", "title": "Part two"}],
        }))
        parent = fleet_cli.json("jobs", "submit", "--file", str(spec))

        code, out, _ = fleet_cli("jobs", "dag", parent["id"])
        tree = fleet_cli.json("jobs", "dag", parent["id"])

        assert code == 0
        lines = out.splitlines()
        assert lines[0].startswith(parent["id"]) and "Epic" in lines[0]
        assert sorted(line[:3] for line in lines[1:]) == ["└─ ", "├─ "]
        assert {child["title"] for child in tree["children"]} == {"Part one", "Part two"}

    def test_review_gate_commands(self, fleet_cli, client, product, server, suite_token):
        job = submit(fleet_cli, product, "k1")
        lease = client.claim("f1", product).lease.lease_id
        client.release_lease(job["id"], lease, stage="testing")
        # each reviewer is a principal of its own: a reviewer token named for them
        reviewer = {name: reviewer_token(server.url, suite_token, name) for name in ("ann", "bob", "eve")}

        requested = fleet_cli.json("jobs", "request-review", job["id"], "--required", "2", "--reviewers", "ann,bob")
        first = fleet_cli("jobs", "review", job["id"], "approve", "--reviewer", "ann", "--token", reviewer["ann"])
        again = fleet_cli("jobs", "review", job["id"], "approve", "--reviewer", "ann", "--token", reviewer["ann"])
        code, out, err = fleet_cli("jobs", "review", job["id"], "approve", "--reviewer", "eve", "--token", reviewer["eve"])
        shipped = fleet_cli.json("jobs", "review", job["id"], "approve", "--reviewer", "bob", "-m", "lgtm",
                                 "--token", reviewer["bob"])

        assert requested["review"]["required"] == 2
        # the same reviewer approving twice counts once, and the tally says so
        assert first[1].startswith("approved (1/2):") and again[1].startswith("approved (1/2):")
        assert code == 1 and "403 forbidden" in err
        assert shipped["stage"] == "shipped"

    def test_a_review_rejection_says_so(self, fleet_cli, client, product, server, suite_token):
        job = submit(fleet_cli, product, "k1")
        client.release_lease(job["id"], client.claim("f1", product).lease.lease_id, stage="testing")
        fleet_cli.json("jobs", "request-review", job["id"], "--required", "1", "--reviewers", "ann")

        code, out, _ = fleet_cli("jobs", "review", job["id"], "reject", "--reviewer", "ann", "-m", "no tests",
                                 "--token", reviewer_token(server.url, suite_token, "ann"))

        assert code == 0 and out.startswith("rejected:") and "queued" in out


class TestLateReports:
    def test_a_run_whose_lease_was_taken_reports_its_cost_to_the_budget(self, fast_cli, fast_client, product, tmp_path):
        fast_cli("budgets", "set", product, "--ceiling", "10", "--window", "daily")
        job = submit(fast_cli, product, "k1")
        lease = fast_client.claim("f1", product).lease.lease_id
        fast_cli("jobs", "action", job["id"], "requeue", "--reason", "stuck")  # the lease taken from f1
        # what the factory's command printed on its last line, its cost and PR corrected by options
        said = tmp_path / "report.json"
        said.write_text(json.dumps({"insights": {"costUsd": 0.1, "tokensIn": 900, "model": "m1"},
                                    "prUrl": "https://github.com/o/r/pull/6", "artifacts": ["log.txt"],
                                    "exitCode": 0}))

        code, out, err = fast_cli("jobs", "report", job["id"], "--lease-id", lease, "--file", str(said),
                                "--cost-usd", "0.4", "--tokens-out", "300", "--pr-url", "https://github.com/o/r/pull/7",
                                "--branch", "fix/k1")
        shown = fast_cli.json("jobs", "show", job["id"])
        _, shown_out, _ = fast_cli("jobs", "show", job["id"])
        again = fast_cli("jobs", "report", job["id"], "-l", lease, "-f", str(said), "--cost-usd", "0.4",
                         "--tokens-out", "300", "--pr-url", "https://github.com/o/r/pull/7", "--branch", "fix/k1")
        other_code, _, other_err = fast_cli("jobs", "report", job["id"], "-l", lease, "--cost-usd", "3")

        assert code == 0 and out.startswith(f"reported run 1, $0.40: {job['id']}  queued")
        assert "ignoring in --file what a run report does not hold: exitCode" in err  # as the runner does
        late = shown["runs"][0]["lateReport"]
        assert late["insights"] == {"costUsd": 0.4, "tokensIn": 900, "tokensOut": 300, "model": "m1"}
        assert (late["prUrl"], late["branch"], late["artifacts"]) == ("https://github.com/o/r/pull/7", "fix/k1", ["log.txt"])
        assert shown["stage"] == "queued" and fast_cli.json("budgets", "show", product)["spentUsd"] == 0.4
        # `jobs show` names the lease the run was held under, for an admin: what the report names
        runs = shown_out[shown_out.index("runs:"):].splitlines()
        assert runs[1].split()[-1] == "LEASE" and runs[2].split()[-1] == lease
        # the same report again is answered and counts nothing more; a different one is refused
        assert again[0] == 0 and fast_cli.json("budgets", "show", product)["spentUsd"] == 0.4
        assert other_code == commands.EXIT_REFUSED and "409 idempotency_conflict" in other_err

    def test_a_report_on_stdin(self, fleet_cli, client, product, monkeypatch):
        job = submit(fleet_cli, product, "k1")
        lease = client.claim("f1", product).lease.lease_id
        fleet_cli("jobs", "action", job["id"], "requeue")
        monkeypatch.setattr("sys.stdin", io.StringIO('{"insights": {"costUsd": 1.5}}'))

        code, out, _ = fleet_cli("jobs", "report", job["id"], "-l", lease, "-f", "-")
        # a run reported with no cost says so
        second = client.claim("f1", product).lease.lease_id
        fleet_cli("jobs", "action", job["id"], "requeue")
        costless = fleet_cli("jobs", "report", job["id"], "-l", second, "--pr-url", "https://github.com/o/r/pull/8")

        assert code == 0 and out.startswith("reported run 1, $1.50:")
        assert costless[0] == 0 and costless[1].startswith("reported run 2, no cost:")

    def test_what_a_report_is_refused(self, fleet_cli, client, product, tmp_path):
        job = submit(fleet_cli, product, "k1")
        lease = client.claim("f1", product).lease.lease_id
        files = {
            "listed": "[1, 2]", "stringly": '{"artifacts": "log.txt", "insights": {"costUsd": 1}}',
            "unknown": '{"pr_url": "https://github.com/o/r/pull/1", "insights": {"costUsd": 1}}',
            "misspelt": '{"insights": {"costUSD": 1, "tokens_in": 5}}', "nan": '{"insights": {"costUsd": NaN}}',
            "huge": '{"insights": {"costUsd": 1e999}}', "twice": '{"insights": {"costUsd": 5, "costUsd": 1}}',
            "cut": '{"insights": {"costUsd": 1', "top": "1e999", "deep": "[" * 40 + "]" * 40,
        }
        for name, text in files.items():
            (tmp_path / name).write_text(text)
        listed, stringly = tmp_path / "listed", tmp_path / "stringly"

        held = fleet_cli("jobs", "report", job["id"], "--lease-id", lease, "--cost-usd", "1")
        empty = fleet_cli("jobs", "report", job["id"], "--lease-id", lease)
        not_an_object = fleet_cli("jobs", "report", job["id"], "--lease-id", lease, "--file", str(listed))
        not_a_list = fleet_cli("jobs", "report", job["id"], "--lease-id", lease, "--file", str(stringly))
        not_a_number = fleet_cli("jobs", "report", job["id"], "--lease-id", lease, "--cost-usd", "nan")
        negative = fleet_cli("jobs", "report", job["id"], "--lease-id", lease, "--tokens-in", "-3")
        bad_files = {name: fleet_cli("jobs", "report", job["id"], "-l", lease, "-f", str(tmp_path / name))
                     for name in ("unknown", "misspelt", "nan", "huge", "twice", "cut", "top", "deep")}
        fleet_cli("jobs", "action", job["id"], "requeue")
        unknown = fleet_cli("jobs", "report", job["id"], "--lease-id", "not-a-lease", "--cost-usd", "1")

        assert held[0] == commands.EXIT_REFUSED and "still holds job" in held[2]  # release it instead
        assert empty[0] == commands.EXIT_USAGE and "nothing to report" in empty[2]
        assert not_an_object[0] == commands.EXIT_USAGE and "JSON object" in not_an_object[2]
        assert not_a_list[0] == commands.EXIT_USAGE and "artifacts a list" in not_a_list[2]
        assert not_a_number[0] == commands.EXIT_USAGE and "--cost-usd: 'nan' is not an amount" in not_a_number[2]
        assert negative[0] == commands.EXIT_USAGE and "--tokens-in: '-3' is not a count" in negative[2]
        assert {name: code for name, (code, _, _) in bad_files.items()} == dict.fromkeys(bad_files, commands.EXIT_USAGE)
        assert "pr_url is spelt prUrl" in bad_files["unknown"][2]
        assert "insights.costUSD is spelt costUsd, insights.tokens_in is spelt tokensIn" in bad_files["misspelt"][2]
        assert "NaN is not valid JSON" in bad_files["nan"][2]
        assert "insights.costUsd is a number out of range" in bad_files["huge"][2]
        assert "'costUsd' appears twice" in bad_files["twice"][2]
        assert f"{tmp_path / 'cut'}: file is not valid JSON" in bad_files["cut"][2]  # a file, not a body
        assert "the file is a number out of range" in bad_files["top"][2]
        assert "file is nested deeper than 32 levels" in bad_files["deep"][2]
        assert unknown[0] == commands.EXIT_REFUSED and "keeps no run held under lease not-a-lease" in unknown[2]
        assert fleet_cli.json("jobs", "show", job["id"])["runs"][0]["lateReport"] is None


class TestProductsAndFactories:
    def test_weights_show_and_set(self, fleet_cli, product):
        code, out, _ = fleet_cli("weights", "set", product, "--age", "3", "--retries", "-1")
        shown = fleet_cli.json("weights", "show", product)

        assert code == 0 and out.splitlines()[0] == f"weights of {product}"
        assert out.splitlines()[2].split() == ["age", "3", "3"]
        assert shown["weights"] == {"age": 3.0, "retries": -1.0} and shown["resolved"]["priority"] == 10.0
        reset = fleet_cli.json("weights", "set", product, "--reset", "age", "--priority", "4")
        assert reset["weights"] == {"retries": -1.0, "priority": 4.0} and reset["resolved"]["age"] == 1.0
        assert fleet_cli("weights", "set", product, "--reset", "agee")[0] == commands.EXIT_USAGE
        assert fleet_cli("weights", "set", product, "--reset", "age", "--age", "2")[0] == commands.EXIT_USAGE

    def test_weights_set_needs_a_weight(self, fleet_cli, product):
        code, _, err = fleet_cli("weights", "set", product)
        assert code == commands.EXIT_USAGE and "at least one" in err

    def test_factories_table_and_json(self, fleet_cli, client, product):
        client.heartbeat(f"factory-{product}", [product], ["python"], 4)

        code, out, _ = fleet_cli("factories")
        listed = fleet_cli.json("factories")

        assert code == 0 and out.splitlines()[0].split()[:3] == ["ID", "HEALTH", "SEATS"]
        row = next(line for line in out.splitlines() if line.startswith(f"factory-{product}"))
        assert row.split()[1:3] == ["online", "0/4"]
        assert any(f["id"] == f"factory-{product}" and f["seatLimit"] == 4 for f in listed["items"])

    def test_queue_state(self, fleet_cli, product):
        submit(fleet_cli, product, "k1")

        code, out, _ = fleet_cli("queue-state", "--product", product)

        assert code == 0 and out.splitlines()[:2] == [f"product: {product}", "version: 1"]
        assert fleet_cli.json("queue-state", "-p", product)["version"] == 1


class TestBudgets:
    def test_disabled_budgets_are_said_plainly(self, fleet_cli, product):
        code, out, err = fleet_cli("budgets", "show", product)

        assert code == commands.EXIT_REFUSED and out == ""
        assert "budgets are turned off on this coordinator" in err and "feature_disabled" in err

    def test_a_product_without_a_budget_is_told_how_to_set_one(self, fast_cli, product):
        code, _, err = fast_cli("budgets", "show", product)
        assert code == 1 and f"fleet budgets set {product} --ceiling" in err

    def test_set_pause_resume(self, fast_cli, product):
        code, out, _ = fast_cli("budgets", "set", product, "--ceiling", "25", "--window", "weekly")
        paused = fast_cli.json("budgets", "pause", product, "--reason", "vendor outage")
        _, paused_out, _ = fast_cli("budgets", "show", product)
        resumed = fast_cli.json("budgets", "resume", product)
        shown = fast_cli.json("budgets", "show", product)

        lines = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in out.splitlines()}
        assert code == 0 and lines["ceiling"] == "$25.00" and lines["window"].startswith("weekly from")
        assert ", rolls at " in lines["window"]
        assert lines["default estimate"] == "none" and lines["claims"] == "open"
        assert "refused (budget_paused)" in paused_out
        assert paused["paused"] is True and paused["pauseReason"] == "vendor outage" and resumed["paused"] is False
        assert (shown["ceilingUsd"], shown["window"], shown["spentUsd"]) == (25.0, "weekly", 0.0)

    def test_the_window_and_default_estimate_are_set_kept_and_cleared(self, fast_cli, product):
        code, out, _ = fast_cli("budgets", "set", product, "--ceiling", "25", "--window", "weekly",
                                "--default-estimate", "2.5")
        kept = fast_cli.json("budgets", "set", product, "--ceiling", "30")
        cleared = fast_cli.json("budgets", "set", product, "--ceiling", "30", "--no-default-estimate")

        only_default = fast_cli.json("budgets", "set", product, "--default-estimate", "4")
        nothing = fast_cli("budgets", "set", product)

        assert code == 0 and "default estimate: $2.50" in out
        assert (kept["ceilingUsd"], kept["window"], kept["defaultEstimateUsd"]) == (30.0, "weekly", 2.5)
        assert cleared["defaultEstimateUsd"] is None and cleared["window"] == "weekly"
        assert (only_default["ceilingUsd"], only_default["defaultEstimateUsd"]) == (30.0, 4.0)
        assert nothing[0] == 2 and "give at least one of --ceiling" in nothing[2]

    def test_show_says_when_jobs_that_name_no_cost_wait(self, fast_cli, fast_client, product):
        fast_cli("budgets", "set", product, "--ceiling", "5", "--default-estimate", "4")
        submit(fast_cli, product, "k1")
        fast_client.claim("f1", product)  # 4 reserved: 1 left, under the default

        code, out, _ = fast_cli("budgets", "show", product)

        assert code == 0
        assert "claims:           open, but jobs that name no cost wait: $1.00 left, under the default estimate $4.00" in out

    @pytest.mark.parametrize("value", ["-1", "nan", "inf", "two"])
    def test_a_bad_default_estimate_is_a_usage_error(self, fast_cli, product, value):
        code, _, err = fast_cli("budgets", "set", product, "--ceiling", "25", "--default-estimate", value)
        assert code == 2 and "--default-estimate" in err

    def test_a_default_estimate_and_none_at_once_is_a_usage_error(self, fast_cli, product):
        code, _, err = fast_cli("budgets", "set", product, "--ceiling", "25", "--default-estimate", "1", "--no-default-estimate")
        assert code == 2 and "not allowed with" in err


class TestErrors:
    def test_a_refusal_exits_1_with_the_code_and_detail(self, fleet_cli, product):
        code, out, err = fleet_cli("jobs", "show", f"{product}:aaaaaaaaaaaaaaaaaaaa")
        assert code == 1 and out == ""
        assert err.strip() == f"fleet: error: 404 not_found: no job '{product}:aaaaaaaaaaaaaaaaaaaa'"

    def test_with_json_the_problem_document_is_printed_too(self, fleet_cli):
        code, out, err = fleet_cli("jobs", "submit", "-p", "not valid", "-k", "k", "--json")

        assert code == 1 and "productId:" in err
        assert json.loads(out)["code"] == "validation_error"

    def test_an_unreachable_coordinator_exits_3(self, fleet_cli):
        code, _, err = fleet_cli("factories", "--url", f"http://127.0.0.1:{closed_port()}")
        assert code == commands.EXIT_UNREACHABLE and "cannot reach the coordinator" in err

    def test_a_bad_option_is_a_usage_error(self, fleet_cli):
        code, _, err = fleet_cli("jobs", "action", "web:x", "explode")
        assert code == 2 and "invalid choice" in err

    def test_an_empty_job_id_is_a_usage_error_not_another_route(self, fleet_cli):
        for command in (("show", ""), ("report", " ", "--lease-id", "l", "--cost-usd", "1")):
            code, _, err = fleet_cli("jobs", *command)
            assert code == 2 and "a job id is required" in err

    def test_the_factory_runner_needs_a_command(self, fleet_cli, product):
        code, _, err = fleet_cli("factory", "run", "--factory-id", "f1", "--product", product)
        assert code == 2 and "command" in err

    def test_the_factory_runner_ends_at_once_when_the_coordinator_cannot_be_reached(self, fleet_cli):
        # Regression: `--once` against a wrong FLEET_URL retried its claim every poll, forever
        code, _, err = fleet_cli("--url", f"http://127.0.0.1:{closed_port()}", "factory", "run", "--factory-id", "f1",
                                 "--product", "web", "--once", "--", "true")
        assert code == commands.EXIT_UNREACHABLE and "cannot reach the coordinator" in err

    def test_the_factory_runner_refuses_a_command_it_cannot_run_and_claims_nothing(self, fleet_cli, product):
        job = submit(fleet_cli, product, "k1")

        code, _, err = fleet_cli("factory", "run", "--factory-id", "f1", "--product", product, "--", "./no-agent.sh")

        assert code == commands.EXIT_USAGE and "cannot run ./no-agent.sh" in err and "not an executable file" in err
        assert fleet_cli.json("jobs", "show", job["id"])["stage"] == "queued"


def reviewer_token(url: str, admin_token: str, name: str) -> str:
    """A reviewer token named `name`, made by an admin over HTTP (`POST /fleet/tokens`)."""
    answer = requests.post(f"{url}/fleet/tokens", json={"role": "reviewer", "name": name},
                           headers={"Authorization": f"Bearer {admin_token}"}, timeout=10)
    assert answer.status_code == 201, answer.text
    return answer.json()["token"]


def test_a_reader_closing_the_pipe_early_ends_the_cli_quietly():
    # Regression: `fleet tokens list --json | head -1` printed a BrokenPipeError traceback
    program = (
        "import argparse, sys\n"
        "from shared.devhost import cli\n"
        "def run(args):\n"
        "    for _ in range(100_000):\n"
        "        print('x' * 100)\n"
        "    return 0\n"
        "cli.build_parser = lambda: type('P', (), {'parse_args': lambda self, argv: argparse.Namespace(run=run)})()\n"
        "sys.exit(cli.main([]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen([sys.executable, "-c", program], cwd=root, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout.read(10) == b"x" * 10
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=30) == 141 and "Traceback" not in err and "BrokenPipe" not in err


def test_a_time_ahead_reads_as_how_soon():
    # a lease's or a token's expiry printed "(in the future)"
    assert (tables.ago(-125), tables.ago(-3 * 86400), tables.ago(30), tables.ago(7200)) == (
        "in 2m", "in 3d", "30s ago", "2h ago")
