"""An OTLP profiles receiver built only on the official OpenTelemetry Python
types (PyPI opentelemetry-proto, proto v1.10) and grpcio, so hostprof's
exports are checked by a decoder that is not ours.

It serves ProfilesService/Export over gRPC and POST /v1development/profiles
over HTTP (gzip or plain), validates every request against the proto's
dictionary rules, and appends one JSON line per request to --out: the
transport, any rule violations, and per resource its attributes and its
samples as leaf-first function-name stacks. It prints "PORTS <grpc> <http>"
on stdout once listening, and exits after --seconds.

Fault and feature knobs: --fail-first N answers the first N requests (over
HTTP and gRPC together) as --fail-as says, without recording them:
  503 (default)  HTTP 503 with Retry-After: 1; gRPC UNAVAILABLE
  400, 500       that HTTP status; gRPC INVALID_ARGUMENT, INTERNAL
  garbage        HTTP 200 whose body is not an export response (gRPC: 500's)
  huge           HTTP 200 with a 512 MiB body; gRPC an export response whose
                 partial_success message is 64 MiB
  endless        HTTP 200 with a chunked body that never ends (gRPC: huge's)
--delay S waits S seconds before answering each request (a slow collector);
--reject N answers with a partial_success that rejects N profiles;
--tls-cert/--tls-key serve both ports over TLS. Each request answered
with a failure appends a line to <--out>.failed.
"""

import argparse
import gzip
import json
import os
import ssl
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2 as service_pb2,
    profiles_service_pb2_grpc as service_grpc,
)

LOCK = threading.Lock()
FAILURES = {"left": 0, "log": None}

# Each kind's sample types, as Go's profiles name them: (count, weight,
# period type). The period type tells kinds with the same count apart
# (samples: CPU and page faults).
KINDS = [
    (("samples", "count"), ("cpu", "nanoseconds"), "cpu"),
    (("events", "count"), ("off_cpu", "nanoseconds"), "events"),
    (("contentions", "count"), ("delay", "nanoseconds"), "contentions"),
    (("samples", "count"), ("page_faults", "count"), "page_faults"),
    (("alloc_objects", "count"), ("alloc_space", "bytes"), "space"),
    (("inuse_objects", "count"), ("inuse_space", "bytes"), "space"),
]
# Kinds sampled periodically: each weight is its sample's count x period.
PERIODIC = ("cpu", "page_faults")

GRPC_CODES = {
    "503": grpc.StatusCode.UNAVAILABLE,
    "400": grpc.StatusCode.INVALID_ARGUMENT,
    "500": grpc.StatusCode.INTERNAL,
    "garbage": grpc.StatusCode.INTERNAL,
}


def take_failure(transport):
    """True when this request is one of the first --fail-first (logged)."""
    with LOCK:
        fail = FAILURES["left"] > 0
        FAILURES["left"] -= fail
        if fail:
            with open(FAILURES["log"], "a") as f:
                f.write(transport + "\n")
        return fail


