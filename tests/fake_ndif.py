"""A stand-in NDIF API on loopback, for the client's failure modes (no real stack needed).

It speaks just enough of NDIF's wire: GET /subscribe upgrades to a websocket and sends the
session id; POST /request answers RECEIVED. What follows on the socket is the scenario:
"error" sends an ERROR status whose description is a traceback, "other-model" does the same and
lists another model in /status, "sandbox" answers what NDIF's sandbox does when a trace
reads a weight, "close" drops the socket, "silent" says nothing more. Anything else is a 404, like a web server that is not NDIF.
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TRACEBACK = ("Traceback (most recent call last):\n  File \"<nnsight>\", line 3, in <block>\n"
             "RuntimeError: the model ran out of memory")
# What NDIF 0.1.2's sandbox answered when the trace read a weight (make ndif-check, NDIF_CHECK_SANDBOX=1).
SANDBOX = "AttributeError: 'Envoy' object (nor its module) has attribute 'weight'"


def _frame(text: str) -> bytes:
    """One unmasked server->client text frame."""
    data = text.encode()
    n = len(data)
    head = bytes([0x81]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n))
    return head + data


class FakeNDIF:
    def __init__(self, scenario: str):
        self.scenario = scenario
        self.posted = threading.Event()
        self.sockets: list[socket.socket] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/status" and server.scenario == "other-model":
                    # NDIF 0.1.2's shape: "<replica>:<actor>:<model key>" -> state, no repo id
                    body = json.dumps({"deployments": {
                        'ab12c:ModelActor:m.Model:{"repo_id": "org/other", "revision": null}': {
                            "deployment_level": "HOT"}}}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path != "/subscribe" or server.scenario == "not-ndif":
                    self.send_error(404)
                    return
                accept = base64.b64encode(hashlib.sha1(
                    (self.headers["Sec-WebSocket-Key"] + GUID).encode()).digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.wfile.write(_frame(json.dumps({"session_id": "s1"})))
                self.wfile.flush()
                server.posted.wait(10)
                if server.scenario in ("error", "other-model", "sandbox"):
                    text = SANDBOX if server.scenario == "sandbox" else TRACEBACK
                    self.wfile.write(_frame(json.dumps({"id": "r1", "status": "ERROR",
                                                        "description": text})))
                    self.wfile.flush()
                elif server.scenario == "silent":
                    server.sockets.append(self.connection)
                    threading.Event().wait(5)   # hold the socket open, say nothing
                self.close_connection = True

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.dumps({"id": "r1", "status": "RECEIVED", "description": "received"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                server.posted.set()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
