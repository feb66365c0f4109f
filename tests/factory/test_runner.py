"""The reference factory, run in-process against a real `fleet serve`: what each command outcome
writes, seats, drains, the gate, and PR mode."""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from fleet import claims
from fleet.stages import RunResult, Stage
from fleet.factories import Renewal
from fleetclient import FleetClient, errors, seat
from fleetclient.runner import Runner, RunnerConfig, runnable
from tests.factory.conftest import FAST, git, wait_for

RUN_TIMEOUT = 20.0


def script(tmp_path: Path, body: str, name: str = "job.py") -> tuple[str, ...]:
    """A Python job command; `OUT` in its body is a directory outside its working directory."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text("import json, os, sys, time, pathlib\n"
                    f"OUT = pathlib.Path({str(out)!r})\n" + body)
    return (sys.executable, str(path))


class Running:
    """A runner working in a thread; `result()` waits (bounded) for its exit code."""

    def __init__(self, client: FleetClient, config: RunnerConfig) -> None:
        self.out = io.StringIO()
        self.runner = Runner(client, config, out=self.out)
        self.code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.code = self.runner.run()

    def result(self, timeout: float = RUN_TIMEOUT) -> int:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.runner.drain()
            self.runner.drain()
            self._thread.join(10)
            pytest.fail(f"the runner did not finish within {timeout}s")
        return self.code


def config(product: str, command: tuple[str, ...], **options) -> RunnerConfig:
    defaults = dict(factory_id=f"factory-{product}", product_id=product, command=command, poll_seconds=0.05,
                    max_jobs=1, kill_grace_seconds=2.0)
    return RunnerConfig(**{**defaults, **options})


def run(client, product, command, **options) -> Running:
    return Running(client, config(product, command, **options))


def submit(client, product, key, **fields):
    return client.submit_job(product_id=product, idempotency_key=key, title=f"Job {key}", **fields).job


def rejected_at_review(client, server, product, tmp_path, suite_token):
    """A job a runner parked at testing, whose review gate (one approval, from ann) rejected it:
    queued again with the gate open."""
    job = submit(client, product, "k1")
    assert run(client, product, script(tmp_path, "pass")).result() == 0  # parked at testing
    minted = requests.post(f"{server.url}/fleet/tokens", json={"role": "reviewer", "name": "ann"},
                           headers={"Authorization": f"Bearer {suite_token}"}, timeout=10).json()
    client.request_review(job.id, 1, ["ann"])
    with FleetClient(server.url, token=minted["token"]) as ann:
        assert ann.review(job.id, None, "reject", "redo").stage == Stage.QUEUED
    return job


REPORTING = """
(OUT / (os.environ["FLEET_JOB_ID"].replace(":", "_") + ".env")).write_text(json.dumps({
    "cwd": os.getcwd(), "job": json.load(open(os.environ["FLEET_JOB_FILE"])),
    **{k: v for k, v in os.environ.items() if k.startswith("FLEET_")}}))