def any_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def summarize(request, transport):
    errors = []
    d = request.dictionary

    def check(cond, what):
        if not cond:
            errors.append(what)
        return cond

    check(len(d.string_table) > 0 and d.string_table[0] == "", "string_table[0] must be ''")
    for name in ("mapping_table", "location_table", "function_table", "link_table",
                 "attribute_table", "stack_table"):
        table = getattr(d, name)
        if check(len(table) > 0, f"{name} is empty"):
            check(table[0].ByteSize() == 0, f"{name}[0] is not the zero value")
    check(len(set(d.string_table)) == len(d.string_table), "duplicate strings")
    links = [(bytes(l.trace_id), bytes(l.span_id)) for l in d.link_table]
    check(len(set(links)) == len(links), "duplicate links")
    for trace_id, span_id in links[1:]:
        check(len(trace_id) == 16 and len(span_id) == 8 and any(trace_id) and any(span_id),
              "a link is not a 16-byte trace id and an 8-byte span id")

    def s(i):
        return d.string_table[i] if check(0 <= i < len(d.string_table), f"string index {i}") else "?"

    def attrs(indices):
        out = {}
        for i in indices:
            if check(0 < i < len(d.attribute_table), f"attribute index {i}"):
                kv = d.attribute_table[i]
                out[s(kv.key_strindex)] = any_value(kv.value)
        return out

    resources = []
    for rp in request.resource_profiles:
        resource = {kv.key: any_value(kv.value) for kv in rp.resource.attributes}
        samples = []
        times = []
        frame_types = set()
        # One Profile per sample type of each kind: a count and a time
        # (for CPU, every time must be its sample's count times the period).
        by_type = {}
        for sp in rp.scope_profiles:
            for p in sp.profiles:
                sample_type = (s(p.sample_type.type_strindex), s(p.sample_type.unit_strindex))
                period_type = s(p.period_type.type_strindex)
                kind = next((k for k in KINDS if sample_type in k[:2] and period_type == k[2]),
                            None)
                if not check(kind is not None,
                             f"unexpected sample_type {sample_type} of period {period_type}"):
                    continue
                check((kind[2], sample_type) not in by_type,
                      f"two profiles of sample_type {sample_type}, period {period_type}")
                # Per-observation samples: a value per timestamp, each in
                # the profile's time range (a millisecond of slack for the
                # window edge).
                for x in p.samples:
                    if x.timestamps_unix_nano:
                        check(len(x.values) == len(x.timestamps_unix_nano),
                              "values and timestamps_unix_nano differ in length")
                        slack = 1_000_000
                        check(all(p.time_unix_nano - slack <= t
                                  <= p.time_unix_nano + p.duration_nano + slack
                                  for t in x.timestamps_unix_nano),
                              "a timestamp outside the profile's time range")
                by_type[(kind[2], sample_type)] = {
                    (x.stack_index, tuple(x.attribute_indices), x.link_index): list(x.values)
                    for x in p.samples
                }
                if sample_type != kind[0]:
                    continue
                check(p.period > 0 and p.time_unix_nano > 0 and p.duration_nano > 0,
                      "period, time_unix_nano and duration_nano must be set")
                times.append(p.time_unix_nano)
                seen = set()
                for sample in p.samples:
                    key = (sample.stack_index, tuple(sample.attribute_indices), sample.link_index)
                    check(key not in seen, "unmerged samples with equal stack/attributes/link")
                    seen.add(key)
                    check(0 <= sample.link_index < len(d.link_table), "link index")
                    if not check(0 < sample.stack_index < len(d.stack_table), "stack index"):
                        continue
                    frames = []
                    for li in d.stack_table[sample.stack_index].location_indices:
                        if not check(0 < li < len(d.location_table), f"location index {li}"):
                            continue
                        loc = d.location_table[li]
                        check(0 <= loc.mapping_index < len(d.mapping_table), "mapping index")
                        for line in loc.lines:
                            if check(0 < line.function_index < len(d.function_table),
                                     "function index"):
                                frames.append(s(d.function_table[line.function_index].name_strindex))
                        frame_type = attrs(loc.attribute_indices).get("profile.frame.type")
                        check(frame_type is not None, "location without profile.frame.type")
                        frame_types.add(frame_type)
                    link = None
                    if 0 < sample.link_index < len(d.link_table):
                        trace_id, span_id = links[sample.link_index]
                        link = {"trace_id": trace_id.hex(), "span_id": span_id.hex()}
                    samples.append({"kind": sample_type[0], "profile": kind[2], "_key": key,
                                    "events": len(sample.timestamps_unix_nano),
                                    "count": sum(sample.values), "stack": frames,
                                    "attributes": attrs(sample.attribute_indices),
                                    "link": link})
        for count_type, time_type, period_type in KINDS:
            counts = by_type.get((period_type, count_type))
            times_of = by_type.get((period_type, time_type))
            if counts is None and times_of is None:
                continue
            if not check(counts is not None and times_of is not None,
                         f"a sample type of {count_type[0]} is missing"):
                continue
            check(times_of.keys() == counts.keys(), "sample types disagree on samples")
            # Each summarized sample gets its weight as "time" (off_cpu,
            # delay, cpu; page_faults; alloc_space or inuse_space).
            for sample in samples:
                if sample["profile"] == period_type and sample["kind"] == count_type[0]:
                    sample["time"] = sum(times_of.get(sample["_key"], [0]))
            if period_type in PERIODIC:
                period = next(p.period for sp in rp.scope_profiles for p in sp.profiles
                              if s(p.sample_type.type_strindex) == "samples"
                              and s(p.period_type.type_strindex) == period_type)
                check(all(times_of[k] == [v[0] * period] for k, v in counts.items()
                          if k in times_of),
                      f"{time_type[0]}/{time_type[1]} is not count x period")
        for sample in samples:
            del sample["_key"]
        resources.append({"attributes": resource, "samples": samples, "times": times,
                          "frame_types": sorted(t for t in frame_types if t)})
    for m in d.mapping_table[1:]:
        s(m.filename_strindex)
        attrs(m.attribute_indices)
    return {"transport": transport, "errors": sorted(set(errors)), "resources": resources}


