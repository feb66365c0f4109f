"""A TCP proxy on loopback that can stall: the network path to a store, for fault injection.

    with TcpProxy() as proxy:                  # listening on 127.0.0.1:proxy.port
        proxy.forward_to(server_port)          # upstream 127.0.0.1:server_port
        ...                                    # traffic flows
        proxy.pause()                          # bytes stop moving, both ways; connections stay open
        ...                                    # clients see a stalled endpoint (reads time out)
        proxy.resume()                         # held bytes are delivered, traffic flows again

It forwards bytes and knows nothing of what they are (TLS passes through untouched). A
paused proxy still accepts connections (the kernel would anyway) but moves nothing, exactly as
a hung peer looks to a client. Each connection costs two threads, which end when either side
closes; `close()` ends them all. It listens on 127.0.0.1 only.
"""
from __future__ import annotations

import contextlib
import socket
import threading

#: Bytes moved per read.
CHUNK = 64 * 1024


class TcpProxy:
    """Forwards every connection to 127.0.0.1:`upstream_port` while not paused."""

    def __init__(self, upstream_port: int | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.upstream_port = upstream_port
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="proxy accept", daemon=True)
        self._acceptor.start()

    def forward_to(self, upstream_port: int) -> None:
        """Where new connections go (the port may be learned after the proxy's is needed)."""
        self.upstream_port = upstream_port

    def pause(self) -> None:
        """Stop moving bytes, in both directions, on every connection."""
        self._flowing.clear()

    def resume(self) -> None:
        """Move bytes again, those held while paused first."""
        self._flowing.set()

    @property
    def connections(self) -> int:
        """Client connections open now."""
        with self._lock:
            return len(self._sockets) // 2

    def close(self) -> None:
        """Stop listening and drop every connection; returns once every thread has ended."""
        self._closed = True
        self._flowing.set()  # release pumps waiting to forward, so they see the closed sockets
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)
        self._acceptor.join(5)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except (OSError, TypeError):
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
                self._threads = [t for t in self._threads if t.is_alive()]
                pumps = [
                    threading.Thread(target=self._pump, args=(client, upstream), name="proxy up", daemon=True),
                    threading.Thread(target=self._pump, args=(upstream, client), name="proxy down", daemon=True),
                ]
                self._threads.extend(pumps)
            for pump in pumps:
                pump.start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                self._flowing.wait()
                if self._closed:
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            # Either side gone: end the pair, so the other pump ends too.
            for sock in (source, target):
                _shut(sock)
            with self._lock:
                self._sockets.difference_update((source, target))
            for sock in (source, target):
                sock.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
