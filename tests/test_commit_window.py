"""The writer process's commit window (RECEIVER_COMMIT_WINDOW_MS): callbacks that come while it
is open share one commit; with the window at 0 each commit takes what has come, no more.

Real gunicorn and writer process; the batches are read from /metrics
(receiver_writer_batch_size), the commits they made from the database.
"""

import http.client
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from testing.processes import Gunicorn
from testing.traffic import Bodies, post

CALLBACKS = 12


def batches(port):
    """(commits, writes) the writer's group commits made so far, from /metrics."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = {sample.name: sample.value for family in text_string_to_metric_families(text)
             for sample in family.samples if sample.name.startswith("receiver_writer_batch_size")}
    return found["receiver_writer_batch_size_count"], found["receiver_writer_batch_size_sum"]


def post_spaced(port, bodies, gap_s):
    """POST each body from a thread of its own, one started every ``gap_s`` seconds."""
    statuses, threads = [], []

    def send(body):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        outcome, _ = post(conn, body)
        statuses.append(outcome.status)
        conn.close()

    started = threading.Event()
    for body in bodies:
        thread = threading.Thread(target=send, args=(body,))
        thread.start()
        threads.append(thread)
        started.wait(gap_s)
    for thread in threads:
        thread.join(60)
    return statuses


@pytest.mark.parametrize("window_ms, most_commits, least_commits", [
    (400, 2, 1),           # 12 callbacks 10 ms apart: all within one or two windows
    (0, CALLBACKS, 10),    # each has been answered before the next comes
])
def test_callbacks_within_the_window_share_a_commit(tmp_path, window_ms, most_commits,
                                                    least_commits):
    server = Gunicorn(tmp_path / "events.db", tmp_path / "gunicorn.log", workers=2,
                      RECEIVER_COMMIT_WINDOW_MS=window_ms).start(timeout=60)
    try:
        commits_before, writes_before = batches(server.port)
        gap = 0.01 if window_ms else 0.15
        statuses = post_spaced(server.port, [Bodies(seed=5).next() for _ in range(CALLBACKS)], gap)
        assert statuses == [200] * CALLBACKS
        commits, writes = batches(server.port)
    finally:
        assert not server.stop()
    assert writes - writes_before >= CALLBACKS
    # /healthz probes during start-up may share a batch too: count the callbacks' commits only.
    assert least_commits <= commits - commits_before <= most_commits + 1, (commits, writes)


def test_a_callback_after_a_quiet_spell_does_not_wait(tmp_path):
    """The window only holds callbacks that come soon after the previous commit began."""
    server = Gunicorn(tmp_path / "events.db", tmp_path / "gunicorn.log", workers=1,
                      RECEIVER_COMMIT_WINDOW_MS=1000).start(timeout=60)
    try:
        bodies = Bodies(seed=6)
        waits = []
        for _ in range(3):
            time.sleep(1.2)  # longer than the window since the previous commit
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            outcome, _ = post(conn, bodies.next())
            conn.close()
            assert outcome.status == 200
            waits.append(outcome.ended - outcome.started)
    finally:
        assert not server.stop()
    # Held for the window, each would take a second or more.
    assert max(waits) < 0.8, waits


def test_the_window_is_a_checked_setting(tmp_path):
    from receiver.config import check, load_settings

    assert load_settings({}).commit_window_ms == 1.0
    with pytest.raises(ValueError, match="RECEIVER_COMMIT_WINDOW_MS"):
        check(load_settings({"RECEIVER_COMMIT_WINDOW_MS": "5000"}))
