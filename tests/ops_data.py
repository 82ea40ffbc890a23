"""Stores and commands for the operations tests (backup, restore, prune, archive)."""

import sqlite3
import subprocess
from contextlib import closing
from datetime import datetime, timezone

from receiver import db, simulate
from testing.processes import ROOT, VENV_BIN, receiver_environment

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def seed(path, dispatches=300, seed_=1, start=START, days=90, api="mixed"):
    """Store simulated workflows (Dispatch and Messages API v1) through the receiver's own
    storage code; by default spread over 2026-01-01 .. 2026-04-01."""
    with closing(db.connect(str(path))) as conn:
        simulate.store_all(simulate.generate(dispatches, seed=seed_, start=start, days=days, api=api),
                           conn)


def add_rejection(path, received_at, body=b"\xff not json"):
    """A rejected_callbacks row that arrived at ``received_at``."""
    with closing(db.connect(str(path))) as conn:
        conn.execute(
            "INSERT INTO rejected_callbacks (received_at, body, body_bytes, http_status, reason, error) "
            "VALUES (?, ?, ?, 400, 'not_json', '{}')", (received_at, body, len(body)))


def run_receiver(*args, db_path, timeout=120):
    """The installed ``receiver`` command, as an operator runs it: (exit code, stdout, stderr)."""
    result = subprocess.run(
        [str(VENV_BIN / "receiver"), *args], cwd=ROOT, env=receiver_environment(db_path),
        capture_output=True, text=True, timeout=timeout,
    )
    return result.returncode, result.stdout, result.stderr


def count(path, table="callbacks"):
    with closing(sqlite3.connect(str(path))) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
