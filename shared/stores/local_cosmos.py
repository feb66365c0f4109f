"""The local Cosmos-compatible server: npm `@vercel/cosmosdb-server` on a free loopback port,
for the store conformance suite, end-to-end tests and benchmarks.

    with running_cosmos_server() as server:
        store = CosmosStore(server.endpoint, key=server.key, verify_tls=False, create=True)
        env = server.environ(database="e2e")         # FLEET_STORE=cosmos, COSMOS_* for `fleet serve`

`account_from_env()` is the account `COSMOS_ENDPOINT` names (with `COSMOS_KEY`, or `az login`
credentials), for runs against a real account. `start_cosmos_server` raises `ServerUnavailable`
where the server cannot start (no node, no `npm install`); the test fixtures in
`tests/support/cosmos.py` turn that into a skip, or a failure under `CI=true`.

The server speaks HTTPS with a self-signed (and long expired) certificate, so clients run with
`verify_tls=False`. The server keeps everything in memory: data is gone when it stops. Its gaps
(see DESIGN.md): no transactional batch, no `OFFSET … LIMIT`, `GROUP BY` or `DISTINCT`; TTL not
enforced; request charge always 1. Unlike a real account it accepts a multi-key `ORDER BY` on a
container without composite indexes, and on one with composite indexes it only accepts an exact
match (a real account also takes the fully inverted one).
"""
from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "node_modules" / "@vercel" / "cosmosdb-server"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

#: The Cosmos DB emulator's published, well-known key. The local server accepts any key; using
#: this one keeps settings interchangeable with the official emulator.
EMULATOR_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="

# The CLI closes every connection after one response (a TLS handshake per SDK call); the
# library's `keepAlive` option keeps them open, several times faster. The server exits when its
# stdin closes, so a test run that dies never leaves one behind.
#
# The account document the server answers names its own address as the endpoint every later
# call goes to; with COSMOSDB_ADVERTISED_PORT it names that port on loopback instead (a proxy
# in front of it, so that the SDK's calls all pass the proxy).
#
# Two bugs of @vercel/cosmosdb-server 1.0.1 are patched before the routes load (they capture the
# handlers when required): a point read of a missing document that names its partition key (as
# every SDK read does) dereferences the missing document and answers 500; Cosmos answers 404.
# And a patch's `add` at `/field/-` (an append) to a field that holds no array sets a field
# named `-` on the document; Cosmos refuses the patch with 400 and writes nothing.
_SCRIPT = r"""
const lib = `${process.argv[1]}/lib`;
const readDocument = require(`${lib}/handler/read-document`);
const read = readDocument.default;
readDocument.default = (account, req, res, params) => {
  try {
    return read(account, req, res, params);
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
    res.statusCode = 404;
    return { code: "NotFound", message: "Entity with the specified id does not exist in the system." };
  }
};
const patchOps = require(`${lib}/handler/_patch-operations`);
const { parsePartitionKey } = require(`${lib}/utils/get-partition-from-header`);
const patchOperation = patchOps.patchOperation;
patchOps.patchOperation = (collection, input) => {
  const data = collection.document(input.id, parsePartitionKey(input.partitionKey, input.id)).read();
  if (data && !(input.ifMatch && input.ifMatch !== data._etag)) {
    const arrays = {};  // a top-level field's array-ness as the operations before leave it
    for (const [i, op] of (input.operations || []).entries()) {
      const path = typeof op.path === "string" ? op.path.split("/") : [];
      if (path.length !== 2 && !(path.length === 3 && path[2] === "-")) continue;
      const field = path[1];
      if (path.length === 3 && op.op === "add") {
        const array = field in arrays ? arrays[field] : Array.isArray(data[field]);
        if (!array) {
          return {
            statusCode: 400,
            body: {
              code: "BadRequest",
              message: `For Operation(${i}): Add Operation can only create a child object of an existing node ` +
                "(array or object) and can't create path recursively.",
            },
          };
        }
      } else if (path.length === 2) {
        arrays[field] = op.op === "remove" ? false : Array.isArray(op.value);
      }
    }
  }
  return patchOperation(collection, input);
};
const { createHttpsServer } = require(lib);
const server = createHttpsServer({ keepAlive: true });
server.keepAliveTimeout = 600000;
const address = server.address.bind(server);
const advertised = Number(process.env.COSMOSDB_ADVERTISED_PORT || 0);
if (advertised) {
  // The account document names this port as the endpoint for every later call.
  server.address = () => ({ ...address(), port: advertised });
}
server.listen(0, "127.0.0.1", () => {
  console.log(`cosmosdb-server listening on https://127.0.0.1:${address().port}/`);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
"""
_LISTENING = re.compile(r"listening on (https://127\.0\.0\.1:(\d+)/)")


