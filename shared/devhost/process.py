"""A real ``fleet serve`` in a subprocess, for end-to-end tests and benchmarks.

    with running_server(env={"FLEET_LEASE_SECONDS": "2"}) as server:
        requests.post(f"{server.url}/fleet/jobs", json=...)
        server.restart()            # same --db, same port: data must survive
        ...

The server runs as ``python -m shared.devhost.cli serve --host 127.0.0.1 --port 0 --db DB`` from the
repository root, with the calling process's environment plus ``env`` (a value of None removes a
variable). Its stdout and stderr go to files, never to pipes that could fill up and stall it;
``server.log()`` reads stderr (the request log, tracebacks). The server is always stopped
(SIGTERM, then SIGKILL) when the block ends, however it ends.

Timers run on their schedules (the sweep at second 0 of every minute); a caller that wants
to drive them alone passes ``args=("--no-timers",)`` and posts to ``/admin/functions/{name}``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_LISTENING = re.compile(rb"^Listening on (http://\S+:(\d+))\s*$", re.MULTILINE)


class ServerHandle:
    """A ``fleet serve`` subprocess. ``url``/``port`` are valid while it runs; ``restart``
    keeps the database and the port."""

    def __init__(self, db: str, env: Mapping[str, str | None] | None = None,
                 args: Sequence[str] = (), workdir: str | None = None) -> None:
        self.db = db
        self.env = dict(env or {})
        self.args = tuple(args)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self._workdir = workdir or tempfile.mkdtemp(prefix="fleet-serve-")
        self._starts = 0
        self._stdout = self._stderr = None

    def start(self, port: int = 0, timeout: float = START_TIMEOUT) -> ServerHandle:
        """Start the server and wait until it is listening; raise (with its stderr) if it
        does not get there within ``timeout`` seconds."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server is already running")
        self._starts += 1
        self._stdout = open(Path(self._workdir, f"stdout-{self._starts}.log"), "w+b")
        self._stderr = open(Path(self._workdir, f"stderr-{self._starts}.log"), "w+b")
        command = [sys.executable, "-m", "shared.devhost.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(port), "--db", self.db, *self.args]
        try:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=self._environment(),
                                            stdin=subprocess.DEVNULL, stdout=self._stdout,
                                            stderr=self._stderr)
            self.url, self.port = self._wait_until_listening(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, then SIGKILL. Returns the exit code (None if it never started).
        Safe to call twice."""
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for file in (self._stdout, self._stderr):
            if file is not None:
                file.close()
        return None if process is None else process.returncode

    def restart(self, timeout: float = START_TIMEOUT) -> ServerHandle:
        """Stop and start again on the same database and port."""
        port = self.port
        self.stop()
        return self.start(port=port, timeout=timeout)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log(self) -> str:
        """Everything the current (or last) server wrote to stderr."""
        return _read(Path(self._workdir, f"stderr-{self._starts}.log"))

    def output(self) -> str:
        """Everything the current (or last) server wrote to stdout."""
        return _read(Path(self._workdir, f"stdout-{self._starts}.log"))

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        environment["PYTHONUNBUFFERED"] = "1"
        for key, value in self.env.items():
            if value is None:
                environment.pop(key, None)
            else:
                environment[key] = value
        return environment

    def _wait_until_listening(self, timeout: float) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        path = Path(self._workdir, f"stdout-{self._starts}.log")
        while True:
            found = _LISTENING.search(path.read_bytes())
            if found:
                return found.group(1).decode(), int(found.group(2))
            exited = self.process.poll()
            if exited is not None or time.monotonic() > deadline:
                why = f"exited with {exited}" if exited is not None else \
                    f"was not listening after {timeout:g} s"
                time.sleep(0.05)  # let a dying process finish its traceback
                raise RuntimeError(f"fleet serve {why}\n--- stderr ---\n{self.log()}"
                                   f"--- stdout ---\n{self.output()}")
            time.sleep(0.02)


@contextlib.contextmanager
def running_server(env: Mapping[str, str | None] | None = None, db: str | None = None,
                   args: Sequence[str] = ()) -> Iterator[ServerHandle]:
    """A running ``fleet serve`` on a free port over ``db`` (default: a fresh file in a
    temporary directory removed afterwards). Stopped when the block ends."""
    with tempfile.TemporaryDirectory(prefix="fleet-e2e-") as workdir:
        handle = ServerHandle(db or str(Path(workdir, "fleet.db")), env, args, workdir)
        try:
            yield handle.start()
        finally:
            handle.stop()


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
