"""Issue 5, "Done means": `fleet serve`, jobs submitted with the CLI, and `fleet factory run`
processes working them — every job shipped exactly once; a killed runner's job requeued by the
sweep and finished by another; a revoked (requeued or preempted) job's command stopped."""
from __future__ import annotations

import collections
import signal
import sys
import time
from pathlib import Path

import pytest

from fleet.stages import RunResult, Stage
from fleetclient import FleetClient
from shared.devhost.process import running_server
from tests.factory.conftest import FAST, Cli, known_to, kill_group, process_gone, wait_for

pytestmark = pytest.mark.e2e

#: The job command of every scenario, steered by its environment:
#: SLOW=1 (or SLOW_UNLESS_CRITICAL=1 for a non-critical job) leaves a checkpoint, writes
#: `<job>.pid` and sleeps (SLOW_SECONDS, default 60), and with IGNORE_TERM=1 it ignores SIGTERM
#: and starts a child in its process group, or with REPORT_ON_TERM=1 it reports a cost of 0.3 as
#: SIGTERM stops it; then, or otherwise, it logs `<job> <factory>` to
#: ran.log, works briefly, and reports its cost. Every job first writes `<job>.beside`: the
#: commands of other jobs (their `.pid`) still running as it starts.
AGENT = """
import json, os, pathlib, signal, subprocess, sys, time
out = pathlib.Path(os.environ["E2E_OUT"])
job = json.load(open(os.environ["FLEET_JOB_FILE"]))
name = job["id"].replace(":", "_")
def alive(pid):
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
others = [p.read_text().split() for p in out.glob("*.pid") if p.stem != name]
(out / (name + ".beside")).write_text(" ".join(pids[0] for pids in others if pids and alive(int(pids[0]))))
if os.environ.get("SLOW") or (os.environ.get("SLOW_UNLESS_CRITICAL") and job["priority"] != "critical"):
    pids = [os.getpid()]
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif os.environ.get("REPORT_ON_TERM"):
        def stopped(*_):
            print(json.dumps({"insights": {"costUsd": 0.3, "tokensIn": 40}}), flush=True)
            os._exit(143)
        signal.signal(signal.SIGTERM, stopped)
        pids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]).pid)
    pathlib.Path(os.environ["FLEET_CHECKPOINT_FILE"]).write_text(json.dumps({"progress": "halfway"}))
    (out / (name + ".pid")).write_text(" ".join(map(str, pids)))
    time.sleep(float(os.environ.get("SLOW_SECONDS", "60")))
with open(out / "ran.log", "a") as log:
    log.write(job["id"] + " " + os.environ["FLEET_FACTORY_ID"] + "\\n")
time.sleep(0.2)
print("done with", job["id"])
print(json.dumps({"insights": {"costUsd": 0.5, "tokensIn": 100, "tokensOut": 20}}))
"""


@pytest.fixture
def agent(tmp_path) -> tuple[list[str], Path]:
    """The job command, and the directory it writes to (`E2E_OUT`)."""
    out = tmp_path / "agent-out"
    out.mkdir()
    path = tmp_path / "agent.py"
    path.write_text(AGENT)
    return [sys.executable, str(path)], out


def runner_args(factory: str, product: str, command: list[str], *options: str) -> list[str]:
    return ["--factory-id", factory, "--product", product, "--poll-seconds", "0.1", "--kill-grace", "1",
            *options, "--", *command]


def pids_of(out: Path, job_id: str) -> list[int]:
    path = out / (job_id.replace(":", "_") + ".pid")
    return [int(pid) for pid in path.read_text().split()] if path.exists() and path.read_text().strip() else []


