#!/usr/bin/env python3
"""External providers that break the sandbox's limits or the protocol, for the tests.

argv[1] picks the behaviour; the request's `config` may give `pid_file`, where `forever`
writes the pid of a helper process it starts (to check that the whole group is killed).
"""
import json
import os
import subprocess
import sys

mode = sys.argv[1]
requests = [json.loads(line) for line in sys.stdin if line.strip()]


def answer(request, **fields):
    print(json.dumps({"request_id": request["request_id"], **fields}), flush=True)


if mode == "forever":
    helper = subprocess.Popen(["sleep", "600"])
    pid_file = requests[0]["config"].get("pid_file")
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(str(helper.pid))
    while True:
        pass
elif mode == "burn_cpu":
    while True:
        pass
elif mode == "allocate":
    hoard = []
    while True:
        hoard.append(bytearray(32 << 20))
elif mode == "spew":
    block = b"x" * (1 << 20)
    for _ in range(100):
        sys.stdout.buffer.write(block)
elif mode == "environment":
    for request in requests:
        seen = {"env": dict(os.environ), "cwd": os.getcwd(), "cwd_entries": os.listdir(".")}
        answer(request, annotate={"sandbox": seen})
        answer(request, result="completed")
elif mode == "not_json":
    print("hello, this is not JSON")
elif mode == "exit_nonzero":
    for request in requests:
        answer(request, result="completed")
    print("something went wrong", file=sys.stderr)
    sys.exit(3)
elif mode == "refuse":
    for request in requests:
        answer(request, result="failed", error="cannot handle this blob")
else:
    sys.exit(f"unknown mode {mode}")
