#!/usr/bin/env python3
"""Fail fast, with the command that fixes it, when a service the tests need is down."""

from __future__ import annotations

import socket
import sys
from typing import NamedTuple


class Service(NamedTuple):
    name: str
    host: str
    port: int
    start_command: str


SERVICES = (
    Service(
        "PostgreSQL",
        "127.0.0.1",
        5432,
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ),
    Service(
        "Redis",
        "127.0.0.1",
        6379,
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
        "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    ),
    Service("RabbitMQ", "127.0.0.1", 5672, "rabbitmq-server -detached"),
)


def is_reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """Return True when a TCP connection to host:port succeeds within timeout seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def main() -> int:
    down = [s for s in SERVICES if not is_reachable(s.host, s.port)]
    for service in SERVICES:
        state = "DOWN" if service in down else "ok"
        print(f"  {service.name:<10} {service.host}:{service.port}  {state}")
    for service in down:
        print(
            f"error: {service.name} is not reachable at {service.host}:{service.port}.\n"
            f"  Start it with: {service.start_command}",
            file=sys.stderr,
        )
    return 1 if down else 0


if __name__ == "__main__":
    sys.exit(main())