print("working")
print(json.dumps({"insights": {"costUsd": 0.75, "tokensIn": 1000, "tokensOut": 200}}))
"""


class TestOutcomes:
    def test_autoship_parks_a_reworked_job_whose_review_gate_is_open(self, client, server, product, tmp_path,
                                                                      suite_token):
        job = rejected_at_review(client, server, product, tmp_path, suite_token)

        running = run(client, product, script(tmp_path, "pass"), autoship=True)

        assert running.result() == 0 and running.runner.stats.outcomes == {"parked": 1}
        assert client.get_job(job.id).stage == Stage.TESTING

    def test_an_autoship_patch_parked_by_the_gate_whose_answer_is_lost_counts_parked(
            self, client, server, product, tmp_path, suite_token, monkeypatch):
        job = rejected_at_review(client, server, product, tmp_path, suite_token)
        real = client.patch_job

        def answer_lost(job_id, lease_id, stage, **kw):  # the PATCH lands; its answer does not
            landed = real(job_id, lease_id, stage, **kw)
            if stage == "shipped":
                raise errors.FleetUnreachable("answer lost")
            return landed

        monkeypatch.setattr(client, "patch_job", answer_lost)
        running = run(client, product, script(tmp_path, 'print(json.dumps({"insights": {"costUsd": 0.5}}))'),
                      autoship=True)

        assert running.result() == 0 and running.runner.stats.outcomes == {"parked": 1}
        stored = client.get_job(job.id)
        assert stored.stage == Stage.TESTING and stored.runs[-1].insights == {"costUsd": 0.5}

    def test_a_report_line_with_a_misspelt_member_is_logged(self, client, product, tmp_path, caplog):
        job = submit(client, product, "k1")
        caplog.set_level("WARNING", logger="fleetclient.factory")

        assert run(client, product, script(tmp_path, 'print(json.dumps({"insight": {"costUsd": 1}}))')).result() == 0

        assert not client.get_job(job.id).runs[-1].insights
        assert f"job {job.id}: report line members 'insight' ignored" in caplog.text

    def test_a_passing_command_parks_its_job_at_testing_with_its_insights(self, client, product, tmp_path):
        job = submit(client, product, "k1")

        running = run(client, product, script(tmp_path, REPORTING))

        assert running.result() == 0
        done = client.get_job(job.id)
        assert done.stage == Stage.TESTING and done.lease is None
        assert done.runs[-1].insights == {"costUsd": 0.75, "tokensIn": 1000, "tokensOut": 200}
        assert [e.detail.get("stage") for e in done.events if e.type == "stage"] == ["building", "testing"]
        assert f"[{job.id}] working" in running.out.getvalue()

    @pytest.mark.parametrize("cost", ['"abc"', "-3"])
    def test_a_report_whose_insights_are_refused_still_parks_its_job(self, client, product, tmp_path, cost):
        # Regression: the refused PATCH testing left the job building under its lease, the run
        # open, until the lease ran out and the sweep counted an attempt.
        job = submit(client, product, "k1")
        running = run(client, product, script(tmp_path, f'print(json.dumps({{"insights": {{"costUsd": {cost}}}}}))'))
        assert running.result() == 0
        done = client.get_job(job.id)
        assert (done.stage, done.lease) == (Stage.TESTING, None)
        assert running.runner.stats.outcomes == {"parked": 1}

    def test_the_command_gets_the_job_in_its_environment_and_its_own_directory(
            self, client, product, tmp_path, monkeypatch):
        monkeypatch.setenv("FLEET_KEY", "not-for-the-agent")
        monkeypatch.setenv("FLEET_TOKEN", "fleet_0123456789abcdef_" + "x" * 43)
        job = submit(client, product, "k1")

        assert run(client, product, script(tmp_path, REPORTING)).result() == 0

        seen = json.loads((tmp_path / "out" / f"{job.id.replace(':', '_')}.env").read_text())
        assert seen["FLEET_JOB_ID"] == job.id and seen["FLEET_RUN_ID"] == f"{job.id}#1"
        assert seen["FLEET_PRODUCT_ID"] == product and seen["FLEET_FACTORY_ID"] == f"factory-{product}"
        assert (seen["job"]["id"], seen["job"]["stage"]) == (job.id, "building")
        assert seen["job"]["lease"]["factoryId"] == f"factory-{product}"
        assert "FLEET_KEY" not in seen and "FLEET_TOKEN" not in seen
        assert Path(seen["cwd"]).name == "work" and not Path(seen["cwd"]).exists()  # removed afterwards

    def test_a_failing_command_releases_its_job_for_retry(self, client, product, tmp_path):
        job = submit(client, product, "k1")

        code = run(client, product, script(tmp_path, 'print(\'{"insights": {"costUsd": 0.1}}\')\nsys.exit(3)')).result()

        assert code == 0
        done = client.get_job(job.id)
        assert (done.stage, done.attempts) == (Stage.QUEUED, 1)
        assert done.runs[-1].result == RunResult.RETRY and done.runs[-1].insights == {"costUsd": 0.1}

    @pytest.mark.parametrize("command", ["/nonexistent/agent", "./no-agent-here.sh", "no-such-command-anywhere"])
    def test_a_command_that_does_not_exist_is_refused_before_any_claim(self, client, product, command):
        job = submit(client, product, "k1")

        with pytest.raises(ValueError, match=f"cannot run {command}"):
            Runner(client, config(product, (command, "--flag")))

        assert client.get_job(job.id).attempts == 0

    def test_a_command_is_made_absolute_however_it_was_found(self, tmp_path, monkeypatch):
        (tmp_path / "bin").mkdir()
        agent = tmp_path / "bin" / "agent"
        agent.write_text("#!/bin/sh\n")
        agent.chmod(0o755)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("PATH", "bin" + os.pathsep + os.environ["PATH"])  # a relative PATH entry

        assert runnable(("bin/agent", "-v")) == (str(agent), "-v")
        assert runnable(("~/bin/agent",)) == (str(agent),)
        assert runnable(("agent",)) == (str(agent),)

    def test_in_pr_mode_a_relative_path_may_name_the_repos_own_script(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)

        assert runnable(("./scripts/fix.sh", "x"), in_clone=True) == ("./scripts/fix.sh", "x")
        with pytest.raises(ValueError, match="cannot run ./scripts/fix.sh"):
            runnable(("./scripts/fix.sh",))
        with pytest.raises(ValueError, match="cannot run /nonexistent/fix.sh"):
            runnable(("/nonexistent/fix.sh",), in_clone=True)

    def test_a_command_given_by_a_relative_path_runs_in_every_job_directory(self, client, product, tmp_path,
                                                                            monkeypatch):
        agent = tmp_path / "agent.sh"
        agent.write_text('#!/bin/sh\necho \'{"insights": {"costUsd": 0.42}}\'\n')
        agent.chmod(0o755)
        job = submit(client, product, "k1")
        monkeypatch.chdir(tmp_path)

        assert run(client, product, ("./agent.sh",), autoship=True).result() == 0

        done = client.get_job(job.id)
        assert done.stage == Stage.SHIPPED and done.runs[-1].insights == {"costUsd": 0.42}

    def test_a_command_that_cannot_start_is_a_failed_attempt(self, client, product, tmp_path):
        # The command was there when the runner started, and is gone when a job comes.
        agent = tmp_path / "agent.sh"
        agent.write_text("#!/bin/sh\n")
        agent.chmod(0o755)
        job = submit(client, product, "k1")
        runner = Runner(client, config(product, (str(agent),)), out=io.StringIO())
        agent.unlink()

        assert runner.run() == 0

        assert client.get_job(job.id).attempts == 1

    def test_a_seat_that_fails_releases_its_job_for_retry(self, client, product, tmp_path):
        job = submit(client, product, "k1")

        code = run(client, product, script(tmp_path, "pass"), workdir_root=str(tmp_path / "missing")).result()

        assert code == 0
        done = client.get_job(job.id)
        assert (done.stage, done.attempts, done.lease) == (Stage.QUEUED, 1, None)

    def test_autoship_ships_a_passing_job_by_patch(self, client, product, tmp_path):
        job = submit(client, product, "k1")

        assert run(client, product, script(tmp_path, REPORTING), autoship=True).result() == 0

        done = client.get_job(job.id)
        assert done.stage == Stage.SHIPPED
        assert done.runs[-1].result == RunResult.SHIPPED and done.runs[-1].insights["costUsd"] == 0.75
        assert [e.detail.get("stage") for e in done.events if e.type == "stage"] == ["building", "testing", "shipped"]

    def test_autoship_records_artifacts_and_a_pr_with_a_terminal_release(self, client, product, tmp_path):
        job = submit(client, product, "k1")
        report = {"insights": {"costUsd": 2}, "prUrl": "https://github.com/acme/w/pull/1", "artifacts": ["log.txt"]}

        assert run(client, product, script(tmp_path, f"print({json.dumps(report)!r})"), autoship=True).result() == 0

        last = client.get_job(job.id).runs[-1]
        assert (last.result, last.pr_url, last.artifacts, last.insights) == (
            RunResult.SHIPPED, "https://github.com/acme/w/pull/1", ["log.txt"], {"costUsd": 2})

    def test_a_report_the_coordinator_refuses_does_not_strand_the_job(self, client, product, tmp_path):
        job = submit(client, product, "k1")

        code = run(client, product, script(tmp_path, 'print(\'{"prUrl": "not a url", "branch": "x"}\')')).result()

        assert code == 0
        done = client.get_job(job.id)
        assert done.stage == Stage.TESTING and done.lease is None and done.runs[-1].pr_url is None


class TestSeatsAndLimits:
    def test_seats_run_jobs_at_the_same_time(self, client, product, tmp_path):
        for key in ("a", "b"):
            submit(client, product, key)
        together = script(tmp_path, """
