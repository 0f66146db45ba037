"""Docker HEALTHCHECK of a worker: GET /healthz on the metrics port (stdlib only)."""

import os
import sys
import urllib.request

port = os.environ.get("ES_METRICS_PORT", "9100")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError:
    sys.exit(1)
