"""A real HTTP receiver for the webhook tests, recording every request it gets.

Each request is appended to LOG as one JSON line: time, method, path, headers (lower-case
names), body, the status answered, and whether the reference Standard Webhooks library
(`standardwebhooks`, PyPI) verified its signature with SECRET.

The path chooses the answer, so one receiver covers every case:
  /flaky*  500 to the first two requests with a given webhook-id, then 200
  /busy*   429 with `Retry-After: 2` to the first request with a given webhook-id, then 200
  /bad*    400 with the body `unknown recipient`, always
  /slow*   200 after 50 ms
Each record also says how many requests were being handled when it arrived (`concurrent`).
  anything else: 200
Usage: python3 webhook_receiver.py PORT LOG SECRET [CERT KEY]
  CERT KEY: serve HTTPS with this certificate.
"""
import json
import ssl
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PORT, LOG, SECRET = int(sys.argv[1]), sys.argv[2], sys.argv[3]
verifier = Webhook(SECRET)
tries = Counter()
lock = threading.Lock()
in_flight = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            verifier.verify(body, headers, json_parse=False)
            verified = True
        except WebhookVerificationError:
            verified = False
        global in_flight
        key = (self.path, headers.get("webhook-id"))
        with lock:
            tries[key] += 1
            n = tries[key]
            in_flight += 1
            concurrent = in_flight
        status, extra, answer = 200, {}, b"ok"
        if self.path.startswith("/flaky") and n <= 2:
            status, answer = 500, b"try later"
        elif self.path.startswith("/busy") and n == 1:
            status, extra, answer = 429, {"Retry-After": "2"}, b"slow down"
        elif self.path.startswith("/bad"):
            status, answer = 400, b"unknown recipient"
        elif self.path.startswith("/slow"):
            time.sleep(0.05)
        with lock:
            in_flight -= 1
        record = {
            "at": time.time(),
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body": body.decode("utf-8", "replace"),
            "verified": verified,
            "status": status,
            # Requests being handled when this one arrived, itself included.
            "concurrent": concurrent,
        }
        # Recorded before the answer leaves: a request the sender may count as delivered is
        # always in the log.
        with lock, open(LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = handle_any


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
if len(sys.argv) > 5:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[4], sys.argv[5])
    server.socket = tls.wrap_socket(server.socket, server_side=True)
server.serve_forever()
