#!/usr/bin/env python3
"""A small HTTP proxy for benchmarks: sits in front of moto_server (or any KMS endpoint),
adds a fixed latency to every request, and counts requests per KMS operation.

    kms-proxy.py --upstream http://127.0.0.1:5000 [--port 0] [--latency-ms 20] [--port-file F]

Every request except the control paths below is delayed by the latency, then forwarded to the
upstream over a keep-alive connection of the handling thread, and the reply relayed. Requests
are served concurrently (one thread per client connection), so N requests in flight wait N
latencies in parallel, as they would against a real KMS.

Control paths (answered at once, never forwarded):
    GET  /__proxy/stats          JSON: {"by_op": {...}, "total": N, "errors": N,
                                        "in_flight": N, "max_in_flight": N, "latency_ms": X}
    POST /__proxy/reset          zero the counters; max_in_flight restarts from in_flight
    POST /__proxy/latency?ms=X   change the latency

Nagle is off on both sides (TCP_NODELAY): a delayed ACK must not add 40 ms to a small request.
"""

import argparse
import http.client
import http.server
import json
import socket
import sys
import threading
import time
import urllib.parse

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade",
}


class Stats:
    def __init__(self, latency_ms):
        self.lock = threading.Lock()
        self.latency_ms = latency_ms
        self.reset()

    def reset(self):
        """Zero the counters; requests in flight stay counted (they will end later)."""
        with self.lock:
            self.by_op = {}
            self.total = 0
            self.errors = 0
            self.in_flight = getattr(self, "in_flight", 0)
            self.max_in_flight = self.in_flight

    def begin(self, op):
        with self.lock:
            self.by_op[op] = self.by_op.get(op, 0) + 1
            self.total += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end(self, failed):
        with self.lock:
            self.in_flight -= 1
            if failed:
                self.errors += 1

    def snapshot(self):
        with self.lock:
            return {
                "by_op": dict(self.by_op),
                "total": self.total,
                "errors": self.errors,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "latency_ms": self.latency_ms,
            }


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive to the client
    disable_nagle_algorithm = True  # TCP_NODELAY on the client side
    stats = None  # set in main
    upstream = None  # (host, port)

    def log_message(self, fmt, *args):  # quiet
        pass

    def _upstream_conn(self):
        conn = getattr(self, "_conn", None)
        if conn is None:
            host, port = self.upstream
            conn = http.client.HTTPConnection(host, port, timeout=120)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return conn

    def _drop_upstream(self):
        conn = getattr(self, "_conn", None)
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        self._conn = None

    def _reply(self, status, body, ctype="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _control(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/__proxy/stats":
            return self._reply(200, json.dumps(self.stats.snapshot()))
        if url.path == "/__proxy/reset":
            self.stats.reset()
            return self._reply(200, "{}")
        if url.path == "/__proxy/latency":
            q = urllib.parse.parse_qs(url.query)
            self.stats.latency_ms = float(q.get("ms", ["0"])[0])
            return self._reply(200, "{}")
        return self._reply(404, '{"error":"unknown control path"}')

    def _forward(self):
        if self.path.startswith("/__proxy/"):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            return self._control()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        target = self.headers.get("X-Amz-Target", "")
        op = target.rsplit(".", 1)[-1] if target else self.command
        self.stats.begin(op)
        failed = True
        try:
            delay = self.stats.latency_ms / 1000.0
            if delay > 0:
                time.sleep(delay)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            for attempt in (0, 1):  # one retry on a stale keep-alive connection
                try:
                    conn = self._upstream_conn()
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (OSError, http.client.HTTPException):
                    self._drop_upstream()
                    if attempt:
                        raise
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            failed = resp.status >= 400
        except (OSError, http.client.HTTPException) as e:
            try:
                self._reply(502, json.dumps({"__type": "ProxyError", "message": str(e)}))
            except OSError:
                pass
        finally:
            self.stats.end(failed)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    def finish(self):
        self._drop_upstream()
        super().finish()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:5000")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--port-file", help="write the bound port here once listening")
    args = ap.parse_args()
    up = urllib.parse.urlsplit(args.upstream)
    Handler.upstream = (up.hostname, up.port or 80)
    Handler.stats = Stats(args.latency_ms)
    srv = Server((args.host, args.port), Handler)
    port = srv.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        import os
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"kms-proxy: 127.0.0.1:{port} -> {args.upstream}, latency {args.latency_ms} ms",
          file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
