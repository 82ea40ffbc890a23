"""GET /metrics, X-Request-ID and the JSON log format, through the Flask test client.

One process: the metrics live in this process (no PROMETHEUS_MULTIPROC_DIR) and add up over
the whole test session, so each test compares values before and after what it posts. The
real gunicorn, Prometheus and promtool are in test_prometheus.py.
"""

import json
import os
import re
import sqlite3
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import post_to
from payloads import dumps, final_report, status, v1_status
from receiver import create_app, logs, metrics
from receiver.config import describe, load_settings
from receiver.schemas import format_timestamp
from receiver.simulate import sign
from test_storage_failure import write_lock


def scrape(client, token=None):
    """/metrics as {(sample name, (sorted label pairs)): value}."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def callbacks(outcome, kind, api="dispatch"):
    return {"name": "receiver_callbacks_total", "kind": kind, "api": api, "outcome": outcome}


def test_each_callback_is_counted_by_kind_api_and_outcome(client):
    before = scrape(client)
    body = dumps(status())
    assert post_to(client, body).get_json()["status"] == "stored"
    assert post_to(client, body).get_json()["status"] == "duplicate"
    assert post_to(client, dumps(final_report())).status_code == 200
    assert post_to(client, b"{not json").status_code == 400
    assert post_to(client, b"{}").status_code == 422
    after = scrape(client)

    def changed(**labels):
        return delta(before, after, **labels)

    assert changed(**callbacks("stored", "message_status")) == 1
    assert changed(**callbacks("duplicate", "message_status")) == 1
    assert changed(**callbacks("stored", "final_report")) == 1
    assert changed(**callbacks("rejected", "unknown", "unknown")) == 2
    assert changed(name="receiver_rejections_total", reason="invalid_json") == 1
    assert changed(name="receiver_rejections_total", reason="unknown_kind") == 1
    assert changed(name="receiver_signature_results_total", result="unsigned") == 5
    assert changed(name="receiver_request_duration_seconds_count") == 5
    assert changed(name="receiver_storage_errors_total") == 0


def test_a_messages_api_callback_is_counted_under_its_api_and_channel(client):
    sent = datetime.now(timezone.utc) - timedelta(seconds=30)
    before = scrape(client)
    body = dumps(v1_status(channel="rcs", timestamp=format_timestamp(sent)))
    assert post_to(client, body).get_json()["status"] == "stored"
    after = scrape(client)
    assert delta(before, after, **callbacks("stored", "message_status", "messages")) == 1
    assert delta(before, after, **callbacks("stored", "message_status", "dispatch")) == 0
    assert delta(before, after, "receiver_callback_lag_seconds_count",
                 kind="message_status", channel="rcs") == 1


def test_callback_lag_is_observed_by_channel_for_new_callbacks_only(client):
    sent = datetime.now(timezone.utc) - timedelta(seconds=100)
    body = dumps(status(channel="sms", timestamp=format_timestamp(sent)))
    before = scrape(client)
    assert post_to(client, body).get_json()["status"] == "stored"
    assert post_to(client, body).get_json()["status"] == "duplicate"  # a retry: not lag again
    after = scrape(client)
    labels = {"kind": "message_status", "channel": "sms"}
    assert delta(before, after, "receiver_callback_lag_seconds_count", **labels) == 1
    assert 100 <= delta(before, after, "receiver_callback_lag_seconds_sum", **labels) < 130
    assert delta(before, after, "receiver_callback_lag_seconds_bucket", le="60.0", **labels) == 0
    assert delta(before, after, "receiver_callback_lag_seconds_bucket", le="120.0", **labels) == 1


def test_signature_results_are_counted(db_path):
    client = create_app({"db_path": str(db_path), "signature_secret": "s" * 32}).test_client()
    before = scrape(client)
    body = dumps(status())
    assert post_to(client, body).status_code == 401
    signed = {"Authorization": sign(body, "s" * 32), "Content-Type": "application/json"}
    assert post_to(client, body, headers=signed).status_code == 200
    after = scrape(client)
    assert delta(before, after, "receiver_signature_results_total", result="failed") == 1
    assert delta(before, after, "receiver_signature_results_total", result="verified") == 1
    assert delta(before, after, "receiver_rejections_total", reason="missing_token") == 1


def test_storage_errors_are_counted_and_the_503_carries_its_request_id(db_path):
    client = create_app({"db_path": str(db_path), "busy_timeout_ms": 200}).test_client()
    before = scrape(client)
    with write_lock(db_path):
        response = post_to(client, dumps(status()), headers={"X-Request-ID": "vonage-retry-1"})
    assert response.status_code == 503
    assert response.headers["X-Request-ID"] == "vonage-retry-1"
    after = scrape(client)
    assert delta(before, after, "receiver_storage_errors_total") == 1
    assert delta(before, after, "receiver_request_duration_seconds_count") == 1
    assert sum(delta(before, after, **callbacks(o, "message_status"))
               for o in ("stored", "duplicate", "rejected")) == 0


def test_group_commits_are_observed(client):
    before = scrape(client)
    for _ in range(3):
        assert post_to(client, dumps(status())).status_code == 200
    after = scrape(client)
    # One request at a time: each write is a batch of its own.
    assert delta(before, after, "receiver_writer_batch_size_count") == 3
    assert delta(before, after, "receiver_writer_batch_size_sum") == 3
    assert delta(before, after, "receiver_writer_commit_duration_seconds_count") == 3
    assert delta(before, after, "receiver_writer_commit_duration_seconds_sum") > 0
    assert value(after, "receiver_writer_queue_depth") == 1


def test_database_gauges_are_read_when_scraped(client, db_path, rows):
    samples = scrape(client)
    assert value(samples, "receiver_last_callback_timestamp_seconds") == 0  # none yet
    assert post_to(client, dumps(status())).status_code == 200
    samples = scrape(client)
    (newest,) = rows(db_path, "SELECT max(received_at) AS t FROM callbacks")
    expected = datetime.fromisoformat(newest["t"]).timestamp()
    assert value(samples, "receiver_last_callback_timestamp_seconds") == pytest.approx(expected)
    assert abs(expected - time.time()) < 60
    assert value(samples, "receiver_database_size_bytes") == os.path.getsize(db_path)
    assert value(samples, "receiver_database_wal_size_bytes") == os.path.getsize(f"{db_path}-wal")
    assert value(samples, "receiver_database_wal_size_bytes") > 0


def test_metrics_are_open_without_a_token(client):
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic dG9rZW4=",
                                           "Bearer", "metrics-token-1234"])
def test_metrics_token_is_required_when_set(db_path, authorization):
    client = create_app({"db_path": str(db_path), "metrics_token": "metrics-token-1234"}).test_client()
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["reason"] == "bad_metrics_token"
    assert "receiver_" not in response.get_data(as_text=True)
    assert scrape(client, token="metrics-token-1234")  # the right token is let in


def test_the_metrics_token_is_a_hidden_setting():
    settings = load_settings({"RECEIVER_METRICS_TOKEN": "t0ken", "RECEIVER_LOG_FORMAT": "JSON"})
    assert settings.metrics_token == "t0ken" and settings.log_format == "json"
    lines = describe(settings)
    assert "RECEIVER_METRICS_TOKEN=(set, hidden)" in lines
    assert not any("t0ken" in line for line in lines)
    with pytest.raises(ValueError, match="RECEIVER_LOG_FORMAT"):
        load_settings({"RECEIVER_LOG_FORMAT": "xml"})


# --- X-Request-ID ----------------------------------------------------------------------------


@pytest.mark.parametrize("sent, returned", [
    ("abc-123.X_y", "abc-123.X_y"),
    ("a b/c<d>\"e'", "abcde"),
    ("x" * 300, "x" * 128),
    ("é" * 10 + "ok", "ok"),
])
def test_a_sent_request_id_is_sanitised_and_returned(client, sent, returned):
    response = post_to(client, dumps(status()), headers={"X-Request-ID": sent})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == returned


@pytest.mark.parametrize("sent", [None, "", "///", "<script>"[:1]])
def test_a_request_id_is_made_when_none_usable_is_sent(client, sent):
    headers = {} if sent is None else {"X-Request-ID": sent}
    first = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    second = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and re.fullmatch(r"[0-9a-f]{32}", second)
    assert first != second


@pytest.mark.parametrize("method, path, body, expected", [
    ("POST", "/webhooks/vonage", dumps(status()), 200),
    ("POST", "/webhooks/vonage", b"[1]", 422),
    ("POST", "/webhooks/vonage", b"", 400),
    ("GET", "/healthz", None, 200),
    ("GET", "/metrics", None, 200),
    ("GET", "/openapi.json", None, 200),
    ("GET", "/nowhere", None, 404),
    ("GET", "/webhooks/vonage", None, 405),
])
def test_every_answer_carries_the_request_id(client, method, path, body, expected):
    response = client.open(path, method=method, data=body, content_type="application/json",
                           headers={"X-Request-ID": "req-42"})
    assert response.status_code == expected
    assert response.headers["X-Request-ID"] == "req-42"


# --- the JSON outcome line ---------------------------------------------------------------------


@pytest.fixture
def json_logs():
    """Leave this process's receiver logger as text mode after the test."""
    yield
    logs.configure("text")