(OUT / os.environ["FLEET_JOB_ID"].replace(":", "_")).touch()
deadline = time.time() + 10
while len(list(OUT.iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.02)
sys.exit(0 if len(list(OUT.iterdir())) >= 2 else 1)
""")

        running = run(client, product, together, seats=2, max_jobs=2)

        assert running.result() == 0
        assert running.runner.stats.outcomes == {"parked": 2}

    def test_every_claimed_job_counts_toward_max_jobs(self, client, product, tmp_path):
        for key in ("a", "b", "c"):
            submit(client, product, key)

        running = run(client, product, script(tmp_path, "sys.exit(1)"), max_jobs=2)

        assert running.result() == 0
        assert running.runner.stats.claimed == 2
        jobs = client.list_jobs(product).items
        assert sorted(job.attempts for job in jobs) == [0, 1, 1]  # failures count as claimed jobs too

    def test_exit_when_idle_stops_once_the_queue_is_empty(self, client, product, tmp_path):
        for key in ("a", "b", "c"):
            submit(client, product, key)

        running = run(client, product, script(tmp_path, "pass"), max_jobs=None, exit_when_idle=True)

        assert running.result() == 0
        assert running.runner.stats.outcomes == {"parked": 3}


class TestLeases:
    def test_heartbeats_keep_a_short_lease_alive_through_a_longer_job(self, fast_client, product, tmp_path):
        job = submit(fast_client, product, "k1")

        # The lease is 2 s; the job takes 3.5 s: without renewals its lease would have expired.
        running = run(fast_client, product, script(tmp_path, "time.sleep(3.5)"))

        assert running.result() == 0
        done = fast_client.get_job(job.id)
        assert done.stage == Stage.TESTING and [run.result for run in done.runs] == [None]
        assert running.runner.stats.outcomes == {"parked": 1}

    def test_a_release_unanswered_while_the_lease_was_taken_reports_the_run_late(self, server, product, tmp_path):
        def taken_on_the_way(client: FleetClient, job_id: str, lease_id: str) -> None:
            client.action(job_id, "requeue", reason="taken while the release was on its way")
            raise errors.FleetUnreachable("the release got no answer")

        with ReleasesNotSent(server.url, taken_on_the_way, backoff=FAST) as client:
            job, running = run_failing_with_cost(client, product, tmp_path)

            # the job gone from its lease looks like a release that landed; it was not one
            assert running.runner.stats.outcomes == {"lost": 1}
            run_ = client.get_job(job.id).runs[-1]
            assert run_.result == RunResult.RELEASED and run_.ended_by is None and run_.insights == {}
            assert run_.late_report is not None and run_.late_report.insights == {"costUsd": 0.75}

    # 1: the first release is refused as lost; 2: so is the one tried after the refused report
    # (two coordinator instances disagree twice): it is made at the next round
    @pytest.mark.parametrize("refusals", [1, 2])
    def test_a_lease_refused_as_lost_that_holds_again_is_released_with_the_report(
            self, server, product, tmp_path, refusals):
        with ReleasesNotSent(server.url, self.refused_as_lost, count=refusals, backoff=FAST) as client:
            job, running = run_failing_with_cost(client, product, tmp_path)

            # the report was refused (the lease held the job); the release it meant was made
            assert running.runner.stats.outcomes == {"retry": 1} and client.not_sent == refusals
            done = client.get_job(job.id)
            assert done.stage == Stage.QUEUED and done.lease is None and done.attempts == 1
            run_ = done.runs[-1]
            assert (run_.result, run_.insights, run_.late_report) == (RunResult.RETRY, {"costUsd": 0.75}, None)

    def test_a_lease_refused_as_lost_at_every_round_is_given_up_after_a_bounded_number(
            self, server, product, tmp_path, caplog):
        with ReleasesNotSent(server.url, self.refused_as_lost, count=100, backoff=FAST) as client:
            job, running = run_failing_with_cost(client, product, tmp_path)

            assert running.runner.stats.outcomes == {"lost": 1}
            # the first release, then one per round; the lease is left to expire
            assert client.not_sent == 1 + seat.LATE_REPORT_ROUNDS
            lease = client.get_job(job.id).lease
            assert lease is not None
            # the log says the cost is not counted, and the command that counts it by hand
            assert f"lost lease {lease.lease_id} is not reported" in caplog.text
            assert "its cost is not counted; to count it once the lease has expired: " \
                   f"""echo '{{"insights":{{"costUsd":0.75}}}}' | fleet jobs report {job.id} """ \
                   f"--lease-id {lease.lease_id} --file -" in caplog.text

    # with a report, or none: a lease that holds is given back all the same
    @pytest.mark.parametrize("reported", [{"costUsd": 0.75}, None])
    def test_a_lease_revoked_by_an_instance_while_it_holds_is_given_back_with_the_report(
            self, fast_server, product, tmp_path, reported):
        # 2-second leases: a heartbeat renews the lease about every 0.7 s; the one after the
        # command is ready to report on SIGTERM answers it revoked
        ready = tmp_path / "out" / "ready"
        with RevokedOnce(fast_server.url, once=ready.exists, backoff=FAST) as client:
            job = submit(client, product, "k1")
            stopped = script(tmp_path, f"""
import signal
def stopped(*_):
    if {reported!r}:
        print(json.dumps({{"insights": {reported!r}}}))
    sys.exit(143)
signal.signal(signal.SIGTERM, stopped)
(OUT / "ready").write_text("")
time.sleep(30)
""")
            running = run(client, product, stopped)

            assert running.result() == 0
            assert client.revoked == 1
            # stopped by the coordinator, not failed: given back as by a drain, no attempt spent
            assert running.runner.stats.outcomes == {"given_back": 1}
            done = client.get_job(job.id)
            assert (done.stage, done.lease, done.attempts) == (Stage.QUEUED, None, 0)
            run_ = done.runs[-1]
            assert (run_.result, run_.insights, run_.late_report) == (RunResult.RELEASED, reported or {}, None)

    def test_a_lease_taken_between_the_refused_report_and_the_read_reports_at_the_next_round(
            self, server, product, tmp_path):
        class TakenAfterTheRefusal(ReleasesNotSent):
            def report_run(self, job_id: str, lease_id: str, **fields):
                self.reports += 1
                if self.reports == 1:  # refused while the lease held; an operator takes it at once
                    refusal = errors.IllegalTransition(409, "illegal_transition", f"lease {lease_id} still holds")
                    self.action(job_id, "requeue", reason="taken after the refusal")
                    raise refusal
                return super().report_run(job_id, lease_id, **fields)

        with TakenAfterTheRefusal(server.url, self.refused_as_lost, backoff=FAST) as client:
            client.reports = 0
            job, running = run_failing_with_cost(client, product, tmp_path)

            assert running.runner.stats.outcomes == {"lost": 1} and client.reports == 2
            run_ = client.get_job(job.id).runs[-1]
            assert run_.late_report is not None and run_.late_report.insights == {"costUsd": 0.75}

    def test_a_release_of_a_lease_that_holds_again_refused_otherwise_is_not_repeated(
            self, server, product, tmp_path):
        def lost_then_refused(client: ReleasesNotSent, job_id: str, lease_id: str) -> None:
            if client.not_sent == 1:
                self.refused_as_lost(client, job_id, lease_id)
            raise errors.IllegalTransition(409, "illegal_transition", "refused for a reason of its own")

        with ReleasesNotSent(server.url, lost_then_refused, count=100, backoff=FAST) as client:
            job, running = run_failing_with_cost(client, product, tmp_path)

            # the first release, lost; the one made because the lease held, refused: no more
            assert running.runner.stats.outcomes == {"lost": 1} and client.not_sent == 2
            assert client.get_job(job.id).lease is not None

    @staticmethod
    def refused_as_lost(client: FleetClient, job_id: str, lease_id: str) -> None:
        # as by a coordinator instance that had not seen the outage whose grace holds the lease
        raise errors.LeaseLost(409, "lease_lost", f"lease {lease_id} is not the live lease of job {job_id}")


class ReleasesNotSent(FleetClient):
    """A client whose first `count` releases are never sent: `instead(client, job_id, lease_id)`
    runs in the place of each and raises what the runner gets (no answer, a refusal)."""

    def __init__(self, url: str, instead, count: int = 1, **options) -> None:
        super().__init__(url, **options)
        self.instead = instead
        self.count = count
        self.not_sent = 0

    def release_lease(self, job_id: str, lease_id: str, **fields):
        if self.not_sent < self.count:
            self.not_sent += 1
            self.instead(self, job_id, lease_id)
        return super().release_lease(job_id, lease_id, **fields)


class RevokedOnce(FleetClient):
    """A client to which the first heartbeat that renews a lease once `once()` is true answers
    it `revoked`, as an instance would that had not seen the outage whose grace holds it."""

    def __init__(self, url: str, once=lambda: True, **options) -> None:
        super().__init__(url, **options)
        self.once = once
        self.revoked = 0

    def heartbeat(self, *args, **kwargs):
        answer = super().heartbeat(*args, **kwargs)
        if self.revoked or not answer.leases or not self.once():
            return answer
        self.revoked = 1
        leases = [lease.model_copy(update={"status": Renewal.REVOKED, "expires_at": None}) for lease in answer.leases]
        return answer.model_copy(update={"leases": leases})


class EvictsWithoutAJob(FleetClient):
    """A client whose first claim once a job of `running()` is running is answered as a claim
    that evicted that job for a critical one and then lost it to another factory: the job is
    requeued (its lease revoked, as an eviction does), and the answer is no job, the victim
    named in `preempted`."""

    def __init__(self, url: str, running, failing: bool = False, **options) -> None:
        super().__init__(url, **options)
        self.running = running
        self.failing = failing
        self.evicted: list[str] = []

    def claim(self, factory_id, product_id, *args, **kwargs):
        victim = self.running()
        if victim is None or self.evicted:
            return super().claim(factory_id, product_id, *args, **kwargs)
        self.action(victim, "requeue", reason="evicted for a critical job another factory took")
        self.evicted.append(victim)
        if self.failing:  # the store failed after the eviction: the 503 names it
            raise errors.StoreBusy(503, "store_busy", "the store is busy", problem={"preempted": [victim]}, retry_after=0.1)
        return claims.Claimed(reason="no_job", preempted=[victim])


@pytest.mark.parametrize("failing", [False, True], ids=["no-job", "store-busy"])
def test_a_claim_that_names_an_eviction_but_no_job_stops_the_evicted_command(server, product, tmp_path, failing):
    # Given a runner with two seats, running a job whose first run is long (its lease 300 s:
    # no heartbeat is due for minutes)
    job = submit(FleetClient(server.url, backoff=FAST), product, "k1")
    started = tmp_path / "out" / "started"
    slow = script(tmp_path, 'if not (OUT / "started").exists():\n'
                            '    (OUT / "started").write_text(str(os.getpid()))\n'
                            '    time.sleep(60)\n')
    client = EvictsWithoutAJob(server.url, lambda: job.id if started.exists() else None, failing, backoff=FAST)
    with client:
        running = run(client, product, slow, seats=2, max_jobs=2, exit_when_idle=True)
        # When a claim answers that the job was evicted (its critical preemptor lost), with no job
        wait_for(lambda: client.evicted, 10, "a claim to name the eviction")
        pid = int(started.read_text())
        # Then its command is stopped at once, not when a heartbeat says its lease is gone; the
        # job, requeued, is claimed again and its next run ends
        wait_for(lambda: process_gone(pid), 10, "the evicted command to be stopped")
        assert running.result() == 0
        assert client.get_job(job.id).stage == Stage.TESTING and running.runner.stats.outcomes == {"revoked": 1, "parked": 1}


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class RevokedWhileReleasing(FleetClient):
    """A client whose release takes a while, and whose heartbeats meanwhile answer the lease
    `revoked`, as the coordinator does once the release has landed."""

    def __init__(self, url: str, **options) -> None:
        super().__init__(url, **options)
        self.releasing = threading.Event()
        self.revoked = 0

    def release_lease(self, *args, **kwargs):
        self.releasing.set()
        time.sleep(1.5)  # a heartbeat or two (2 s leases) comes while it is under way
        return super().release_lease(*args, **kwargs)

    def heartbeat(self, *args, **kwargs):
        answer = super().heartbeat(*args, **kwargs)
        if not self.releasing.is_set() or not answer.leases:
            return answer
        self.revoked += 1
        leases = [lease.model_copy(update={"status": Renewal.REVOKED, "expires_at": None}) for lease in answer.leases]
        return answer.model_copy(update={"leases": leases})


def test_a_heartbeat_answered_revoked_while_the_seat_releases_stops_nothing(fast_server, product, tmp_path, caplog):
    submit(FleetClient(fast_server.url, backoff=FAST), product, "k1")
    with RevokedWhileReleasing(fast_server.url, backoff=FAST) as client:
        running = run(client, product, script(tmp_path, "print('done')"), max_jobs=1)
        assert running.result() == 0
    assert client.revoked >= 1
    assert running.runner.stats.outcomes == {"parked": 1}
    assert "revoked; stopping it" not in caplog.text


def test_a_factory_whose_token_is_revoked_stops_its_commands_and_exits(
    fast_client, fast_server, product, tmp_path, caplog
):
    # Given a runner on a factory token of its own, running a long command
    factory_id = f"factory-{product}"
    minted = fast_client._http.call(
        "POST", "/fleet/tokens", json={"role": "factory", "factoryId": factory_id, "products": [product]}
    ).body
    job = submit(fast_client, product, "k1")
    slow = script(tmp_path, '(OUT / "started").write_text(str(os.getpid()))\ntime.sleep(60)\n')
    with FleetClient(fast_server.url, token=minted["token"], backoff=FAST) as factory:
        running = run(factory, product, slow)
        wait_for(lambda: (tmp_path / "out" / "started").exists(), 10, "the command to start")
        pid = int((tmp_path / "out" / "started").read_text())
        # When an admin revokes the factory's token
        fast_client._http.call("DELETE", f"/fleet/tokens/{minted['id']}")
        # Then its next heartbeat is refused: the runner stops the command and exits 2, at once
        started = time.monotonic()
        assert running.result() == 2 and time.monotonic() - started < 10
    assert "refuses this factory's heartbeats" in caplog.text
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert fast_client.get_job(job.id).stage != Stage.SHIPPED


def run_failing_with_cost(client: FleetClient, product: str, tmp_path: Path):
    """One job whose command reports a cost and fails, run to its end: the job and the runner."""
    job = submit(client, product, "k1")
    failing = script(tmp_path, 'print(json.dumps({"insights": {"costUsd": 0.75}})); sys.exit(1)')
    running = run(client, product, failing)
    assert running.result() == 0
    return job, running


class TestDrain:
    SLOW = """
(OUT / "started").write_text(str(os.getpid()))
checkpoint = pathlib.Path(os.environ["FLEET_CHECKPOINT_FILE"])
checkpoint.write_text(json.dumps({"step": 7}))
time.sleep(float(os.environ.get("SLEEP", "30")))
"""

    def test_a_drain_gives_a_running_job_back_with_its_checkpoint(self, client, product, tmp_path):
        job = submit(client, product, "k1")
        running = run(client, product, script(tmp_path, self.SLOW), drain_seconds=0.2)
        wait_for(lambda: (tmp_path / "out" / "started").exists(), 10, "the command to start")

        started = time.monotonic()
        running.runner.drain()

        assert running.result() == 0 and time.monotonic() - started < 5
        done = client.get_job(job.id)
        assert (done.stage, done.attempts, done.checkpoint) == (Stage.QUEUED, 0, {"step": 7})
        assert done.runs[-1].result == RunResult.RELEASED

    def test_a_checkpoint_over_its_bound_is_left_out_not_the_job(self, client, product, tmp_path):
        job = submit(client, product, "k1")
        oversized = """
import signal
def stopped(*_):
    print(json.dumps({"insights": {"costUsd": 0.5}}))
    sys.exit(143)
signal.signal(signal.SIGTERM, stopped)
pathlib.Path(os.environ["FLEET_CHECKPOINT_FILE"]).write_text(json.dumps({"state": "x" * 70_000}))
(OUT / "started").write_text("")
time.sleep(30)
"""
        running = run(client, product, script(tmp_path, oversized), drain_seconds=0.2)
        wait_for(lambda: (tmp_path / "out" / "started").exists(), 10, "the command to start")

        running.runner.drain()

        # the coordinator refuses a checkpoint over 64 KiB: given back without it, with the report
        assert running.result() == 0 and running.runner.stats.outcomes == {"given_back": 1}
        done = client.get_job(job.id)
        assert (done.stage, done.lease, done.attempts, done.checkpoint) == (Stage.QUEUED, None, 0, None)
        assert done.runs[-1].insights == {"costUsd": 0.5}

    def test_a_drain_lets_a_job_that_finishes_in_time_report(self, client, product, tmp_path, monkeypatch):
        monkeypatch.setenv("SLEEP", "0.5")
        job = submit(client, product, "k1")
        running = run(client, product, script(tmp_path, self.SLOW), drain_seconds=10)
        wait_for(lambda: (tmp_path / "out" / "started").exists(), 10, "the command to start")

        running.runner.drain()

        assert running.result() == 0
        assert client.get_job(job.id).stage == Stage.TESTING


class TestGate:
    def test_an_idle_gated_runner_skips_claims_until_the_version_moves(self, client, product, tmp_path):
        running = run(client, product, script(tmp_path, "pass"), gate=True, backstop_polls=1000)
        wait_for(lambda: running.runner.stats.skipped_claims >= 5, 10, "the gate to hold claims back")
        claims_while_idle = running.runner.stats.claims

        job = submit(client, product, "k1")

        assert running.result() == 0
        assert claims_while_idle == 1  # the first poll only
        assert client.get_job(job.id).stage == Stage.TESTING


    def test_a_gated_full_runner_of_a_preempting_coordinator_takes_the_next_job_when_a_seat_frees(
            self, fast_client, product, tmp_path):
        # Regression: full, it claims (a critical job might evict) and is refused seat_limit,
        # which ended the gate's drain; the freed seat then waited on an unchanged version
        jobs = [submit(fast_client, product, f"k{n}") for n in range(3)]
        running = run(fast_client, product, script(tmp_path, "time.sleep(0.3)"), gate=True, autoship=True,
                      max_jobs=None, exit_when_idle=True, backstop_polls=1000)

        assert running.result() == 0 and running.runner.stats.outcomes == {"shipped": 3}
        assert {fast_client.get_job(job.id).stage for job in jobs} == {Stage.SHIPPED}


class TestPullRequests:
    def test_a_job_with_a_repo_is_delivered_as_a_pull_request(self, client, product, tmp_path, git_base, gh):
        job = submit(client, product, "k1", repo="acme/widgets", base_branch="develop")
        change = script(tmp_path, """
pathlib.Path("CHANGELOG.md").write_text("fixed by " + os.environ["FLEET_JOB_ID"] + "\\n")
(OUT / "branch").write_text(os.environ["FLEET_BRANCH"] + " " + os.environ["FLEET_BASE_BRANCH"])
print(json.dumps({"insights": {"costUsd": 1.5}}))
""")

        code = run(client, product, change, pr_mode=True, git_base=str(git_base)).result()

        assert code == 0
        branch = f"aq/job/{job.id.replace(':', '-')}"
        assert (tmp_path / "out" / "branch").read_text() == f"{branch} develop"
        done = client.get_job(job.id)
        assert done.stage == Stage.TESTING
        assert (done.runs[-1].pr_url, done.runs[-1].branch) == ("https://github.com/acme/widgets/pull/7", branch)
        assert done.runs[-1].insights == {"costUsd": 1.5}
        assert git("show", f"{branch}:CHANGELOG.md", cwd=git_base / "acme" / "widgets.git") == f"fixed by {job.id}\n"
        [call] = gh.calls()
        assert call[call.index("--base") + 1] == "develop" and call[call.index("--title") + 1] == "Job k1"

    def test_a_repo_that_cannot_be_cloned_is_a_failed_attempt(self, client, product, tmp_path, git_base, gh):
        job = submit(client, product, "k1", repo="acme/missing")

        assert run(client, product, script(tmp_path, "pass"), pr_mode=True, git_base=str(git_base)).result() == 0

        done = client.get_job(job.id)
        assert done.attempts == 1 and "git clone" in done.runs[-1].insights["factoryError"]
        assert gh.calls() == []

    def test_a_job_taken_away_while_it_is_delivered_gets_no_pull_request(self, fast_client, fast_server, product,
                                                                         tmp_path, git_base, gh):
        job = submit(fast_client, product, "k1", repo="acme/widgets")
        # The runner pushes the command's change; the push's hook is where an operator's cancel
        # lands, after the command ended. It then waits for a heartbeat to learn of it.
        hook = f"""#!{sys.executable}
import time, urllib.request
request = urllib.request.Request(
    {fast_server.url!r} + "/fleet/jobs/" + JOB_ID + "/actions/cancel", data=b'{{"reason": "not wanted"}}',
    headers={{"authorization": "Bearer " + {os.environ["FLEET_TOKEN"]!r}, "content-type": "application/json"}})
urllib.request.urlopen(request).read()
time.sleep(3)
"""
        change = script(tmp_path, f"""
pathlib.Path("CHANGELOG.md").write_text("fixed")
hook = pathlib.Path(".git/hooks/pre-push")
hook.write_text({hook!r}.replace("JOB_ID", repr(os.environ["FLEET_JOB_ID"])))
hook.chmod(0o755)
print(json.dumps({{"insights": {{"costUsd": 1.5}}}}))
""")

        running = run(fast_client, product, change, pr_mode=True, git_base=str(git_base))

        assert running.result() == 0 and running.runner.stats.outcomes == {"revoked": 1}
        assert gh.calls() == []
        done = fast_client.get_job(job.id)
        late = done.runs[-1].late_report  # what the run did is reported on the lost lease
        assert done.stage == Stage.CANCELLED and late is not None
        assert (late.insights, late.branch) == ({"costUsd": 1.5}, f"aq/job/{job.id.replace(':', '-')}")

    def test_pr_mode_without_gh_on_path_claims_nothing(self, client, product, tmp_path, git_base, monkeypatch):
        job = submit(client, product, "k1", repo="acme/widgets")
        bin_dir = tmp_path / "only-git"
        bin_dir.mkdir()
        (bin_dir / "git").symlink_to(shutil.which("git"))
        monkeypatch.setenv("PATH", str(bin_dir))

        with pytest.raises(ValueError, match=r"PR mode \(AQ_FLEET_PR\) needs gh on PATH"):
            Runner(client, config(product, script(tmp_path, "pass"), pr_mode=True, git_base=str(git_base)))

        untouched = client.get_job(job.id)
        assert (untouched.stage, untouched.attempts, untouched.runs) == (Stage.QUEUED, 0, [])

    def test_without_pr_mode_the_repo_is_not_cloned(self, client, product, tmp_path, git_base, gh):
        job = submit(client, product, "k1", repo="acme/widgets")

        assert run(client, product, script(tmp_path, "pass"), git_base=str(git_base)).result() == 0

        assert client.get_job(job.id).runs[-1].pr_url is None and gh.calls() == []
