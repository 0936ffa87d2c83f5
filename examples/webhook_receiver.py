"""A receiver for Mantle's webhooks that verifies every delivery.

Mantle POSTs a JSON body with the headers
    X-Mantle-Delivery:  the delivery id (the same on every retry of one delivery)
    X-Mantle-Event:     execution.finished
    X-Mantle-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">
signed with the `key` field of the tenant's `webhook_secret`.

Run it:  MANTLE_WEBHOOK_KEY=... python3 examples/webhook_receiver.py [PORT] [--host HOST]
It listens on 127.0.0.1:8000 by default, reachable from this machine only; pass
`--host 0.0.0.0` (every interface) when the daemon delivers from elsewhere, such as a
container or another host. It answers 2xx only for a delivery it accepts; Mantle retries
anything else for 24 hours.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

# Deliveries signed longer ago than this are refused: a captured request cannot be replayed
# later. (Mantle signs each attempt afresh, so retries are never too old.)
TOLERANCE_SECONDS = 300


class Rejected(Exception):
    """Why a delivery was refused."""


def verify(key: bytes, signature_header: str, body: bytes, now: float | None = None,
           seen: set[str] | None = None, delivery_id: str | None = None) -> dict:
    """Checks a delivery and returns its JSON body; raises Rejected otherwise.

    `seen` (optional) holds delivery ids already processed, to ignore exact replays within
    the tolerance window.
    """
    try:
        parts = dict(item.split("=", 1) for item in signature_header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        raise Rejected("malformed X-Mantle-Signature") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise Rejected("timestamp outside the tolerance: an old or replayed delivery")
    expected = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        raise Rejected("signature does not match")
    if seen is not None and delivery_id is not None:
        if delivery_id in seen:
            raise Rejected("delivery already processed")
        seen.add(delivery_id)
    return json.loads(body)


class Handler(BaseHTTPRequestHandler):
    key = os.environ.get("MANTLE_WEBHOOK_KEY", "").encode()
    seen: set[str] = set()

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            event = verify(self.key, self.headers.get("X-Mantle-Signature", ""), body,
                           seen=self.seen, delivery_id=self.headers.get("X-Mantle-Delivery"))
        except Rejected as e:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(str(e).encode())
            return
        print(f"execution {event['execution_id']} of {event['workflow']}: {event['status']}")
        self.send_response(204)
        self.end_headers()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Receives and verifies Mantle webhook deliveries.")
    parser.add_argument("port", nargs="?", type=int, default=8000,
                        help="TCP port to listen on (default: 8000; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; "
                             "0.0.0.0 for every interface, :: for every IPv6 one)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"port: must be 0-65535, got {args.port}")
    return args


class IPv6HTTPServer(HTTPServer):
    address_family = socket.AF_INET6


def make_server(args: argparse.Namespace) -> HTTPServer:
    """The server of `parse_args`' host and port (an IPv6 host such as ::1 works too)."""
    server_class = IPv6HTTPServer if ":" in args.host else HTTPServer
    return server_class((args.host, args.port), Handler)


if __name__ == "__main__":
    server = make_server(parse_args())
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", file=sys.stderr)
    server.serve_forever()
