"""A factory command running for one job: its own process group, so stopping it stops
everything it started; its stdout echoed line by line (prefixed with the job id) and its last
non-empty line kept for the report."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

#: How long to wait for the output of an exited command to drain before giving up on it.
DRAIN_SECONDS = 2.0

_echo_lock = threading.Lock()


class JobProcess:
    def __init__(
        self, argv: Sequence[str], cwd: Path, env: Mapping[str, str], prefix: str, out: TextIO | None = None
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.prefix = prefix
        self.out = out
        self.last_line: str | None = None
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the command (raises `OSError` if it cannot be started, e.g. not found)."""
        self._process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,  # straight through to the runner's stderr
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,  # its own process group: killpg reaches its children too
        )
        self._reader = threading.Thread(target=self._echo, name=f"stdout {self.prefix}", daemon=True)
        self._reader.start()

    def wait(self, stop: threading.Event, tick: float = 0.1) -> int | None:
        """Wait until the command exits (its exit code) or `stop` is set (None; still running)."""
        assert self._process is not None
        while True:
            try:
                code = self._process.wait(timeout=tick)
            except subprocess.TimeoutExpired:
                if stop.is_set():
                    return None
                continue
            self._finish()
            return code

    def terminate(self, grace_seconds: float) -> int:
        """SIGTERM to the process group; SIGKILL if it has not exited after `grace_seconds`."""
        assert self._process is not None
        self._signal(signal.SIGTERM)
        try:
            code = self._process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            code = self._process.wait()
        self._signal(signal.SIGKILL)  # whatever of the group outlived its leader
        self._finish()
        return code

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)

    def _finish(self) -> None:
        """Collect the rest of the output. A process of the group still holding stdout after the
        command exited is a leftover of a finished job: it is killed."""
        if self._reader is not None:
            self._reader.join(DRAIN_SECONDS)
            if self._reader.is_alive():
                self._signal(signal.SIGKILL)
                self._reader.join(DRAIN_SECONDS)
        if self._process.stdout is not None and (self._reader is None or not self._reader.is_alive()):
            self._process.stdout.close()

    def _echo(self) -> None:
        stream = self._process.stdout
        out = self.out or sys.stdout
        try:
            for line in stream:
                text = line.rstrip("\n")
                if text.strip():
                    self.last_line = text
                with _echo_lock:
                    out.write(f"[{self.prefix}] {text}\n")
                    out.flush()
        except (OSError, ValueError):  # stream closed under us while stopping
            pass
