"""Soak: `fleet serve` under `ulimit -n 256` answers thousands of mixed requests correctly,
and holds no more open files or memory at the end than after a warm-up.

The dev host serves every connection on a new thread; a store that kept anything per thread
(the SQLite store once kept a connection, two file descriptors and ~0.5 MB) would run out of
descriptors within the first few hundred requests here. The figures each run sees are printed
(`pytest -s`) and recorded in bench/RESULTS.md.
"""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from tests.soak import workload
from shared.devhost.process import running_server

pytestmark = pytest.mark.e2e

#: The open-files limit the server runs under: far below what the old per-thread leak needed.
MAX_OPEN_FILES = 256
#: Factories at once: half keep their connection, half open one per request.
FACTORIES = 4
#: Descriptors the server may hold beyond its warmed-up count: the pool's connections not yet
#: opened by the warm-up (two each), and client sockets open at the moment of a sample.
FD_SLACK = 16
#: Resident memory the server may gain over the load (allocator and page-cache settling).
RSS_SLACK = 24 * 1024 * 1024

#: store → (warm-up cycles, measured cycles) per factory (about eleven requests a cycle).
CYCLES = {"sqlite": (10, 80), "cosmos": (5, 50)}


@pytest.fixture(params=["sqlite", "cosmos"])
def store_env(request) -> tuple[str, dict[str, str]]:
    if request.param == "sqlite":
        return "sqlite", {"FLEET_STORE": "sqlite"}
    account = request.getfixturevalue("cosmos_account")
    return "cosmos", account.environ(database=f"soak-{uuid.uuid4().hex[:12]}")


class Sampler:
    """Reads the server's open files and resident memory every `every` seconds, keeping the
    highest of each."""

    def __init__(self, server, every: float = 0.2) -> None:
        self.server = server
        self.every = every
        self.peak_files = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_files = max(self.peak_files, self.server.open_files())
            self.peak_rss = max(self.peak_rss, self.server.resident_bytes())
            self._stop.wait(self.every)


def test_open_files_and_memory_stay_flat_under_thousands_of_requests(store_env, tmp_path):
    kind, env = store_env
    warm_cycles, cycles = CYCLES[kind]
    # auth on, as deployed: every request's token is checked against the store
    with running_server(env={**env, "FLEET_LEASE_SECONDS": "300", "FLEET_AUTH": None, **workload.SERVER_ENV}, db=str(tmp_path / "soak.db"),
                        args=("--no-timers",), max_open_files=MAX_OPEN_FILES) as server:
        token = (tmp_path / "admin-token").read_text().strip()
        factories = [workload.Factory(server.url, i, keep_alive=i % 2 == 0, token=token) for i in range(FACTORIES)]
        try:
            # Given a server warmed up by the same load
            workload.run(factories, cycles=warm_cycles)
            files, rss = server.open_files(), server.resident_bytes()
            warm_requests = sum(f.requests for f in factories)

            # When the factories send thousands more requests
            started = time.monotonic()
            with Sampler(server) as sampler:
                workload.run(factories, cycles=cycles, first_cycle=warm_cycles)
            seconds = time.monotonic() - started
            end_files, end_rss = server.open_files(), server.resident_bytes()
            jobs = workload.check_documents(server.url, factories, token)
        finally:
            for factory in factories:
                factory.close()

        measured = sum(f.requests for f in factories) - warm_requests
        print(
            f"\nsoak[{kind}]: {measured} requests in {seconds:.1f} s ({measured / seconds:.0f}/s) after "
            f"{warm_requests} warm-up; open files {files} -> peak {sampler.peak_files}, end {end_files} "
            f"(limit {MAX_OPEN_FILES}); RSS {rss / 2**20:.1f} MiB -> peak {sampler.peak_rss / 2**20:.1f}, "
            f"end {end_rss / 2**20:.1f} MiB"
        )
        # Then every answer was right (checked as it came), and nothing grew with the requests
        assert measured >= 2000
        assert sum(f.cycles_done for f in factories) == FACTORIES * (warm_cycles + cycles)
        assert sampler.peak_files <= files + FD_SLACK and end_files <= files + FD_SLACK
        assert end_rss <= rss + RSS_SLACK
        assert jobs == FACTORIES * (warm_cycles + cycles)
        assert server.returncode is None