def test_a_503_outcome_is_one_json_line(db_path, capsys, json_logs):
    client = create_app({"db_path": str(db_path), "busy_timeout_ms": 100,
                         "log_format": "json"}).test_client()
    with write_lock(db_path):
        response = post_to(client, dumps(status()), headers={"X-Request-ID": "r-503"})
    assert response.status_code == 503
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    (line,) = [line for line in lines if line.get("request_id") == "r-503"]
    assert line["outcome"] == "unavailable" and line["http_status"] == 503
    assert line["reason"] == "storage_unavailable" and line["level"] == "error"
    assert line["latency_ms"] >= 100  # it waited for the lock first
    assert "database is locked" in line["error"]


def test_the_database_gauge_survives_an_unreadable_file(tmp_path):
    """A scrape must answer even when the database cannot be read (the file sizes still)."""
    client = create_app({"db_path": str(tmp_path / "missing.db")}).test_client()
    samples = scrape(client)
    assert value(samples, "receiver_database_size_bytes") == 0
    assert ("receiver_last_callback_timestamp_seconds", ()) not in samples


def test_a_database_without_callbacks_table_is_not_an_error(tmp_path):
    path = tmp_path / "empty.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE other (x)")
    client = create_app({"db_path": str(path)}).test_client()
    assert ("receiver_last_callback_timestamp_seconds", ()) not in scrape(client)


class Broken:
    """A metric whose every update fails (a full disk under PROMETHEUS_MULTIPROC_DIR, say)."""

    def observe(self, *args):
        raise OSError(28, "No space left on device")

    set = inc = observe


def test_a_failing_metric_changes_no_answer_and_stops_no_writer(client, db_path, rows,
                                                               monkeypatch, caplog):
    for name in ("REQUEST_SECONDS", "BATCH_SIZE", "QUEUE_DEPTH"):
        monkeypatch.setattr(metrics, name, Broken())
    for hook in (metrics.callback_stored, metrics.callback_rejected, metrics.observe_batch):
        monkeypatch.setattr(hook, "failed", False, raising=False)
    for _ in range(2):
        assert post_to(client, dumps(status())).get_json()["status"] == "stored"
    assert post_to(client, b"{}").status_code == 422
    assert rows(db_path, "SELECT count(*) AS n FROM callbacks") == [{"n": 2}]
    failures = [r for r in caplog.records if r.name == "receiver.metrics"]
    # Logged once per hook, not once per request.
    assert sorted(r.getMessage() for r in failures) == [
        "metrics: callback_rejected failed (logged once)",
        "metrics: callback_stored failed (logged once)",
        "metrics: observe_batch failed (logged once)",
    ]
