"""Free TCP ports for the servers tests start (one helper, so every server picks ports the same way).

A port is free when the kernel hands it out for a bind to port 0. Asking once per port can return one port twice
(the first socket is closed before the second bind), so servers that need several ports take them from
`free_ports`, which holds every socket open until all are picked.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]
