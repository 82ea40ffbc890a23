"""The writer's liveness holds under a shifted clock: operators run the receiver under
libfaketime (Debian's ``faketime``) to try retention and archives, and every process then
starts its clock at the faked date when it starts, so no two processes agree on any clock.
Workers and master only time changes of the writer's beat with their own clocks."""

import http.client
import os
import sqlite3
import time
from pathlib import Path

import pytest

from testing.processes import Gunicorn, get
from testing.traffic import Bodies, post

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")

pytestmark = pytest.mark.skipif(not LIBFAKETIME.exists(),
                                reason="needs libfaketime (Debian package faketime)")


def test_callbacks_are_stored_under_a_faked_clock(tmp_path):
    server = Gunicorn(tmp_path / "events.db", tmp_path / "gunicorn.log", workers=2,
                      LD_PRELOAD=str(LIBFAKETIME), FAKETIME="@2020-03-01 12:00:00")
    server.start()
    try:
        time.sleep(1.5)  # the writer has beaten many times; no clock of another process agrees
        bodies, statuses = Bodies(seed=31), []
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for _ in range(30):
            outcome, conn = post(conn, bodies.next())
            conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            statuses.append(outcome.status)
            time.sleep(0.02)
        if conn is not None:
            conn.close()
        health = get(server.port, "/healthz")[0]
    finally:
        server.stop()
    assert statuses == [200] * 30, server.output()[-3000:]
    assert health == 200
    with sqlite3.connect(tmp_path / "events.db") as db:
        (received,) = db.execute("SELECT min(received_at) FROM callbacks").fetchone()
    assert received.startswith("2020-03-01"), received  # the clock really was faked
