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

Limits, as an operator's service manager would set them: ``max_open_files=256`` starts the
server under ``ulimit -n 256``; ``drop_file_override=True`` makes a server started by root obey
file modes like any service account (it loses ``CAP_DAC_OVERRIDE``), so a read-only database
file is read-only to it. ``server.open_files()`` and ``server.resident_bytes()`` read what the
running server holds from ``/proc`` (Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import resource
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
# prctl(2): drop a capability from the bounding set, so the exec'd server never holds it.
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


class ServerHandle:
    """A ``fleet serve`` subprocess. ``url``/``port`` are valid while it runs; ``restart``
    keeps the database and the port."""

    def __init__(self, db: str, env: Mapping[str, str | None] | None = None,
                 args: Sequence[str] = (), workdir: str | None = None, *,
                 max_open_files: int | None = None, drop_file_override: bool = False) -> None:
        self.db = db
        self.env = dict(env or {})
        self.args = tuple(args)
        self.max_open_files = max_open_files
        self.drop_file_override = drop_file_override
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self._workdir = workdir or tempfile.mkdtemp(prefix="fleet-serve-")
        self._starts = 0
        self._stdout = self._stderr = None

    @property
    def admin_token(self) -> str | None:
        """The admin token the server minted for its fresh store (auth on: `admin-token`
        beside the database), if it did."""
        try:
            return Path(self.db).parent.joinpath("admin-token").read_text().strip() or None
        except FileNotFoundError:
            return None

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
                                            stderr=self._stderr, preexec_fn=self._limits())
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

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server is not running")
        return self.process.pid

    def open_files(self) -> int:
        """File descriptors the server holds now (sockets, the database and its -wal, ...)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def resident_bytes(self) -> int:
        """The server's resident memory now (``VmRSS``)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        kib = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
        return int(kib.group(1)) * 1024

    def _limits(self):
        """The ``preexec_fn`` applying this server's limits in the child, or None."""
        max_open_files, drop = self.max_open_files, self.drop_file_override and os.geteuid() == 0
        if max_open_files is None and not drop:
            return None
        libc = ctypes.CDLL(None, use_errno=True) if drop else None

        def apply() -> None:  # runs in the child between fork and exec: no locks, no imports
            if max_open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))
            if libc is not None:
                for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
                    if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

        return apply

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
                   args: Sequence[str] = (), *, max_open_files: int | None = None,
                   drop_file_override: bool = False) -> Iterator[ServerHandle]:
    """A running ``fleet serve`` on a free port over ``db`` (default: a fresh file in a
    temporary directory removed afterwards), under the limits given (see the module
    docstring). Stopped when the block ends."""
    with tempfile.TemporaryDirectory(prefix="fleet-e2e-") as workdir:
        handle = ServerHandle(db or str(Path(workdir, "fleet.db")), env, args, workdir,
                              max_open_files=max_open_files, drop_file_override=drop_file_override)
        try:
            yield handle.start()
        finally:
            handle.stop()


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
