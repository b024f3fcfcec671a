"""``python -m consumers.health``: exit 0 when the local worker is ready (docker-compose's healthcheck).

Asks the worker's own health endpoint (``METRICS_PORT``, default 9100) rather than Kafka: a worker is healthy when
its poll loop turns and its models are loaded, which only the worker knows.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    path = (argv or sys.argv[1:] or ["ready"])[0]
    port = int(os.environ.get("METRICS_PORT", "9100"))
    url = f"http://127.0.0.1:{port}/health/{'live' if path == 'live' else 'ready'}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(json.dumps({"status": exc.code, "body": exc.read().decode(errors="replace")}))
        return 1
    except OSError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
