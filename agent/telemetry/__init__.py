"""What the node tells about itself: Prometheus metrics, the push-latency ring, logging
set-up, the progress hook of long transfers.

Imports only `protocol` and libraries; every other package may import it."""
