"""An OTLP/HTTP receiver for the trace tests (services.sh's `otlp` service).

oteltest's HttpSink decodes each export request (protobuf or JSON) with the
OpenTelemetry protocol's own Python classes; every span received is appended to OUT as
one JSON line: name, trace and span ids (hex), parent span id, kind, attributes,
the resource's service.name.

    python otlp_sink.py --port 4318 --out spans.jsonl
"""

import argparse
import json
import logging
import threading

from oteltest.sink import HttpSink
from oteltest.sink.handler import RequestHandler


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class SpansToFile(RequestHandler):
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def handle_trace(self, request, headers):
        lines = []
        for resource_spans in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(json.dumps({
                        "service": resource.get("service.name"),
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "kind": span.kind,
                        "attributes": {a.key: value_of(a.value) for a in span.attributes},
                    }))
        with self.lock, open(self.path, "a", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")

    def handle_metrics(self, request, headers):
        pass

    def handle_logs(self, request, headers):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    open(args.out, "a").close()
    sink = HttpSink(SpansToFile(args.out), logging.getLogger("otlp-sink"), port=args.port, daemon=False)
    sink.start()
    sink.svr_thread.join()


if __name__ == "__main__":
    main()