def test_two_runners_ship_every_job_exactly_once(agent, product, start_runner, capsys, monkeypatch, tmp_path):
    command, out = agent
    with running_server(env={"FLEET_BUDGETS": "1"}, db=known_to(tmp_path / "budgets.db")) as server, FleetClient(server.url, backoff=FAST) as client:
        client.put_budget(product, 100.0, "monthly")
        env = {"AQ_FLEET_AUTOSHIP": "1", "E2E_OUT": str(out)}
        plain = start_runner(server.url, runner_args("plain", product, command, "--seats", "2"), env, "plain")
        gated = start_runner(server.url, runner_args("gated", product, command, "--seats", "2"),
                             {**env, "AQ_FLEET_GATE": "1"}, "gated")
        wait_for(lambda: {f.id for f in client.list_factories()} >= {"plain", "gated"}, 15, "both runners to register")

        # Given a dozen jobs submitted with the CLI
        cli = Cli(server.url, capsys, monkeypatch)
        ids = [cli.json("jobs", "submit", "-p", product, "-k", f"job-{n}", "-t", f"Job {n}")["id"] for n in range(12)]

        # When both runners work them
        wait_for(lambda: all(j.stage in (Stage.SHIPPED, Stage.FAILED, Stage.DEAD_LETTER)
                             for j in client.list_jobs(product, limit=50).items), 30, "every job to finish")
        plain.signal(signal.SIGTERM)
        gated.signal(signal.SIGTERM)
        assert plain.wait(15) == 0, plain.log()
        assert gated.wait(15) == 0, gated.log()

        # Then every job shipped exactly once, with its run's cost
        jobs = [client.get_job(job_id) for job_id in ids]
        assert [job.stage for job in jobs] == [Stage.SHIPPED] * 12
        for job in jobs:
            [run] = job.runs
            assert run.result == RunResult.SHIPPED and run.ended_at is not None
            assert run.insights == {"costUsd": 0.5, "tokensIn": 100, "tokensOut": 20}
            assert sum(1 for e in job.events if e.detail.get("stage") == "shipped") == 1
        ran = [line.split() for line in (out / "ran.log").read_text().splitlines()]
        assert collections.Counter(job_id for job_id, _ in ran) == collections.Counter(ids)
        by_factory = collections.Counter(factory for _, factory in ran)
        assert set(by_factory) == {"plain", "gated"}, by_factory
        assert {run.factory_id for job in jobs for run in job.runs} == {"plain", "gated"}
        assert client.get_budget(product).spent_usd == pytest.approx(12 * 0.5)  # each run's cost accrued once


def test_a_killed_runners_job_is_requeued_by_the_sweep_and_finished_by_another(
        agent, product, start_runner, fast_server, fast_client):
    command, out = agent
    job = fast_client.submit_job(product_id=product, idempotency_key="k1", title="survives").job
    env = {"AQ_FLEET_AUTOSHIP": "1", "E2E_OUT": str(out)}

    # Given a runner in the middle of the job
    doomed = start_runner(fast_server.url, runner_args("doomed", product, command), {**env, "SLOW": "1"}, "doomed")
    pids = wait_for(lambda: pids_of(out, job.id), 15, "the job's command to start")
    try:
        # When it is killed outright, and its lease (2 s) runs out
        doomed.signal(signal.SIGKILL)
        doomed.wait(5)

        def swept():
            fast_client.run_timer("sweep_expired_leases")
            return fast_client.get_job(job.id).stage == Stage.QUEUED

        wait_for(swept, 15, "the sweep to requeue the job", interval=0.3)
    finally:
        kill_group(pids[0])  # the killed runner's command, orphaned

    # Then another runner picks it up and finishes it
    survivor = start_runner(fast_server.url, runner_args("survivor", product, command, "--once"), env, "survivor")
    assert survivor.wait(20) == 0, survivor.log()

    done = fast_client.get_job(job.id)
    assert done.stage == Stage.SHIPPED and done.attempts == 1
    assert [(run.factory_id, run.result) for run in done.runs] == [
        ("doomed", RunResult.EXPIRED), ("survivor", RunResult.SHIPPED)]
    assert done.runs[-1].insights["costUsd"] == 0.5


def test_a_revoked_lease_stops_the_command(agent, product, start_runner, fast_server, fast_client, fast_cli):
    command, out = agent
    job = fast_client.submit_job(product_id=product, idempotency_key="k1", title="revoked").job
    env = {"E2E_OUT": str(out), "SLOW": "1", "IGNORE_TERM": "1"}
    runner = start_runner(fast_server.url, runner_args("worker", product, command, "--max-jobs", "1"), env)
    pids = wait_for(lambda: pids_of(out, job.id), 15, "the job's command to start")
    try:
        # When an operator requeues the running job (its lease is revoked)
        code, _, err = fast_cli("jobs", "action", job.id, "requeue", "--reason", "wrong approach")
        assert code == 0, err

        # Then the command and the child it started are stopped (it ignores SIGTERM: SIGKILL follows)
        wait_for(lambda: all(process_gone(pid) for pid in pids), 10, "the command to be stopped")
    finally:
        kill_group(pids[0])
    assert runner.wait(15) == 0, runner.log()

    done = fast_client.get_job(job.id)
    assert (done.stage, done.attempts, done.lease) == (Stage.QUEUED, 0, None)
    assert done.events[-1].type == "requeue"  # the runner wrote nothing after losing the lease
    assert "revoked" in runner.log()


