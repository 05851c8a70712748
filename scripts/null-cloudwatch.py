#!/usr/bin/env python3
"""A CloudWatch endpoint that accepts every request and stores nothing.

For measuring the agent's own memory and publish throughput at sizes LocalStack cannot take
(a period of 100k series is 100+ requests of 1,000 datums, which LocalStack answers too slowly
for the agent's attempt timeout). It is NOT a CloudWatch for tests: it checks nothing and
answers 200 with an empty body (PutMetricData has no output). Tests use LocalStack.

    scripts/null-cloudwatch.py 127.0.0.1:4599   # then: tally-agent run --sink cloudwatch \
        --set publish.endpoint_url=http://127.0.0.1:4599 --set publish.region=us-east-1
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests = 0
    body_bytes = 0

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        Handler.requests += 1
        Handler.body_bytes += n
        self.send_response(200)
        self.send_header("smithy-protocol", "rpc-v2-cbor")
        self.send_header("Content-Type", "application/cbor")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        body = f"requests {Handler.requests}\nbody_bytes {Handler.body_bytes}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4599").rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("null-cloudwatch: listen on loopback only (127.0.0.1:PORT)")
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
