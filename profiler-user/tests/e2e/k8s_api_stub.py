"""A stand-in for the Kubernetes API server, enough for hostprof's pod watch.

Serves, over HTTPS with the given certificate, GET /api/v1/pods: a PodList
of the pods in --pods (a JSON list of Pod objects) whose spec.nodeName
matches the request's fieldSelector, and with watch=true an open chunked
stream that sends no events and ends after a few seconds (the client then
watches again). Requests must carry "Authorization: Bearer <--token>".
Prints "PORT <port>" once listening; appends every request line to --log.
"""

import argparse
import json
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler(args, pods):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            with open(args.log, "a") as log:
                log.write(self.path + "\n")
            if self.headers.get("authorization") != f"Bearer {args.token}":
                self.reply(401, {"kind": "Status", "status": "Failure", "code": 401})
                return
            url = urllib.parse.urlparse(self.path)
            query = urllib.parse.parse_qs(url.query)
            if url.path != "/api/v1/pods":
                self.reply(404, {"kind": "Status", "status": "Failure", "code": 404})
                return
            selector = query.get("fieldSelector", [""])[0]
            node = selector.split("spec.nodeName=", 1)[1] if "spec.nodeName=" in selector else None
            items = [p for p in pods if node is None or p["spec"].get("nodeName") == node]
            if query.get("watch", ["false"])[0] in ("true", "1"):
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                time.sleep(3)
                self.wfile.write(b"0\r\n\r\n")
                return
            self.reply(200, {"kind": "PodList", "apiVersion": "v1",
                             "metadata": {"resourceVersion": "100"}, "items": items})

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    with open(args.pods) as f:
        pods = json.load(f)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(args, pods))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    time.sleep(args.seconds)


if __name__ == "__main__":
    sys.exit(main())
