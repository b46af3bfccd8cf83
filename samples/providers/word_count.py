#!/usr/bin/env python3
"""A Studio external provider: annotates each blob with the word count of its /content.

Studio runs it once per call, in a fresh temporary directory, with a cleared environment
and operating-system limits (docs/providers.md, "External providers"). The protocol:
one JSON request per line on stdin, until end of file; for each request, at most one
output line ("annotate" a merge patch of the blob, or "derive" a new blob) and then one
result line ("completed", or "failed" with an "error") on stdout. Exit with status 0.
"""
import json
import sys


def answer(request_id, **fields):
    print(json.dumps({"request_id": request_id, **fields}))


for line in sys.stdin:
    if not line.strip():
        continue
    request = json.loads(line)
    request_id = request["request_id"]
    content = request["doc"].get("content", "")
    if not isinstance(content, str):
        answer(request_id, result="failed", error="/content is not text")
        continue
    answer(request_id, annotate={"word_count": len(content.split())})
    answer(request_id, result="completed")
