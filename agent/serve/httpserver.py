"""hypercorn's trio server, with every connection's failure kept to that connection.

hypercorn runs each connection as a task of its server nursery and lets any
exception other than OSError out of it, which ends the whole server and so the
agent. One such path is reachable by any client: a request carrying
`connection: close` followed by more bytes makes hypercorn answer the extra bytes
with a 400 while it is shutting the socket, and trio refuses the concurrent send
with `BusyResourceError`. A remote peer must never be able to stop the agent, so
each connection runs behind a guard that logs the failure and drops only it.
"""

from __future__ import annotations

import logging

import trio
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)


class GuardedTCPServer(TCPServer):
    """One connection; an exception ends the connection, never the server."""

    async def run(self) -> None:
        try:
            await super().run()
        except Exception as e:  # Cancelled is a BaseException and still propagates
            log.warning("dropped a connection after an HTTP server error: %r", e)


def install() -> None:
    """Make hypercorn's trio worker use the guarded connection class."""
    hypercorn_run.TCPServer = GuardedTCPServer  # type: ignore[misc]


async def serve(app, config, task_status=trio.TASK_STATUS_IGNORED) -> None:
    install()
    await hypercorn_serve(app, config, task_status=task_status)
