"""One seat of a factory: a claimed job, worked from claim to its last write.

    PATCH building → (PR mode: clone, branch) → COMMAND → exit 0: PATCH testing, then ship
    (autoship) or park (release with stage testing); non-zero: release with result retry.

The command runs in its own working directory with the job in its environment:

    FLEET_JOB_ID, FLEET_RUN_ID, FLEET_PRODUCT_ID, FLEET_FACTORY_ID
    FLEET_JOB_FILE         the job as JSON (with its checkpoint, if it was given back before)
    FLEET_CHECKPOINT_FILE  where the command may leave JSON to resume from if it is stopped
    FLEET_BRANCH, FLEET_BASE_BRANCH   in PR mode

`FLEET_KEY` and `FLEET_TOKEN` are not passed on: the command is an agent working on untrusted code.

A seat is stopped from outside with `stop()`: `revoked` (the coordinator took the lease away:
stop the command, and write to the job only its report) or `drain` (the runner is shutting down:
stop the command and give the job back with its checkpoint).

Whenever the lease is lost after the command ran (revoked while it ran, or a write refused with
`lease_lost`), what the command reported (its cost, a PR) is sent once with
`POST /fleet/jobs/{id}/lease/report`, so the run's cost still reaches the product's budget. A
lease said lost may hold the job again (an outage's grace, seen by one coordinator instance
and not by another): the report is then refused, and the release the lost write meant, which
carries the report, ends the lease instead.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

from pydantic.alias_generators import to_camel

from fleet import claims
from fleet.jobs import Job
from fleetclient import checkout as git, errors
from fleetclient.client import FleetClient
from fleetclient.process import JobProcess
from fleetclient.report import Report

log = logging.getLogger("fleetclient.factory")

#: The release fields that carry the command's report (`Report.release_fields`).
REPORTED = frozenset({"insights", "pr_url", "branch", "artifacts"})

#: The runner's credentials: never in a job command's environment.
CREDENTIALS = frozenset({"FLEET_KEY", "FLEET_TOKEN"})

#: Bounds on the lease length learned from a claim (guards against a skewed local clock).
MIN_LEASE_SECONDS = 1.0
MAX_LEASE_SECONDS = 3600.0
#: Tries of a fenced write that got no answer before giving up on it.
WRITE_ATTEMPTS = 5
#: Rounds of a late report refused because its lease holds again, each followed by the release
#: that ends that lease, before giving the run's cost up.
LATE_REPORT_ROUNDS = 3


class StopReason(str, Enum):
    REVOKED = "revoked"  # the lease is gone (requeued, cancelled, preempted): stop, write nothing
    DRAIN = "drain"  # the runner is shutting down: stop, give the job back with its checkpoint


@dataclass(frozen=True)
class SeatSettings:
    """What every seat of a runner shares."""

    factory_id: str
    command: tuple[str, ...]
    autoship: bool = False
    pr_mode: bool = False
    git_base: str = "https://github.com/"
    kill_grace_seconds: float = 10.0
    workdir_root: str | None = None
    keep_workdirs: bool = False
    gh: str = "gh"
    out: TextIO | None = None


class Seat:
    """A claimed job and the thread working it. `start()` once; `done` when it has finished."""

    def __init__(self, client: FleetClient, settings: SeatSettings, claim: claims.Claimed,
                 on_done: Callable[["Seat"], None] = lambda seat: None) -> None:
        assert claim.job is not None and claim.lease is not None
        self.client = client
        self.settings = settings
        self.job: Job = claim.job
        self.lease_id: str = claim.lease.lease_id
        self.run_id: str = claim.run_id or ""
        self._on_done = on_done
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_reason: StopReason | None = None
        self._thread = threading.Thread(target=self._work, name=f"seat {self.job.id}", daemon=True)
        self.lease_seconds = MIN_LEASE_SECONDS
        self.renew_due = 0.0
        self.renewed(claim.lease.expires_at)
        #: How the seat ended: shipped, parked, retry, given_back, revoked, lost, failed.
        self.outcome: str | None = None
        #: Whether the coordinator refused a write for the lease being gone.
        self.lease_lost = False
        #: Whether the command has ended (the seat is writing what it did, or has).
        self.command_ended = False
        self._taken_after_command = threading.Event()

    # Called from other threads

    def start(self) -> None:
        self._thread.start()

    def stop(self, reason: StopReason) -> None:
        """Ask the seat to stop its command; the first reason given wins."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
        self._stop.set()

    def taken_after_command(self) -> None:
        """A heartbeat answered the lease revoked once the command had ended: a PR mode delivery
        under way pushes no further and opens no pull request (the seat's own writes learn the
        lease's fate by themselves)."""
        self._taken_after_command.set()

    def renewed(self, expires_at: datetime | None) -> None:
        """The lease now runs until `expires_at`: the next renewal is due a third of the way."""
        if expires_at is None:
            return
        remaining = (expires_at - datetime.now(timezone.utc)).total_seconds()
        with self._lock:
            self.lease_seconds = min(MAX_LEASE_SECONDS, max(MIN_LEASE_SECONDS, remaining))
            self.renew_due = time.monotonic() + self.lease_seconds / 3

    @property
    def done(self) -> bool:
        return not self._thread.is_alive() and self.outcome is not None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def stop_reason(self) -> StopReason | None:
        with self._lock:
            return self._stop_reason

    # The seat's own thread

    def _work(self) -> None:
        workdir: Path | None = None
        try:
            workdir = Path(tempfile.mkdtemp(prefix=f"fleet-{_safe(self.job.id)}-", dir=self.settings.workdir_root))
            self.outcome = self._run(workdir)
        except Exception:  # a seat never takes the runner down
            log.exception("job %s: the runner failed; releasing the job for retry", self.job.id)
            try:
                self.outcome = self._release("failed", result="retry")
            except Exception:  # the lease expires, and the sweep requeues the job
                log.exception("job %s: cannot release it", self.job.id)
                self.outcome = "failed"
        finally:
            if workdir is not None and not self.settings.keep_workdirs:
                shutil.rmtree(workdir, ignore_errors=True)
            self.client.close_thread_session()
            self._on_done(self)

    def _run(self, workdir: Path) -> str:
        job = self._patch("building")
        if job is None:
            return "lost"
        self.job = job
        job_file = workdir / "job.json"
        job_file.write_text(json.dumps(job.to_doc(), indent=2))
        checkpoint_file = workdir / "checkpoint.json"
        env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
        env.update(
            FLEET_JOB_ID=job.id, FLEET_RUN_ID=self.run_id, FLEET_PRODUCT_ID=job.product_id,
            FLEET_FACTORY_ID=self.settings.factory_id, FLEET_JOB_FILE=str(job_file),
            FLEET_CHECKPOINT_FILE=str(checkpoint_file),
        )
        checkout = None
        cwd = workdir / "work"
        if self.settings.pr_mode and job.repo:
            try:
                checkout = git.prepare(job.repo, job.base_branch, job.id, workdir / "checkout", self.settings.git_base)
            except git.DeliveryFailed as exc:
                log.error("job %s: cannot check out %s: %s", job.id, job.repo, exc)
                return self._release("retry", result="retry", insights={"factoryError": str(exc)[:400]})
            cwd = checkout.path
            env.update(FLEET_BRANCH=checkout.branch, FLEET_BASE_BRANCH=checkout.base)
        else:
            cwd.mkdir()

        code, last_line = self._execute(cwd, env)
        self.command_ended = True
        report = Report.parse(last_line)
        if report.ignored:
            log.warning("job %s: report line members %s ignored (a report has insights, prUrl, branch, artifacts)",
                        job.id, ", ".join(map(repr, report.ignored)))
        reason = self.stop_reason if code is None else None
        if reason == StopReason.REVOKED:
            log.warning("job %s: lease revoked; command stopped", job.id)
            # Should the lease hold after all, the stopped command's job is given back, as by a drain.
            given_back = {"checkpoint": _read_json(checkpoint_file), **report.release_fields()}
            return "given_back" if self._report_late(report, given_back) else "revoked"
        if reason == StopReason.DRAIN:
            checkpoint = _read_json(checkpoint_file)
            log.info("job %s: giving it back (runner draining)", job.id)
            return self._release("given_back", checkpoint=checkpoint, **report.release_fields())
        if code != 0:
            log.warning("job %s: command exited with %s; releasing for retry", job.id, code)
            return self._release("retry", result="retry", **report.release_fields())
        if checkout is not None:
            try:
                pr = git.deliver(checkout, _title(job), _pr_body(job, self.run_id, self.settings.factory_id),
                                 author=f"fleet factory {self.settings.factory_id}", gh=self.settings.gh,
                                 wanted=lambda: not self._taken_after_command.is_set())
            except git.Withdrawn as exc:
                log.warning("job %s: lease revoked while delivering: %s", job.id, exc)
                if exc.pushed:
                    report = report.with_pull_request(None, exc.pushed)
                given_back = {"checkpoint": _read_json(checkpoint_file), **report.release_fields()}
                return "given_back" if self._report_late(report, given_back) else "revoked"
            except git.DeliveryFailed as exc:
                log.error("job %s: cannot open a pull request: %s", job.id, exc)
                return self._release("retry", result="retry", insights={**(report.insights or {}),
                                                                         "factoryError": str(exc)[:400]})
            report = report.with_pull_request(pr.url, pr.branch)
        if self._patch("testing", insights=report.insights) is None:
            return self._lost(report, {"stage": "testing", **report.release_fields()}, "parked")
        if not self.settings.autoship:
            return self._release("parked", stage="testing", **report.release_fields())
        if report.delivers:
            # A PATCH carries only insights; a terminal release records the PR, branch and artifacts too.
            return self._release("shipped", stage="shipped", **report.release_fields())
        shipped = self._patch("shipped", insights=report.insights)
        if shipped:
            return _shipped_or_parked(shipped)
        return self._lost(report, {"stage": "shipped", **report.release_fields()}, "shipped")

    def _execute(self, cwd: Path, env: dict[str, str]) -> tuple[int | None, str | None]:
        """Run the command; its exit code (None if it was stopped) and last stdout line."""
        if self._stop.is_set():
            return None, None
        process = JobProcess(self.settings.command, cwd, env, prefix=self.job.id, out=self.settings.out)
        try:
            process.start()
        except OSError as exc:
            log.error("job %s: cannot start %s: %s", self.job.id, self.settings.command[0], exc)
            return 127, None
        log.info("job %s: running %s (pid %s) in %s", self.job.id, self.settings.command[0], process.pid, cwd)
        code = process.wait(self._stop)
        if code is None:
            log.info("job %s: stopping the command (%s)", self.job.id, self.stop_reason.value)
            process.terminate(self.settings.kill_grace_seconds)
        return code, process.last_line

    # Fenced writes

    def _patch(self, stage: str, insights: dict[str, Any] | None = None) -> Job | None:
        def write() -> Job:
            try:
                return self.client.patch_job(self.job.id, self.lease_id, stage, insights=insights)
            except errors.ValidationFailed as exc:
                # The command's insights refused (a cost that is not a number, say): the job
                # moves on without them, as a release drops what is refused of a report.
                if not insights:
                    raise
                log.warning("job %s: insights refused (%s); PATCH %s without them", self.job.id, exc.detail, stage)
                return self.client.patch_job(self.job.id, self.lease_id, stage)

        # Landed, read back: at `stage`; or, for `shipped`, ended by this lease's own write (a job
        # whose review gate is open is parked at testing instead).
        landed = lambda job: job.stage.value == stage or (stage == "shipped" and self._ended_by_own_write(job))  # noqa: E731
        job = self._fenced(f"PATCH {stage}", write, landed)
        if job is not None:
            log.info("job %s → %s", self.job.id, stage)
        return job

    def _release(self, outcome: str, **fields: Any) -> str:
        fields = {k: v for k, v in fields.items() if v is not None}
        job = self._fenced("release", self._release_write(fields), self._ended_by_own_write)
        if job is None:
            reported = {k: fields[k] for k in REPORTED & fields.keys()}
            return self._lost(Report(**reported), fields, outcome)
        log.info("job %s: released (%s), now %s", self.job.id, outcome, job.stage.value)
        return _shipped_or_parked(job) if outcome == "shipped" else outcome

    def _release_write(self, fields: dict[str, Any]) -> Callable[[], Job]:
        """The release of the lease with `fields`, made again without what the coordinator
        refused of them (the command's report, a checkpoint over its bound; the report if the
        refusal names neither): the job must not be stranded over it."""

        def write() -> Job:
            try:
                return self.client.release_lease(self.job.id, self.lease_id, **fields)
            except errors.ValidationFailed as exc:
                named = {str(e.get("field", "")).split(".")[0] for e in exc.errors}
                droppable = (REPORTED | {"checkpoint"}) & fields.keys()
                dropped = {k for k in droppable if to_camel(k) in named} or REPORTED & fields.keys()
                if not dropped:
                    raise
                log.warning("job %s: %s refused (%s); releasing without it", self.job.id,
                            " and ".join(sorted(dropped)), exc.detail)
                bare = {k: v for k, v in fields.items() if k not in dropped}
                return self.client.release_lease(self.job.id, self.lease_id, **bare)

        return write

    def _ended_by_own_write(self, job: Job) -> bool:
        """Whether the job, read back, shows this lease ended by its holder's own write: a
        lease merely gone was taken (preempted, expired, requeued) before the write landed."""
        return any(run.ended_by is not None and run.ended_by.lease_id == self.lease_id for run in job.runs)

    def _lost(self, report: Report, release: dict[str, Any], outcome: str) -> str:
        """A write was not made: if for the lease being gone, report the run late. `release`:
        the release that ends the lease as the write meant to (`outcome`), should it hold again."""
        if self.lease_lost and self._report_late(report, release):
            return outcome
        return "lost"

    def _report_late(self, report: Report, release: dict[str, Any]) -> bool:
        """Send what the command reported, once the lease is gone, so its cost is counted; a
        refusal is logged, never the seat's failure. A lease refused as lost may hold again
        (its factory's outage grace, decided by a coordinator instance that had seen the
        outage): the report is then refused as `illegal_transition` and the lease is ended with
        `release`, which carries the report, instead (with no report, it is ended all the same).
        Instances may go on disagreeing, and the lease may be taken between a refusal and the
        read that follows it, so the two alternate, a bounded number of rounds. Whether
        `release` ended the lease."""
        fields = {k: v for k, v in report.release_fields().items() if v}
        refused = False  # the report was refused, and the lease not found holding since
        for _ in range(LATE_REPORT_ROUNDS):
            if fields:
                try:
                    self.client.report_run(self.job.id, self.lease_id, **fields)
                except errors.IllegalTransition as exc:
                    if refused:  # refused again, the lease gone: not for its holding
                        self._unreported(fields, exc)
                        return False
                    refused = True
                except errors.FleetClientError as exc:
                    unanswered = isinstance(exc, errors.FleetUnreachable | errors.StoreBusy)
                    self._unreported(fields, exc, "later" if unanswered else None)
                    return False
                else:
                    cost = (report.insights or {}).get("costUsd")
                    log.info("job %s: reported the run of the lost lease%s", self.job.id,
                             f" (cost {cost})" if cost is not None else "")
                    return False
            if not self._holds_again():
                if not fields:
                    return False  # nothing to report, and nothing to end
                continue  # taken since the refusal (or not known): the report may be taken now
            refused = False
            log.warning("job %s: the lost lease holds the job again; releasing it%s", self.job.id,
                        " with the report" if fields else "")
            ended = self._end_held_lease(release)
            if ended is not None:
                return ended
        if fields:
            self._unreported(fields, f"gave up after {LATE_REPORT_ROUNDS} rounds", "once the lease has expired")
        else:
            log.error("job %s: gave up on the run of the lost lease after %d rounds", self.job.id, LATE_REPORT_ROUNDS)
        return False

    def _unreported(self, fields: dict[str, Any], why: object, when: str | None = None) -> None:
        """Log a lost lease's run left unreported; `when` a report by hand may yet be taken,
        the command that makes it (the report itself on its stdin)."""
        by_hand = ""
        if when:
            report = shlex.quote(json.dumps({to_camel(k): v for k, v in fields.items()}, separators=(",", ":")))
            by_hand = f"; to count it {when}: echo {report} | fleet jobs report {self.job.id} " \
                      f"--lease-id {self.lease_id} --file -"
        log.error("job %s: the run of lost lease %s is not reported (%s): its cost is not counted%s",
                  self.job.id, self.lease_id, why, by_hand)

    def _end_held_lease(self, release: dict[str, Any]) -> bool | None:
        """Make `release` on a lease found holding the job again: True once it ended the lease,
        None if refused as lost again (another round may end it), False if refused otherwise."""
        self.lease_lost = False
        job = self._fenced("release of the lease that held again",
                           self._release_write({k: v for k, v in release.items() if v is not None}),
                           self._ended_by_own_write)
        lost_again, self.lease_lost = self.lease_lost, True
        if job is not None:
            log.info("job %s: released the lease that held again", self.job.id)
            return True
        return None if lost_again else False

    def _holds_again(self) -> bool:
        try:
            job = self.client.get_job(self.job.id)
        except errors.FleetClientError:
            return False
        return job.lease is not None and job.lease.lease_id == self.lease_id

    def _fenced(self, what: str, write: Callable[[], Job], landed: Callable[[Job], bool]) -> Job | None:
        """Make a lease-fenced write. Without an answer it is not repeated blindly: the job is
        read back, and the write counts as done if it landed, as lost if the lease is gone."""
        backoff = self.client.backoff
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return write()
            except errors.LeaseLost:
                log.warning("job %s: %s refused, lease lost (the job is no longer ours)", self.job.id, what)
                self.lease_lost = True
                return None
            except (errors.FleetUnreachable, errors.StoreBusy) as exc:
                wait = backoff.delay(attempt, getattr(exc, "retry_after", None))
                log.warning("job %s: %s got no answer (%s); checking in %.1fs", self.job.id, what, exc, wait)
                time.sleep(wait)
            except errors.FleetApiError as exc:
                log.error("job %s: %s refused: %s", self.job.id, what, exc)
                return None
            try:
                job = self.client.get_job(self.job.id)
            except errors.FleetClientError:
                continue  # cannot tell; the write is fenced, so trying again is harmless
            if landed(job):
                return job
            if job.lease is None or job.lease.lease_id != self.lease_id:
                log.warning("job %s: lease lost while writing %s", self.job.id, what)
                self.lease_lost = True
                return None
        log.error("job %s: gave up on %s after %d tries", self.job.id, what, WRITE_ATTEMPTS)
        return None


def _shipped_or_parked(job: Job) -> str:
    """How a write asking for `shipped` ended: the coordinator parks a job whose review gate is
    open at `testing` instead (only the gate's quorum ships it)."""
    if job.stage.value == "testing":
        log.info("job %s: parked at testing, its review gate open", job.id)
        return "parked"
    return "shipped"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _safe(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", job_id)[:80]


def _title(job: Job) -> str:
    return job.title or f"fleet job {job.id}"


def _pr_body(job: Job, run_id: str, factory_id: str) -> str:
    body = job.body_md.strip()
    head = f"Fleet job `{job.id}`, run `{run_id}`, by factory `{factory_id}`."
    return f"{head}\n\n{body[:60000]}" if body else head
