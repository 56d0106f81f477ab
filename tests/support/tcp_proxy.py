"""A TCP proxy on 127.0.0.1 that a test can cut, as a database restart cuts its clients, or freeze."""
from __future__ import annotations

import contextlib
import socket
import struct
import threading

# SO_LINGER on, zero seconds: close() resets the connection instead of a graceful FIN.
RESET_ON_CLOSE = struct.pack("ii", 1, 0)
CHUNK = 65536


class TcpProxy:
    """Forwards each connection made to ``port`` to ``target``, until told otherwise.

    ``cut()`` drops every connection open through it and refuses new ones (each is reset
    as soon as it is accepted), the way clients see a PostgreSQL restart; ``freeze()``
    holds every byte instead, connections open and nothing answered, the way they see a
    network that lost its route; ``restore()`` forwards again. Only threads and blocking
    sockets: one thread accepts, two per connection copy bytes each way.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._refusing = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self.accepted = 0
        self.refused = 0
        self._acceptor = threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True)
        self._acceptor.start()

    def cut(self) -> int:
        """Drop every open connection and refuse new ones; return how many were dropped."""
        with self._lock:
            self._refusing = True
            dropped, self._open = self._open, set()
        for sock in dropped:
            _reset(sock)
        return len(dropped) // 2

    def freeze(self) -> None:
        """Forward nothing more, in either direction, on old or new connections."""
        self._flowing.clear()

    def restore(self) -> None:
        with self._lock:
            self._refusing = False
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._flowing.set()  # after the cut: what a frozen pump held goes nowhere
        # Unblocks accept(); the acceptor then closes the listening socket itself.
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        with self._listener:
            while True:
                client, _ = self._listener.accept()
                if self._closed:
                    client.close()
                    return
                with self._lock:
                    refusing = self._refusing
                if refusing:
                    self.refused += 1
                    _reset(client)
                    continue
                try:
                    server = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _reset(client)
                    continue
                server.settimeout(None)
                with self._lock:
                    if self._refusing:  # cut while connecting
                        _reset(client)
                        _reset(server)
                        continue
                    self._open |= {client, server}
                    self.accepted += 1
                for source, sink in ((client, server), (server, client)):
                    thread = threading.Thread(target=self._pump, args=(source, sink),
                                              name="tcp-proxy-pump", daemon=True)
                    self._threads.append(thread)
                    thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass  # cut, or the other side went away
        # Either side ending ends the pair, as a server ending a session would.
        with self._lock:
            ours = source in self._open or sink in self._open
            self._open -= {source, sink}
        if ours:
            _reset(source)
            _reset(sink)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
