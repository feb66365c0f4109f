"""Fixtures for the factory side: coordinators to talk to, a client, the CLI in-process, a stub
HTTP server that answers what a test scripts, and runner processes.

Every wait is bounded; every server, process, socket and response is closed.
"""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet import tokens
from fleet.clock import SystemClock
from fleet.context import Context
from fleet.principals import Role
from fleetclient import FleetClient
from fleetclient.retry import Backoff
from shared.devhost import cli
from shared.devhost.process import REPO_ROOT, running_server
from shared.stores.sqlite_store import SqliteStore

#: A quick backoff, so tests of retries do not sleep for long.
FAST = Backoff(attempts=4, base_seconds=0.01, cap_seconds=0.05, max_retry_after=2.0)


@pytest.fixture(scope="session", autouse=True)
def suite_token(tmp_path_factory) -> Iterator[str]:
    """The suite's one admin token, in `FLEET_TOKEN` for the client, the CLI and the runners
    (the way an operator runs them). `known_to(db)` puts it into a store before its `fleet
    serve` starts, so each of the suite's servers, with auth on, accepts it."""
    db = tmp_path_factory.mktemp("token") / "mint.db"
    minting = SqliteStore(str(db))
    try:
        created = tokens.create(Context(minting, SystemClock()), Role.ADMIN, name="ops")
        _TOKEN_DOCS.append(minting.read("tokens", created.id, created.id))
    finally:
        minting.close()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEET_TOKEN", created.token)
        yield created.token


_TOKEN_DOCS: list[dict] = []


def known_to(db: Path) -> str:
    """`db`, a fresh SQLite store that knows the suite's token."""
    store = SqliteStore(str(db))
    try:
        for doc in _TOKEN_DOCS:
            store.create("tokens", doc)
    finally:
        store.close()
    return str(db)


@pytest.fixture(scope="session")
def server(suite_token, tmp_path_factory):
    """A `fleet serve` with default settings, shared by the suite (tests use their own product)."""
    db = known_to(tmp_path_factory.mktemp("server") / "fleet.db")
    with running_server(env={"FLEET_BUDGETS": None, "FLEET_PREEMPTION": None, "FLEET_LEASE_SECONDS": None}, db=db) as handle:
        yield handle


@pytest.fixture(scope="session")
def fast_server(suite_token, tmp_path_factory):
    """A `fleet serve` with 2-second leases, preemption and budgets on, timers off (tests run the
    sweep through the admin endpoint when they mean to)."""
    env = {"FLEET_LEASE_SECONDS": "2", "FLEET_PREEMPTION": "1", "FLEET_BUDGETS": "1"}
    with running_server(env=env, args=["--no-timers"], db=known_to(tmp_path_factory.mktemp("fast") / "fleet.db")) as handle:
        yield handle


@pytest.fixture
def product() -> str:
    """A product id of this test's own."""
    return f"p{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(server) -> Iterator[FleetClient]:
    with FleetClient(server.url, backoff=FAST) as fleet:
        yield fleet


@pytest.fixture
def fast_client(fast_server) -> Iterator[FleetClient]:
    with FleetClient(fast_server.url, backoff=FAST) as fleet:
        yield fleet


