"""``python -m gateway``: serve the HTTP gateway (see :mod:`gateway.app`)."""

from gateway.app import main

if __name__ == "__main__":
    raise SystemExit(main())
