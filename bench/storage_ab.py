"""Storage cost per callback, in process: derivation on the commit path vs deferred.

    .venv/bin/python bench/storage_ab.py [callbacks]

Batches of 16 planned callbacks (testing/traffic.py bodies) committed as the writer does
(synchronous=FULL, one SAVEPOINT around the batch). ``inline``: store_batch + store.project in
the same transaction; ``deferred``: store_batch alone per commit, store.project every 20
batches in a transaction of its own (synchronous=NORMAL), as the writer process does. Each with
and without PRAGMA temp_store = MEMORY (forced off/on here, whatever db.connect sets). Prints
CPU and wall time per callback and the WAL written per callback (bytes, and frames: pages
dirtied), with checkpoints off so that the WAL holds every page written.
"""
import itertools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from testing.traffic import distinct_bodies
from receiver import db, store, rows
from receiver.callbacks import parse
from receiver.store import Delivery, utcnow

N = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
B = 16
bodies = list(itertools.islice(distinct_bodies(7), N))
plans = [rows.plan(parse(b), Delivery(b, "/webhooks/vonage", utcnow())) for b in bodies]
batches = [plans[i:i+B] for i in range(0, N, B)]

def run(mode, temp_store, every=20):
    d = tempfile.mkdtemp(prefix="storage-ab-", dir=os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(d, "ab.db"); db.init_db(path)
    conn = db.connect(path, synchronous="FULL")
    conn.execute(f"PRAGMA temp_store = {'MEMORY' if temp_store else 'DEFAULT'}")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    cpu, t = time.process_time(), time.perf_counter()
    for i, batch in enumerate(batches):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SAVEPOINT together")
        store.store_batch(conn, batch)
        conn.execute("RELEASE together")
        if mode == "inline":
            store.project(conn)
        conn.execute("COMMIT")
        if mode == "deferred" and (i % every == every - 1 or i == len(batches) - 1):
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE"); store.project(conn); conn.execute("COMMIT")
            conn.execute("PRAGMA synchronous = FULL")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - t
    wal = os.path.getsize(path + "-wal")
    pagesize = conn.execute("PRAGMA page_size").fetchone()[0]
    assert store.derived_differences(conn) == {t: 0 for t in store.DERIVED_TABLES}
    conn.close()
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)
    print(f"{mode:9s} temp_store={'MEMORY' if temp_store else 'default':7s} {N} callbacks: "
          f"{cpu/N*1e6:6.0f} µs CPU, {wall/N*1e6:6.0f} µs wall, WAL {wal/N/1024:5.1f} KiB, "
          f"{wal/N/(pagesize+24):5.1f} pages per callback", flush=True)

for rnd in range(2):
    for mode in ("inline", "deferred"):
        for ts in (False, True):
            run(mode, ts)
