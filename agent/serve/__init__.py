"""The node's HTTP face: the ASGI app (`/v1`, wubloader's `/files` and `/segments`,
`/healthz`, `/metrics`), hypercorn, the status report, the dashboard and its coverage
maps (static files in `static/`).

Imports `push`, `pull`, `peers`, `archive`, `telemetry`, `protocol`."""
