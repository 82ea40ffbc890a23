"""Benchmark: `receiver vonage-records import` of a 1,000,000-record report zip.

Writes a MESSAGES report zip in Vonage's format (one CSV, random message uuids over 30 days,
several channels, prices and currencies) to a temporary directory on the repository's disk
(bench-results/, not /tmp, which may be tmpfs), creates a fresh database with `receiver
init-db`, then times `receiver vonage-records import` as a user runs it (the installed
command, a process of its own) and reads its peak RSS from getrusage(RUSAGE_CHILDREN).
Checks every record is there; prints one line per figure; exits non-zero only when the import
fails or loses records, and says (without failing) whether the targets (60 s, 200 MB) are met.
The import's CPU time (user + system) and the load average are printed too: on a shared
machine the wall time says as much about the neighbours as about the import.

    python bench/vonage_import.py                    # 1,000,000 records
    python bench/vonage_import.py --records 100000
"""

import argparse
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testing.vonage_reports import write_zip  # noqa: E402

BIN = Path(sys.executable).parent
TARGET_S, TARGET_MB = 60.0, 200.0
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
CHANNELS = [("whatsapp", "0.0085"), ("viber", "0.0120"), ("sms", "0.0333"), ("messenger", "0.0050"),
            ("mms", "0.0425")]


def records(count, seed=1):
    """``count`` MESSAGES outbound records as Vonage reports them, over 30 days, in time order."""
    rng = random.Random(seed)
    step = 30 * 86400 / count
    for n in range(count):
        provider, price = CHANNELS[n % len(CHANNELS)]
        received = (START + timedelta(seconds=int(n * step))).strftime("%Y-%m-%dT%H:%M:%S+0000")
        yield {
            "account_id": "abcd1234", "message_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "client_ref": f"order-{n}", "direction": "outbound", "from": "447700900000",
            "to": f"4477009{n % 100000:05d}", "provider": provider,
            "status": "delivered" if n % 50 else "rejected", "error_code": "" if n % 50 else "1300",
            "country": "GB", "country_name": "United Kingdom", "date_received": received,
            "date_finalized": received, "latency": str(800 + n % 3000),
            "total_price": price if n % 7 else "", "currency": "EUR" if n % 3 else "USD",
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the report (default 1e6)")
    args = parser.parse_args()
    (REPO / "bench-results").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO / "bench-results", prefix="vonage-import-") as tmp:
        tmp = Path(tmp)
        began = time.monotonic()
        report = write_zip(tmp / "MESSAGES_bench.zip", records(args.records))
        print(f"generated {args.records} records: {report.stat().st_size / 1e6:.1f} MB zip "
              f"in {time.monotonic() - began:.1f} s")
        database = tmp / "events.db"
        subprocess.run([str(BIN / "receiver"), "init-db", "--db", str(database)], check=True,
                       capture_output=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.monotonic()
        result = subprocess.run([str(BIN / "receiver"), "vonage-records", "import", "--db", str(database),
                                 str(report)], capture_output=True, text=True)
        seconds = time.monotonic() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mb = after.ru_maxrss / 1024
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        with closing(sqlite3.connect(database)) as conn:
            stored = conn.execute("SELECT count(*) FROM vonage_records").fetchone()[0]
        print(result.stderr.strip().splitlines()[-1])
        print(f"import: {seconds:.1f} s ({args.records / seconds:,.0f} records/s), CPU {cpu:.1f} s, "
              f"peak RSS {peak_mb:.0f} MB, {stored} rows stored, database "
              f"{database.stat().st_size / 1e6:.0f} MB, load average {os.getloadavg()[0]:.1f}")
        scale = args.records / 1_000_000
        print(f"targets for 1e6 records: <= {TARGET_S:.0f} s: "
              f"{'met' if seconds <= TARGET_S * scale else 'NOT met'}; peak RSS < {TARGET_MB:.0f} MB: "
              f"{'met' if peak_mb < TARGET_MB else 'NOT met'}")
        return 0 if stored == args.records else 1


if __name__ == "__main__":
    sys.exit(main())