class ServerUnavailable(RuntimeError):
    """The local Cosmos server cannot be started here."""


@dataclass(frozen=True)
class CosmosAccount:
    """Where a Cosmos store should connect."""

    endpoint: str
    #: None: `DefaultAzureCredential` (a real account with RBAC).
    key: str | None
    verify_tls: bool
    #: The in-memory local server: containers are created by the client, data vanishes with it.
    local: bool

    def environ(self, database: str = "fleet") -> dict[str, str]:
        """Settings for a `fleet serve`/`func start` process that should use this account."""
        env = {
            "FLEET_STORE": "cosmos",
            "COSMOS_ENDPOINT": self.endpoint,
            "COSMOS_DATABASE": database,
            "COSMOS_VERIFY_TLS": "true" if self.verify_tls else "false",
            "COSMOS_CREATE": "1" if self.local else "0",
        }
        if self.key:
            env["COSMOS_KEY"] = self.key
        return env


@dataclass(frozen=True)
class CosmosServer(CosmosAccount):
    """A running local server (a `CosmosAccount` with `local=True`)."""

    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    log_path: Path | None = None

    def log(self) -> str:
        """What the server printed (its stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


def start_cosmos_server(timeout: float = START_TIMEOUT, advertised_port: int | None = None) -> CosmosServer:
    """Start the local server on a free loopback port and wait until it answers.

    `advertised_port`: the port its account document names as the endpoint (a proxy's), so
    clients reach it through `https://127.0.0.1:{advertised_port}/` only. Raises
    `ServerUnavailable` (with the reason) when node or the npm module is missing or the server
    does not come up.
    """
    node = shutil.which("node")
    if node is None:
        raise ServerUnavailable("node is not installed (the local Cosmos server needs Node.js >= 20)")
    if not (MODULE_DIR / "package.json").exists():
        raise ServerUnavailable(f"{MODULE_DIR.relative_to(REPO_ROOT)} is missing: run `make install` (npm install)")
    log_path = Path(tempfile.mkdtemp(prefix="cosmosdb-server-")) / "server.log"
    with log_path.open("wb") as log:
        # Output goes to a file, never a pipe that could fill up and stall the server.
        proc = subprocess.Popen(
            [node, "-e", _SCRIPT, str(MODULE_DIR)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "COSMOSDB_ADVERTISED_PORT": str(advertised_port or 0)},
        )
    server = None
    deadline = time.monotonic() + timeout
    try:
        while server is None:
            match = _LISTENING.search(log_path.read_text(errors="replace"))
            if match:
                server = CosmosServer(match.group(1), EMULATOR_KEY, False, True, proc, log_path)
            elif proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ServerUnavailable(f"cosmosdb-server exited with {proc.returncode}: {tail}")
            elif time.monotonic() > deadline:
                raise ServerUnavailable(f"cosmosdb-server did not start in {timeout}s: {log_path.read_text()[-2000:]}")
            else:
                time.sleep(0.05)
        _wait_until_answering(int(match.group(2)), deadline)
    except BaseException:
        proc.kill()
        proc.wait(STOP_TIMEOUT)
        raise
    return server


@contextlib.contextmanager
def running_cosmos_server(timeout: float = START_TIMEOUT, advertised_port: int | None = None) -> Iterator[CosmosServer]:
    """`start_cosmos_server`, stopped when the block ends however it ends."""
    server = start_cosmos_server(timeout, advertised_port)
    try:
        yield server
    finally:
        server.stop()


def _wait_until_answering(port: int, deadline: float) -> None:
    # The account read (`GET /`) is what every SDK client does first. The certificate is
    # self-signed and expired: this is a liveness probe, not a trust decision.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    while True:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=context)
        try:
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"cosmosdb-server on port {port} does not answer")
        time.sleep(0.05)


def account_from_env() -> CosmosAccount | None:
    """The account `COSMOS_ENDPOINT` names (a real account or the official emulator), if set."""
    endpoint = os.environ.get("COSMOS_ENDPOINT")
    if not endpoint:
        return None
    verify = os.environ.get("COSMOS_VERIFY_TLS", "true").strip().lower() not in {"0", "false", "no"}
    return CosmosAccount(endpoint, os.environ.get("COSMOS_KEY") or None, verify, local=False)
