"""Docker HEALTHCHECK of a worker: GET /healthz on the metrics port (stdlib only).

/healthz needs no login; the port speaks HTTPS when the worker's web config has a
tls_server_config, so HTTPS is tried when plain HTTP is refused. The check stays on this
container's loopback, so the certificate is not verified (its name is not 127.0.0.1)."""

import os
import ssl
import sys
import urllib.request

port = os.environ.get("ES_METRICS_PORT", "9100")
insecure = ssl.create_default_context()
insecure.check_hostname = False
insecure.verify_mode = ssl.CERT_NONE  # loopback to itself; /healthz carries nothing secret


def alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3, context=insecure) as r:  # nosec B310
            return r.status == 200
    except OSError:
        return False


sys.exit(
    0
    if alive(f"http://127.0.0.1:{port}/healthz") or alive(f"https://127.0.0.1:{port}/healthz")
    else 1
)