def record(out, summary):
    with LOCK, open(out, "a") as f:
        f.write(json.dumps(summary) + "\n")


def arrived(out):
    """Notes that a request arrived, before any --delay (tests wait for it)."""
    with LOCK, open(os.path.splitext(out)[0] + ".arrivals", "a") as f:
        f.write("1\n")


def response(reject):
    r = service_pb2.ExportProfilesServiceResponse()
    if reject:
        r.partial_success.rejected_profiles = reject
        r.partial_success.error_message = f"rejected {reject} profiles: test collector"
    return r


class Service(service_grpc.ProfilesServiceServicer):
    def __init__(self, args):
        self.args = args

    def Export(self, request, context):
        if take_failure("grpc"):
            if self.args.fail_as in ("huge", "endless"):
                r = service_pb2.ExportProfilesServiceResponse()
                r.partial_success.error_message = "x" * (64 << 20)
                return r
            context.abort(GRPC_CODES[self.args.fail_as], f"test collector: {self.args.fail_as}")
        arrived(self.args.out)
        time.sleep(self.args.delay)
        record(self.args.out, summarize(request, "grpc"))
        return response(self.args.reject)


def http_handler(args):
    out = args.out

    class Handler(BaseHTTPRequestHandler):
        def fail(self):
            """Answers as --fail-as says; a client that hangs up is fine."""
            mode = args.fail_as
            try:
                if mode in ("503", "400", "500"):
                    body = f"test collector: {mode}".encode()
                    self.send_response(int(mode))
                    if mode == "503":
                        self.send_header("retry-after", "1")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if mode == "endless":
                    # Chunked needs HTTP/1.1 (this answer only).
                    self.protocol_version = "HTTP/1.1"
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                chunk = b"x" * (1 << 20)
                if mode == "garbage":
                    body = b"<html><body>not an OTLP collector</body></html>"
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif mode == "huge":
                    self.send_header("content-length", str(512 << 20))
                    self.end_headers()
                    for _ in range(512):
                        self.wfile.write(chunk)
                elif mode == "endless":
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
                    while True:
                        self.wfile.write(framed)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True


        def do_POST(self):
            if self.path != "/v1development/profiles":
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if take_failure("http"):
                self.fail()
                return
            transport = "http"
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
                transport = "http+gzip"
            request = service_pb2.ExportProfilesServiceRequest.FromString(body)
            arrived(out)
            time.sleep(args.delay)
            record(out, summarize(request, transport))
            answer = response(args.reject).SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--fail-as", default="503",
                        choices=["503", "400", "500", "garbage", "huge", "endless"])
    parser.add_argument("--delay", type=float, default=0)
    parser.add_argument("--reject", type=int, default=0)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    FAILURES["left"] = args.fail_first
    FAILURES["log"] = args.out + ".failed"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         compression=grpc.Compression.NoCompression)
    service_grpc.add_ProfilesServiceServicer_to_server(Service(args), server)
    http = ThreadingHTTPServer(("127.0.0.1", 0), http_handler(args))
    if args.tls_cert:
        with open(args.tls_cert, "rb") as c, open(args.tls_key, "rb") as k:
            cert, key = c.read(), k.read()
        grpc_port = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        http.socket = context.wrap_socket(http.socket, server_side=True)
    else:
        grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"PORTS {grpc_port} {http.server_address[1]}", flush=True)
    time.sleep(args.seconds)
    server.stop(0)
    http.shutdown()


if __name__ == "__main__":
    sys.exit(main())
