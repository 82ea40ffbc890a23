"""What a worker pays per callback, in process: CPU microseconds of each stage and of the
whole Flask request, on the bench's signed bodies (issue 17, item 4).

The whole request runs the receiver's own app (``create_app``, its hooks, routes, signature
check, validation, plan, metrics, logs) through ``app.wsgi_app`` with the environ gunicorn would
build; only the socket to the writer is left out: its frame is encoded (``encode_request``)
and a ``Stored`` returned. Each figure is the best of ``--repeat`` passes over the bodies
(CPU time of this process), so another job on the machine moves it little.

    .venv/bin/python bench/worker_cost.py --count 2000 --repeat 5
"""

import argparse
import dataclasses
import io
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import make_bodies  # noqa: E402

SECRET = "bench-worker-cost-secret-0123456789abcdef"
PATH = "/webhooks/vonage"


class FrameOnlyWriter:
    """The worker's half of a write: the frame it would send, and the answer a writer gives."""

    def __init__(self):
        from receiver.store import Stored
        from receiver.writer import encode_request

        self.encode, self.stored = encode_request, Stored

    def run(self, operation, *args, **kwargs):
        self.encode(operation, args, kwargs)
        return self.stored(1, 1, "message_status") if operation == "store_planned" else 1


def environ(authorization, body):
    """The WSGI environ gunicorn builds for a POST of ``body`` (wsgi.input added per call)."""
    env = {
        "REQUEST_METHOD": "POST", "PATH_INFO": PATH, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False,
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "HTTP_USER_AGENT": "wrk", "HTTP_HOST": "127.0.0.1:8000",
    }
    if authorization:
        env["HTTP_AUTHORIZATION"] = authorization
    return env


def best(passes, run):
    """The least CPU seconds ``run`` took over ``passes`` calls."""
    times = []
    for _ in range(passes):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="bodies (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="passes, the best kept (default 5)")
    args = parser.parse_args(argv)

    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from receiver import create_app, rows
    from receiver.callbacks import parse
    from receiver.store import Delivery, utcnow
    from receiver.writer import encode_request

    lines = [(auth, body) for _, auth, body in make_bodies.generate(args.count, 1, SECRET)]
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"db_path": os.path.join(tmp, "cost.db"), "signature_secret": SECRET})
        app.extensions["receiver.writer"] = FrameOnlyWriter()
        verifier = app.extensions["receiver.verifier"]
        envs = [environ(auth, body) for auth, body in lines]
        deliveries = [Delivery(body, PATH, utcnow(), "127.0.0.1", "wrk", "application/json", auth)
                      for auth, body in lines]
        signatures = [verifier.check(d) for d in deliveries]
        callbacks = [parse(d.body) for d in deliveries]
        plans = [rows.plan(c, d, s) for c, d, s in zip(callbacks, deliveries, signatures)]

        def requests():
            for env, (_, body) in zip(envs, lines):
                env = dict(env)
                env["wsgi.input"] = io.BytesIO(body)
                for _ in app.wsgi_app(env, lambda status, headers, exc_info=None: None):
                    pass

        stages = {
            # A fresh Delivery each time: its body's hash and arrival time are computed once.
            "signature check": lambda: [verifier.check(dataclasses.replace(d)) for d in deliveries],
            "parse + validate": lambda: [parse(d.body) for d in deliveries],
            "plan rows": lambda: [rows.plan(c, d, s)
                                  for c, d, s in zip(callbacks, deliveries, signatures)],
            "frame to writer": lambda: [encode_request("store_planned", (p,), {}) for p in plans],
            "whole request": requests,
        }
        requests()  # warm up: schemas, label children, imports
        print(f"{len(lines)} bench bodies, best of {args.repeat} passes, CPU µs per callback:")
        for name, run in stages.items():
            print(f"  {name:18s} {best(args.repeat, run) / len(lines) * 1e6:8.1f}")


if __name__ == "__main__":
    main()
