"""The reference factory: `fleet factory run --factory-id F --product P -- COMMAND…`.

It claims jobs of one product and works each in a seat (`fleetclient.seat`), up to `seats` at
once, while a background thread heartbeats about every third of the lease: renewing its leases,
and stopping a seat whose lease comes back `revoked`. Between claims it sleeps a jittered poll
interval; with the gate on (`AQ_FLEET_GATE=1`) an idle poll costs one point read
(`fleetclient.gate`).

Stopping: SIGTERM (or Ctrl-C) drains: no new claims; running jobs get `drain_seconds` to finish,
then their commands are stopped and the jobs given back with their checkpoint. A second signal
skips the wait. `max_jobs` (every claimed job counts) and `exit_when_idle` end the run once the
running jobs are finished. The runner exits 0 when done.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TextIO

from fleet import stages
from fleetclient import errors, gate as gates
from fleetclient.client import FleetClient
from fleetclient.seat import Seat, SeatSettings, StopReason
from shared.config import truthy

log = logging.getLogger("fleetclient.factory")

#: Heartbeat interval while no lease tells the runner better (registration; `online` ≤ 60 s).
IDLE_HEARTBEAT_SECONDS = 20.0
#: Poll intervals are jittered by ±this fraction, so idle factories do not claim in lockstep.
POLL_JITTER = 0.25
#: What a preempted seat may take beyond its kill grace to end (its last fenced write is
#: refused, its work directory removed) before the critical job that evicted it starts anyway.
EVICTION_SLACK_SECONDS = 5.0
TICK = 0.1


class RunnerError(Exception):
    """The runner cannot go on (e.g. the coordinator refuses its factory id)."""


@dataclass(frozen=True)
class RunnerConfig:
    factory_id: str
    product_id: str
    command: tuple[str, ...]
    capabilities: tuple[str, ...] = ()
    seats: int = 1
    #: Stop claiming after this many claims (every claimed job counts); None: no limit.
    max_jobs: int | None = None
    poll_seconds: float = 5.0
    #: Exit once a claim finds no job and nothing is running.
    exit_when_idle: bool = False
    #: `AQ_FLEET_AUTOSHIP`: a passing job is shipped, not parked at testing for review.
    autoship: bool = False
    #: `AQ_FLEET_GATE`: skip claims while the queue-state version is unchanged.
    gate: bool = False
    backstop_polls: int = 12
    #: `AQ_FLEET_PR`: jobs with a repo run in a checkout and are delivered as pull requests.
    pr_mode: bool = False
    #: `AQ_FLEET_GIT_BASE`: where `owner/name` repositories are cloned from.
    git_base: str = "https://github.com/"
    drain_seconds: float = 30.0
    kill_grace_seconds: float = 10.0
    workdir_root: str | None = None
    keep_workdirs: bool = False

    @staticmethod
    def flags_from(env: Mapping[str, str]) -> dict[str, object]:
        """The settings the environment gives (`AQ_FLEET_*`), as keyword arguments."""
        return {
            "autoship": truthy(env.get("AQ_FLEET_AUTOSHIP")),
            "gate": truthy(env.get("AQ_FLEET_GATE")),
            "pr_mode": truthy(env.get("AQ_FLEET_PR")),
            "git_base": env.get("AQ_FLEET_GIT_BASE") or "https://github.com/",
        }


@dataclass
class RunStats:
    claimed: int = 0
    claims: int = 0
    skipped_claims: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


def runnable(command: tuple[str, ...], in_clone: bool = False) -> tuple[str, ...]:
    """`command` with its program made absolute: each job runs in a work directory of its own,
    where a relative path, or a name found through a relative `PATH` entry, names nothing.
    `ValueError` when there is no such program (a path to no executable file, a name not on
    `PATH`): a runner that started anyway would fail every job it claims, one attempt each,
    until they dead-letter. `in_clone` (PR mode, where a job runs in a clone of its repo): a
    relative path that names nothing here is left as it is, the repo's own script."""
    program, rest = os.path.expanduser(command[0]), command[1:]
    if os.sep in program or (os.altsep and os.altsep in program):
        path = os.path.abspath(program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return (path, *rest)
        if in_clone and not os.path.isabs(program):
            return (program, *rest)
        raise ValueError(f"cannot run {command[0]}: {path} is not an executable file")
    found = shutil.which(program)
    if found is None:
        raise ValueError(f"cannot run {program}: no such command on PATH")
    return (os.path.abspath(found), *rest)


class Runner:
    def __init__(self, client: FleetClient, config: RunnerConfig, out: TextIO | None = None,
                 rng: random.Random | None = None) -> None:
        if config.seats < 1:
            raise ValueError("seats must be at least 1")
        if not config.command:
            raise ValueError("a command to run per job is required")
        command = runnable(tuple(config.command), in_clone=config.pr_mode)
        if config.pr_mode:
            # Found missing only after a job's command ran, each would cost the job an attempt.
            missing = [tool for tool in ("git", "gh") if shutil.which(tool) is None]
            if missing:
                raise ValueError(f"PR mode (AQ_FLEET_PR) needs {' and '.join(missing)} on PATH")
        self.client = client
        self.config = config
        self.stats = RunStats()
        self._rng = rng or random.Random()
        self._seat_settings = SeatSettings(
            factory_id=config.factory_id, command=command, autoship=config.autoship,
            pr_mode=config.pr_mode, git_base=config.git_base, kill_grace_seconds=config.kill_grace_seconds,
            workdir_root=config.workdir_root, keep_workdirs=config.keep_workdirs, out=out,
        )
        self._gate = (
            gates.Gate(lambda: client.queue_state(config.product_id).version, config.backstop_polls)
            if config.gate else gates.OpenGate()
        )
        self._seats: list[Seat] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._draining = threading.Event()
        self._hurry = threading.Event()
        self._stopped = threading.Event()
        self._idle = False
        #: A seat finished since the last poll (see `Gate.reopen`).
        self._seat_freed = False
        self._last_reason: stages.ClaimReason | None = None
        #: Whether the coordinator preempts (None: not known yet, asked again on the next poll).
        self._preemption: bool | None = None
        self._beat_due = 0.0
        #: Why the coordinator refuses this factory outright (a heartbeat answered 401 or 403:
        #: its token revoked or expired, or not this factory's), for the main loop to stop on.
        self._refused: RunnerError | None = None

    # Control (any thread, or a signal handler)

    def drain(self) -> None:
        """Stop claiming; let running jobs finish for `drain_seconds`, then give them back.
        Called again: give them back now."""
        if self._draining.is_set():
            self._hurry.set()
        self._draining.set()
        self._wake.set()

    @property
    def running(self) -> list[Seat]:
        with self._lock:
            return list(self._seats)

    # The run

    def run(self) -> int:
        """Claim and work jobs until done; the exit code (0 when it finished as asked)."""
        config = self.config
        log.info("factory %s: product %s, %d seat(s)%s%s%s", config.factory_id, config.product_id, config.seats,
                 ", gate on" if config.gate else "", ", autoship" if config.autoship else "",
                 ", PR mode" if config.pr_mode else "")
        beater = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        beater.start()
        restore = self._trap_signals()
        try:
            self._claim_loop()
            self._finish()
            return 0
        except RunnerError as exc:
            log.error("factory %s: %s", config.factory_id, exc)
            self._stop_all()
            return 2
        except BaseException:
            log.exception("factory %s: the runner failed; giving its jobs back", config.factory_id)
            self._stop_all()
            raise
        finally:
            self._stopped.set()
            beater.join(5)
            restore()
            log.info("factory %s: stopped; claimed %d job(s), outcomes %s", config.factory_id,
                     self.stats.claimed, self.stats.outcomes or "{}")

    def _claim_loop(self) -> None:
        config = self.config
        while not self._draining.is_set():
            self._check_refused()
            running = len(self.running)
            if config.max_jobs is not None and self.stats.claimed >= config.max_jobs:
                return
            if config.exit_when_idle and self._idle and running == 0 and not self._freed_unclaimed():
                why = self._last_reason.value if self._last_reason else "the gate saw no change"
                log.info("factory %s: nothing to claim (%s) and nothing running; exiting", config.factory_id, why)
                return
            # A full runner still claims when the coordinator preempts: a critical job may evict one of its own.
            if (running < config.seats or self._coordinator_preempts()) and self._poll():
                continue  # got a job: mid-drain, claim again straight away
            self._sleep(config.poll_seconds * self._rng.uniform(1 - POLL_JITTER, 1 + POLL_JITTER))

    def _freed_unclaimed(self) -> bool:
        """Whether a seat finished since the last claim: a claim that found nothing (or a
        gate that held back) while a seat was finishing must not end an idle run, as what the
        seat's end makes claimable (the seat itself, for a runner refused `seat_limit`) is
        only looked for by the next claim."""
        with self._lock:
            return self._seat_freed

    def _poll(self) -> bool:
        """One poll: maybe claim (the gate decides); whether a job was claimed."""
        try:
            return self._claim()
        except RunnerError:
            raise
        except Exception:  # an unexpected answer must not take the runner and its running jobs down
            log.exception("factory %s: claim failed", self.config.factory_id)
            self._gate.claim_failed()
            return False

    def _claim(self) -> bool:
        with self._lock:
            freed, self._seat_freed = self._seat_freed, False
        if freed and self._last_reason == stages.ClaimReason.SEAT_LIMIT:
            self._gate.reopen()  # what a full runner was refused is claimable now; no version bump says so
        decision = self._gate.decide()
        if not decision.claim:
            self.stats.skipped_claims += 1
            self._idle = True  # the gate holds back only after a claim found nothing, with nothing new since
            return False
        config = self.config
        self.stats.claims += 1
        try:
            claim = self.client.claim(config.factory_id, config.product_id, list(config.capabilities),
                                      seat_limit=config.seats)
        except errors.FleetApiError as exc:
            # A claim that failed after evicting for a critical job still names its victims.
            for victim in exc.problem.get("preempted") or ():
                self._stop_seat(str(victim), StopReason.REVOKED)
            self._claim_refused(exc)
            return False
        except errors.FleetUnreachable as exc:
            self._gate.claim_failed()
            log.warning("factory %s: claim failed (%s); next poll retries", config.factory_id, exc)
            return False
        self._gate.claimed(claim.job is not None)
        # Jobs evicted for a critical job: their leases are gone, whatever this claim took (it
        # may have lost the critical job to another factory, and taken nothing, or the victim
        # itself, requeued, under a new lease).
        evicted = [seat for victim in claim.preempted for seat in self._stop_seat(victim, StopReason.REVOKED)]
        if claim.job is None:
            self._idle = True
            if claim.reason != self._last_reason:
                log.info("factory %s: no job (%s)", config.factory_id, claim.reason.value if claim.reason else "-")
            self._last_reason = claim.reason
            return False
        self._idle = False
        self._last_reason = None
        self.stats.claimed += 1
        seat = Seat(self.client, self._seat_settings, claim, on_done=self._seat_done)
        with self._lock:  # listed from now on: the heartbeats renew its lease while it waits below
            self._seats.append(seat)
            self._beat_due = min(self._beat_due, seat.renew_due)
        log.info("factory %s: claimed %s (run %s, %s)", config.factory_id, claim.job.id, claim.run_id,
                 f"gate: {decision.why.value}")
        self._await_evicted(evicted, claim.job.id)
        seat.start()
        return True

    def _claim_refused(self, exc: errors.FleetApiError) -> None:
        """A claim answered with an error: a busy or failing coordinator is waited out (the
        next poll retries); any other refusal ends the runner."""
        if isinstance(exc, errors.StoreBusy) or exc.status >= 500 or exc.status == 429:
            self._gate.claim_failed()
            log.warning("factory %s: claim failed (%s); next poll retries", self.config.factory_id, exc)
            return
        raise RunnerError(f"the coordinator refuses this factory's claims: {exc}") from exc

    def _await_evicted(self, evicted: list[Seat], job_id: str) -> None:
        """Wait for the seats a critical claim evicted to end (their kill grace and a few
        seconds at most, all together), so that the job taking their place does not run beside
        their commands; one that outlives the wait is left to end on its own, and said."""
        deadline = time.monotonic() + self.config.kill_grace_seconds + EVICTION_SLACK_SECONDS
        for seat in evicted:
            seat.join(max(0.0, deadline - time.monotonic()))
        for seat in evicted:
            if not seat.done:
                log.warning("factory %s: %s starts while the command of %s, which it evicted, is still ending",
                            self.config.factory_id, job_id, seat.job.id)

    def _finish(self, refusable: bool = True) -> None:
        """Wait for the running jobs; once draining, stop them after `drain_seconds`.
        `refusable`: stop waiting (`RunnerError`) if the coordinator refuses this factory."""
        deadline: float | None = None
        stopped = False
        while self.running:
            if refusable:
                self._check_refused()
            if self._draining.is_set() and not stopped:
                if deadline is None:
                    deadline = time.monotonic() + self.config.drain_seconds
                    log.info("factory %s: draining %d running job(s)", self.config.factory_id, len(self.running))
                if self._hurry.is_set() or time.monotonic() >= deadline:
                    for seat in self.running:
                        seat.stop(StopReason.DRAIN)
                    stopped = True
            self._wake.wait(TICK)
            self._wake.clear()
        self._stopped.set()

    def _check_refused(self) -> None:
        if self._refused is not None:
            raise self._refused

    def _stop_all(self) -> None:
        """Give every running job back now and wait for the seats to finish."""
        self.drain()
        self.drain()
        self._finish(refusable=False)

    def _seat_done(self, seat: Seat) -> None:
        with self._lock:
            if seat in self._seats:
                self._seats.remove(seat)
            outcome = seat.outcome or "failed"
            self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
            self._idle = False  # its outcome may have queued more (dependents, a retry): look again
            self._seat_freed = True
        self._wake.set()

    def _stop_seat(self, job_id: str, reason: StopReason, lease_id: str | None = None) -> list[Seat]:
        """Stop the running seats of `job_id` (under `lease_id`, if given); the seats stopped."""
        stopped = [
            seat for seat in self.running if seat.job.id == job_id and (lease_id is None or seat.lease_id == lease_id)
        ]
        for seat in stopped:
            seat.stop(reason)
        return stopped

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    # Heartbeats

    def _heartbeats(self) -> None:
        """Register the factory and renew its leases: due a third of the way through the
        shortest lease, and every `IDLE_HEARTBEAT_SECONDS` when idle. A heartbeat that fails is
        not an answer about the leases: they are only stopped when answered `revoked`."""
        while not self._stopped.is_set():
            with self._lock:
                due = self._beat_due
            if time.monotonic() >= due:
                self._beat()
            self._stopped.wait(TICK)

    def _beat(self) -> None:
        config = self.config
        seats = [seat for seat in self.running if not seat.done]
        try:
            answer = self.client.heartbeat(
                config.factory_id, [config.product_id], list(config.capabilities), config.seats,
                [(seat.job.id, seat.lease_id) for seat in seats],
            )
        except (errors.Unauthorized, errors.Forbidden) as exc:
            # Not a failure to wait out: this factory may not act. Its commands would run on,
            # spending, for results no lease of theirs can deliver.
            self._refused = RunnerError(f"the coordinator refuses this factory's heartbeats: {exc}")
            self._wake.set()
            with self._lock:
                self._beat_due = time.monotonic() + IDLE_HEARTBEAT_SECONDS
            return
        except errors.FleetClientError as exc:
            log.warning("factory %s: heartbeat failed (%s); leases kept", config.factory_id, exc)
            # Soon, but not in a tight loop.
            retry_in = min(IDLE_HEARTBEAT_SECONDS, max(1.0, self._next_interval(seats) / 2))
            with self._lock:
                self._beat_due = time.monotonic() + retry_in
            return
        by_lease = {(seat.job.id, seat.lease_id): seat for seat in seats}
        for lease in answer.leases:
            seat = by_lease.get((lease.job_id, lease.lease_id))
            if seat is None:
                continue
            if lease.revoked:
                if seat.command_ended:
                    # Nothing to stop: its own release (perhaps the one that ended this lease,
                    # under way as the heartbeat was) learns the lease's fate by itself. A
                    # pull request it is delivering is not opened.
                    seat.taken_after_command()
                    continue
                log.warning("factory %s: lease of %s revoked; stopping it", config.factory_id, seat.job.id)
                seat.stop(StopReason.REVOKED)
            else:
                seat.renewed(lease.expires_at)
        with self._lock:
            self._beat_due = time.monotonic() + self._next_interval(self._seats)

    @staticmethod
    def _next_interval(seats: list[Seat]) -> float:
        now = time.monotonic()
        return min([IDLE_HEARTBEAT_SECONDS, *(max(0.0, seat.renew_due - now) for seat in seats)])

    # Set-up

    def _coordinator_preempts(self) -> bool:
        """Whether the coordinator runs with preemption (asked once it answers)."""
        if self._preemption is None:
            try:
                self._preemption = bool(self.client.health().flags.get("preemption"))
            except errors.FleetClientError:
                return False
        return self._preemption

    def _trap_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum, frame):
            log.info("factory %s: %s: %s", self.config.factory_id, signal.Signals(signum).name,
                     "stopping now" if self._draining.is_set() else "draining (again to stop now)")
            self.drain()

        for sig in previous:
            signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore
