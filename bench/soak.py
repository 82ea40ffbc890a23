"""The soak: a long run of distinct callbacks through the real gunicorn and writer process.

    .venv/bin/python bench/soak.py --callbacks 1000000      (or: make soak SOAK_ARGS=...)

It posts ``--callbacks`` distinct realistic bodies (testing/traffic.py) from ``--threads``
connections, and meanwhile samples the resident memory (RSS) of the writer and of every
worker, and /healthz's ``projection_lag_ms``. At the end, every process gone: every 200 is
found committed byte-exact, the file passes SQLite's integrity check and ``receiver check``
(the derived rows equal a rebuild). Prints one JSON object; exits 1 when anything is lost, a
check fails or memory grew by more than ``--max-growth`` between the first and last tenth.
Not part of ``make test``: it takes a while (about 1.5 ms per callback on 2 shared cores).
"""

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testing.processes import ROOT, VENV_BIN, Gunicorn, get, receiver_environment  # noqa: E402
from testing.traffic import Bodies, integrity_check, post, stored_hashes  # noqa: E402


def rss_kib(pid):
    """Resident memory of ``pid`` in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callbacks", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="default: the config's")
    parser.add_argument("--directory", default=None, help="default: a temporary directory")
    parser.add_argument("--max-growth", type=float, default=0.2,
                        help="largest RSS growth allowed, last tenth over first (0.2 = 20 %%)")
    args = parser.parse_args(argv)

    directory = Path(args.directory or tempfile.mkdtemp(prefix="receiver-soak-"))
    directory.mkdir(parents=True, exist_ok=True)
    server = Gunicorn(directory / "events.db", directory / "gunicorn.log", workers=args.workers)
    server.start()
    bodies = Bodies(seed=1017)
    acknowledged, others = set(), {}
    lock, left = threading.Lock(), [args.callbacks]
    memory, lags = [], []
    done = threading.Event()

    def poster():
        conn = None
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            body = bodies.next()
            for _ in range(20):  # a 503 or a dropped connection: retried, as Vonage does
                conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
                outcome, conn = post(conn, body)
                if outcome.status == 200:
                    with lock:
                        acknowledged.add(outcome.sha256)
                    break
                with lock:
                    others[str(outcome.status)] = others.get(str(outcome.status), 0) + 1
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def sampler():
        while not done.wait(1.0):
            status, _ = get(server.port, "/healthz", timeout=5)
            if status == 200:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                conn.request("GET", "/healthz")
                answer = json.loads(conn.getresponse().read())
                conn.close()
                lags.append(answer.get("projection_lag_ms", 0))
            if len(lags) % 5 == 0:
                memory.append({"t": time.monotonic(), "acknowledged": len(acknowledged),
                               "writers": [rss_kib(p) for p in server.writer_pids()],
                               "workers": [rss_kib(p) for p in server.worker_pids()]})

    started = time.monotonic()
    threads = [threading.Thread(target=poster, daemon=True) for _ in range(args.threads)]
    watcher = threading.Thread(target=sampler, daemon=True)
    for thread in [*threads, watcher]:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    done.set()
    watcher.join(10)
    server.stop()

    tenth = max(1, len(memory) // 10)

    def mean_rss(samples, key):
        values = [v for s in samples for v in s[key] if v]
        return round(statistics.mean(values)) if values else None

    first, last = memory[:tenth], memory[-tenth:]
    rss = {key: {"first_tenth_kib": mean_rss(first, key), "last_tenth_kib": mean_rss(last, key)}
           for key in ("writers", "workers")}
    growth = max((r["last_tenth_kib"] / r["first_tenth_kib"] - 1) for r in rss.values()
                 if r["first_tenth_kib"] and r["last_tenth_kib"]) if memory else 0.0
    lags_sorted = sorted(lags)
    # Progress on stderr before the long checks; stdout gets the one JSON report.
    print(json.dumps({"rss": rss, "projection_lag_ms": lags_sorted[-20:]}), file=sys.stderr,
          flush=True)
    recorded, recomputed = stored_hashes(server.db_path)
    # Not testing.traffic.receiver_check: its 60 s limit is too short for a large file.
    checked = subprocess.run([str(VENV_BIN / "receiver"), "check", "--db", str(server.db_path)],
                             cwd=ROOT, env=receiver_environment(server.db_path, 0),
                             capture_output=True, text=True)
    check_code, check_output = checked.returncode, checked.stdout + checked.stderr
    report = {
        "callbacks": args.callbacks, "acknowledged": len(acknowledged),
        "not_200_answers_retried": others, "seconds": round(seconds, 1),
        "per_second": round(len(acknowledged) / seconds, 1),
        "lost": len(acknowledged - recorded), "stored_not_byte_exact": len(recorded ^ recomputed),
        "integrity_check": integrity_check(server.db_path),
        "receiver_check": check_code, "check_output": check_output.strip().splitlines(),
        "rss": rss, "rss_growth": round(growth, 3),
        "projection_lag_ms": {
            "samples": len(lags),
            "p50": lags_sorted[len(lags) // 2] if lags else None,
            "p99": lags_sorted[int(len(lags) * 0.99)] if lags else None,
            "max": lags_sorted[-1] if lags else None},
        "directory": str(directory),
    }
    print(json.dumps(report, indent=1))
    if check_code != 0:
        print(check_output, file=sys.stderr)
    failed = (report["lost"] or report["stored_not_byte_exact"] or check_code != 0
              or report["integrity_check"] != ["ok"] or growth > args.max_growth)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
