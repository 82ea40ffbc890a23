"""A short coverage-guided fuzzing run of fuzz/fuzz_parse_store.py (atheris / libFuzzer).

The harness feeds arbitrary bytes to ``receiver.callbacks.parse`` at each webhook URL and
stores what parses (``store.store_callback``) or keeps what is refused
(``store.store_rejection``) in a real SQLite database; only ``callbacks.Rejection`` may escape
``parse``, and storing must never raise. The run starts from the bodies of tests/payloads.py
plus hostile seeds that once crashed the store, and is bounded in runs and in time.
"""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import payloads

pytest.importorskip("atheris", reason="atheris (libFuzzer for Python) is not installed for this Python")

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "fuzz" / "fuzz_parse_store.py"
RUNS = 20_000
MAX_TOTAL_TIME_S = 45  # a slow machine stops early, still with exit code 0


def seed_bodies():
    """Real shapes first (every channel, both link spellings, the spec's typo, Messages v1),
    then hostile ones."""
    _, _, _, workflow = payloads.failover_workflow()
    bodies = [payloads.SEED_STATUS, payloads.SEED_FINAL_REPORT, *workflow]
    for channel in ("sms", "mms", "whatsapp", "messenger", "viber_service_msg"):
        bodies.append(payloads.status(None, payloads.new_uuid(), "delivered", channel=channel,
                                      price="0.0333", error=(1300, "Not part of the provider network")))
    bodies.append(payloads.status(None, payloads.new_uuid(), "read", link="workflow"))
    bodies.append(payloads.status(None, None, "rejected", link=None))
    bodies.append(payloads.final_report(messages=[(payloads.new_uuid(), "viber_sevice_msg", "submitted", "0.01")],
                                        status="error"))
    # Messages API v1: every channel, a failover request's legs in both workflow spellings.
    for channel in payloads.V1_ADDRESSES:
        bodies.append(payloads.v1_status(channel=channel, price="0.0333", error=("1300", "Not part of the network")))
    for spelling in ("spec", "java"):
        bodies.extend(payloads.messages_failover(spelling=spelling)[2])
    seeds = [payloads.dumps(body) for body in bodies]
    seeds += [
        # Once answered 503 without keeping the body: a lone surrogate escape in a stored field,
        # a trailing newline in a price, an unknown "from_" key, a price that overflowed a sum.
        payloads.dumps(payloads.status("m-\ud83d", None)),
        payloads.dumps(payloads.status(None, None, price="0.5\n")),
        payloads.dumps(dict(payloads.status(), from_="x")),
        payloads.dumps(payloads.status(None, "d-1", price="999999999.999999999")),
        json.dumps(payloads.status(None, None, "read", extra="caf\u00e9 \u0000 \U0001f600"), ensure_ascii=False).encode(),
        b"", b"{}", b"[]", b"null", b'{"message_uuid": ', b"\xff\xfe\x00",
        b'{"a":' * 40 + b"1" + b"}" * 40,
    ]
    return seeds


def test_fuzz_parse_and_store(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for number, body in enumerate(seed_bodies()):
        (corpus / f"seed-{number:03d}").write_bytes(body)
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "VONAGE_"))}
    env["FUZZ_DB_DIR"] = str(db_dir)

    result = subprocess.run(
        [sys.executable, str(HARNESS), f"-atheris_runs={RUNS}", f"-max_total_time={MAX_TOTAL_TIME_S}",
         "-max_len=4096", "-timeout=20", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/",
         str(corpus)],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]
    assert result.returncode == 0, f"exit {result.returncode}, artifacts {crashes}\n{output[-6000:]}"
    assert "Done " in output, output[-3000:]
    assert not crashes

    # The run went through both paths into a real database.
    conn = sqlite3.connect(str(db_dir / "events.db"))
    try:
        stored = conn.execute("SELECT count(*) FROM callbacks").fetchone()[0]
        kept = conn.execute("SELECT count(*) FROM rejected_callbacks").fetchone()[0]
        kinds = {kind for (kind,) in conn.execute("SELECT DISTINCT kind FROM callbacks")}
    finally:
        conn.close()
    assert stored >= 10 and kept >= 10, (stored, kept)
    assert kinds == {"message_status", "final_report"}
