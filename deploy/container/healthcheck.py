"""Container health check: exit 0 when this process's /healthz answers 200 (port from CTNODE_METRICS__PORT)."""

import os
import sys
import urllib.request

port = os.environ.get("CTNODE_METRICS__PORT", "9110")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthz: {exc}", file=sys.stderr)
    sys.exit(1)