class Cli:
    """`fleet ...` run in-process against one coordinator: `(exit code, stdout, stderr)`."""

    def __init__(self, url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.url = url
        self._capsys = capsys
        monkeypatch.setenv("FLEET_URL", url)
        monkeypatch.delenv("FLEET_KEY", raising=False)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self._capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = self._capsys.readouterr()
        return code, out, err

    def json(self, *argv: str):
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def fleet_cli(server, capsys, monkeypatch) -> Cli:
    return Cli(server.url, capsys, monkeypatch)


@pytest.fixture
def fast_cli(fast_server, capsys, monkeypatch) -> Cli:
    return Cli(fast_server.url, capsys, monkeypatch)


# A scripted HTTP server


class Stub:
    """An HTTP server on 127.0.0.1 answering from a script: each request takes the next
    `(status, headers, body)` (the last one repeats); `requests` records `(method, path, body)`."""

    def __init__(self, answers: list[tuple[int, dict[str, str], object]], delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.delay = delay
        self.requests: list[tuple[str, str, object]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with stub._lock:
                    stub.requests.append((self.command, self.path, json.loads(raw) if raw else None))
                    status, headers, body = stub.answers[0] if len(stub.answers) == 1 else stub.answers.pop(0)
                if stub.delay:
                    time.sleep(stub.delay)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = _answer

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "Stub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def stub() -> Callable[..., Stub]:
    """`stub(answers, delay=0)`: a started `Stub`, stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda answers, delay=0.0: stack.enter_context(Stub(answers, delay))


def problem(status: int, code: str, detail: str = "scripted", **extra) -> dict:
    return {"type": "about:blank", "title": "Error", "status": status, "code": code, "detail": detail, **extra}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Runner processes


class RunnerProcess:
    """`fleet factory run ...` as a subprocess; output to files (never a pipe that can fill)."""

    def __init__(self, url: str, args: list[str], env: dict[str, str], workdir: Path, name: str) -> None:
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        scratch = workdir / f"{name}.tmp"  # job directories: a killed runner cannot remove its own
        scratch.mkdir(exist_ok=True)
        environment = {**os.environ, "FLEET_URL": url, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch), **env}
        environment.pop("FLEET_KEY", None)
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shared.devhost.cli", "factory", "run", *args],
                cwd=REPO_ROOT, env=environment, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"the runner did not exit within {timeout}s\n{self.log()}")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return (f"--- stderr ---\n{self.err_path.read_text(errors='replace')}"
                f"--- stdout ---\n{self.out_path.read_text(errors='replace')}")


@pytest.fixture
def start_runner(tmp_path) -> Iterator[Callable[..., RunnerProcess]]:
    """`start_runner(url, args, env={}, name="runner")`; every runner is stopped after the test."""
    started: list[RunnerProcess] = []

    def start(url: str, args: list[str], env: dict[str, str] | None = None, name: str = "runner") -> RunnerProcess:
        runner = RunnerProcess(url, args, env or {}, tmp_path, name)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def process_gone(pid: int) -> bool:
    """Whether no process `pid` is running (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def kill_group(pid: int) -> None:
    """Clean up a process group a test left behind (e.g. a killed runner's orphaned command)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# PR mode: a local directory of bare repositories and a `gh` stand-in


GIT_IDENTITY = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture
def git_base(tmp_path) -> Path:
    """A directory of bare repositories standing in for https://github.com/: `acme/widgets`
    exists, with a `main` branch holding a README, and a `develop` branch."""
    seed = tmp_path / "seed"
    seed.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=seed)
    (seed / "README.md").write_text("# widgets\n")
    git("add", "README.md", cwd=seed)
    git("commit", "--quiet", "-m", "first", cwd=seed)
    git("branch", "develop", cwd=seed)
    base = tmp_path / "github"
    (base / "acme").mkdir(parents=True)
    git("clone", "--quiet", "--bare", str(seed), str(base / "acme" / "widgets.git"), cwd=tmp_path)
    return base


class GhStandIn:
    """A `gh` on PATH that records its arguments (one JSON list per call) and prints a PR URL,
    or fails with a scripted message."""

    def __init__(self, bin_dir: Path) -> None:
        self.log = bin_dir / "gh.calls"
        self.script = bin_dir / "gh"
        self.answer("https://github.com/acme/widgets/pull/7")

    def answer(self, stdout: str, stderr: str = "", code: int = 0) -> None:
        self.script.write_text(
            f"#!{sys.executable}\n"
            "import json, sys\n"
            f"with open({str(self.log)!r}, 'a') as log: log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
            f"sys.stdout.write({stdout!r} + '\\n')\n"
            f"sys.stderr.write({stderr!r})\n"
            f"sys.exit({code})\n"
        )
        self.script.chmod(0o755)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def gh(tmp_path, monkeypatch) -> GhStandIn:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return GhStandIn(bin_dir)