def test_a_preempted_job_is_stopped_for_a_critical_one(agent, product, start_runner, fast_server, fast_client):
    command, out = agent
    fast_client.put_budget(product, 100.0, "daily")
    normal = fast_client.submit_job(product_id=product, idempotency_key="normal", title="normal").job
    env = {"E2E_OUT": str(out), "SLOW_UNLESS_CRITICAL": "1", "REPORT_ON_TERM": "1", "AQ_FLEET_AUTOSHIP": "1"}
    args = runner_args("full", product, command, "--seats", "1", "--max-jobs", "2")
    runner = start_runner(fast_server.url, args, env)
    pids = wait_for(lambda: pids_of(out, normal.id), 15, "the normal job's command to start")
    try:
        # When a critical job arrives at a factory whose only seat is taken
        critical = fast_client.submit_job(product_id=product, idempotency_key="critical", title="critical",
                                          priority="critical").job

        # Then the normal job is preempted: its command stopped, the critical job shipped
        wait_for(lambda: all(process_gone(pid) for pid in pids), 15, "the preempted command to be stopped")
    finally:
        kill_group(pids[0])
    assert runner.wait(20) == 0, runner.log()

    assert fast_client.get_job(critical.id).stage == Stage.SHIPPED
    preempted = fast_client.get_job(normal.id)
    assert preempted.stage == Stage.QUEUED and preempted.runs[-1].result == RunResult.PREEMPTED
    # and what the stopped command cost was reported by its lost lease, and counted once with
    # the critical job's own 0.5
    late = preempted.runs[-1].late_report
    assert late is not None and late.insights == {"costUsd": 0.3, "tokensIn": 40} and late.accrued, runner.log()
    assert fast_client.get_budget(product).spent_usd == 0.8


def test_a_critical_job_starts_only_once_the_command_it_evicted_has_stopped(
    agent, product, start_runner, fast_server, fast_client
):
    # Given a one-seat factory whose job's command ignores SIGTERM (killed after --kill-grace 1)
    command, out = agent
    normal = fast_client.submit_job(product_id=product, idempotency_key="normal", title="normal").job
    env = {"E2E_OUT": str(out), "SLOW_UNLESS_CRITICAL": "1", "IGNORE_TERM": "1", "AQ_FLEET_AUTOSHIP": "1"}
    runner = start_runner(fast_server.url, runner_args("one-seat", product, command, "--seats", "1", "--max-jobs", "2"),
                          env)
    pids = wait_for(lambda: pids_of(out, normal.id), 15, "the normal job's command to start")
    try:
        # When a critical job evicts it
        critical = fast_client.submit_job(product_id=product, idempotency_key="critical", title="critical",
                                          priority="critical").job
        assert runner.wait(30) == 0, runner.log()
    finally:
        kill_group(pids[0])

    # Then the critical job's command started with the evicted one gone, not beside it
    assert fast_client.get_job(critical.id).stage == Stage.SHIPPED
    beside = out / (critical.id.replace(":", "_") + ".beside")
    assert beside.read_text() == "", f"started beside {beside.read_text()}\n{runner.log()}"


def test_sigterm_gives_a_running_job_back_with_its_checkpoint(agent, product, start_runner, fast_server, fast_client):
    command, out = agent
    job = fast_client.submit_job(product_id=product, idempotency_key="k1", title="drained").job
    env = {"E2E_OUT": str(out), "SLOW": "1"}
    runner = start_runner(fast_server.url, runner_args("drainer", product, command, "--drain-seconds", "0.5"), env)
    pids = wait_for(lambda: pids_of(out, job.id), 15, "the job's command to start")
    try:
        runner.signal(signal.SIGTERM)
        assert runner.wait(15) == 0, runner.log()
        assert all(process_gone(pid) for pid in pids)
    finally:
        kill_group(pids[0])

    given_back = fast_client.get_job(job.id)
    assert (given_back.stage, given_back.attempts) == (Stage.QUEUED, 0)
    assert given_back.checkpoint == {"progress": "halfway"}
    assert given_back.runs[-1].result == RunResult.RELEASED


def test_a_coordinator_outage_does_not_stop_running_work(agent, product, start_runner, tmp_path):
    command, out = agent
    # A 10 s lease is renewed every ~3.3 s; a 4 s outage makes at least one heartbeat fail and
    # leaves the lease enough time to be renewed once the coordinator is back.
    with running_server(env={"FLEET_LEASE_SECONDS": "10"}, args=["--no-timers"], db=known_to(tmp_path / "restart.db")) as server, \
            FleetClient(server.url, backoff=FAST) as client:
        job = client.submit_job(product_id=product, idempotency_key="k1", title="outlives an outage").job
        env = {"E2E_OUT": str(out), "SLOW": "1", "SLOW_SECONDS": "6", "AQ_FLEET_AUTOSHIP": "1"}
        runner = start_runner(server.url, runner_args("steady", product, command, "--once"), env)
        wait_for(lambda: pids_of(out, job.id), 15, "the job's command to start")

        # When the coordinator is down for a while (heartbeats fail: not an answer about the lease)
        port = server.port
        server.stop()
        time.sleep(4)
        server.start(port=port)

        # Then the job finishes and ships under the lease it kept
        assert runner.wait(20) == 0, runner.log()
        done = client.get_job(job.id)
        assert done.stage == Stage.SHIPPED and [run.result for run in done.runs] == [RunResult.SHIPPED]
        assert "connection refused" in runner.log()
