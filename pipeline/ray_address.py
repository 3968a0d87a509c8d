"""Whether a Ray cluster answers at an `--address` before `ray.init` joins it: `ray.init` retries a dead GCS
address for about ten minutes, and a dead Ray Client (`ray://`) address for ~30 s, then raises with a traceback."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 5.0


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `HOST:PORT` or `ray://HOST:PORT`; None for `auto`/`local` (Ray finds those itself) or an
    address without a port."""
    address = address.strip()
    if address in ("", "auto", "local"):
        return None
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        raise ConnectionError(f"{address!r} is not HOST:PORT, ray://HOST:PORT or auto") from None
    if parts.hostname is None or port is None:
        return None
    return parts.hostname, port


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ConnectionError (its message says what to check) unless something accepts a TCP connection at the
    address's host and port."""
    hp = host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        reason = "no answer within {:g} s".format(timeout_s) if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConnectionError(f"no Ray cluster answers there ({reason}): is the head node up "
                              f"(`ray start --head`), and is this its address and port?") from None
