"""Metrics and logs of the real thing: gunicorn with 9 workers and the writer process,
Debian's promtool and a real Prometheus server scraping it, the alert rules' unit tests.

One receiver serves the module: it gets a known mix of callbacks from many connections at
once (so many workers serve them), then each test reads what it must show. Its logs are JSON
(RECEIVER_LOG_FORMAT=json); a second, small receiver shows the plain-text default.
"""

import http.client
import json
import re
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from testing.processes import ROOT, Gunicorn, free_port
from testing.traffic import Bodies, post

PROMETHEUS_CONFIG = ROOT / "config" / "prometheus"
TOKEN = "scrape-token-for-tests"
WORKERS = 9
DISTINCT = 300
DUPLICATES = 20
BAD_JSON = 5
UNKNOWN_KIND = 3
CONNECTIONS = 12

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None or shutil.which("prometheus") is None,
    reason="needs Debian's prometheus package (make system-deps)",
)


def promtool(*args, stdin=None):
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=PROMETHEUS_CONFIG)


def scrape(port, token=TOKEN, request_id=None):
    """(status, headers, text) of GET /metrics."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if request_id:
        headers["X-Request-ID"] = request_id
    response = requests.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)
    return response.status_code, response.headers, response.text


def samples(text):
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(found, name, **labels):
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for (n, pairs), v in found.items()
               if n == name and set(labels.items()) <= set(pairs))


def post_all(port, bodies, threads):
    """POST every body, spread over ``threads`` threads (each its own connections); return
    the statuses."""
    statuses, lock = [], threading.Lock()
    queue = list(bodies)

    def run():
        conn = None
        while True:
            with lock:
                if not queue:
                    break
                body = queue.pop()
            conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            outcome, conn = post(conn, body)
            with lock:
                statuses.append(outcome.status)
        if conn is not None:
            conn.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(120)
    return statuses


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    """A 9-worker gunicorn, JSON logs, /metrics behind a token, after a known mix of traffic."""
    directory = tmp_path_factory.mktemp("metrics")
    server = Gunicorn(directory / "events.db", directory / "gunicorn.log", workers=WORKERS,
                      RECEIVER_LOG_FORMAT="json", RECEIVER_METRICS_TOKEN=TOKEN,
                      GUNICORN_ACCESS_LOG="-").start(timeout=60)
    supply = Bodies(seed=12)
    distinct = [supply.next() for _ in range(DISTINCT)]
    bodies = (distinct + distinct[:DUPLICATES] + [b"{not json"] * BAD_JSON
              + [b'{"status": "delivered"}'] * UNKNOWN_KIND)
    try:
        # The distinct bodies first, then their repeats: a repeat racing its original could
        # be stored by either.
        statuses = post_all(server.port, distinct, CONNECTIONS)
        statuses += post_all(server.port, bodies[DISTINCT:], CONNECTIONS)
        assert sorted(statuses, key=str) == sorted(
            [200] * (DISTINCT + DUPLICATES) + [400] * BAD_JSON + [422] * UNKNOWN_KIND, key=str)
        yield server
    finally:
        problems = server.stop()
        assert not problems, problems


def test_counters_add_up_across_every_worker(receiver):
    status, _, text = scrape(receiver.port)
    assert status == 200
    found = samples(text)
    assert total(found, "receiver_callbacks_total", outcome="stored") == DISTINCT
    assert total(found, "receiver_callbacks_total", outcome="duplicate") == DUPLICATES
    assert total(found, "receiver_callbacks_total", outcome="rejected") == BAD_JSON + UNKNOWN_KIND
    # The traffic mixes Dispatch and Messages API callbacks (load.distinct_bodies).
    dispatch = total(found, "receiver_callbacks_total", api="dispatch")
    messages = total(found, "receiver_callbacks_total", api="messages")
    assert dispatch > 0 and messages > 0 and dispatch + messages == DISTINCT + DUPLICATES
    assert total(found, "receiver_rejections_total", reason="invalid_json") == BAD_JSON
    assert total(found, "receiver_rejections_total", reason="unknown_kind") == UNKNOWN_KIND
    posted = DISTINCT + DUPLICATES + BAD_JSON + UNKNOWN_KIND
    assert total(found, "receiver_signature_results_total", result="unsigned") == posted
    assert total(found, "receiver_request_duration_seconds_count") == posted
    # Every new callback's lag, by channel; the writer counted its batches: every callback
    # and rejection went through one, and each /healthz that came more than a second after
    # the last commit (a fresher commit already proves the file writable).
    assert total(found, "receiver_callback_lag_seconds_count") == DISTINCT
    assert {dict(pairs).get("channel") for (n, pairs) in found
            if n == "receiver_callback_lag_seconds_count"} >= {"sms", "whatsapp", "none"}
    health_checks = sum(1 for line in json_lines(receiver)
                        if line["logger"] == "gunicorn.access" and line["path"] == "/healthz")
    written = total(found, "receiver_writer_batch_size_sum")
    assert posted <= written <= posted + health_checks
    assert 0 < total(found, "receiver_writer_batch_size_count") <= written
    assert total(found, "receiver_database_size_bytes") > 0
    assert time.time() - total(found, "receiver_last_callback_timestamp_seconds") < 600

    # Many workers served the traffic (the JSON outcome lines name their process), and the
    # batches were counted by the writer, a process of its own.
    lines = json_lines(receiver)
    pids = {line["pid"] for line in lines if line.get("outcome") == "stored"}
    assert len(pids) >= 3, pids
    writers = {line["pid"] for line in lines if line["logger"] == "receiver.writer"}
    assert writers and not writers & pids, (writers, pids)


def test_promtool_accepts_the_exposition(receiver):
    _, _, text = scrape(receiver.port)
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""  # not even a naming hint


def test_metrics_needs_the_token(receiver):
    for token in (None, "wrong"):
        status, headers, text = scrape(receiver.port, token=token, request_id="no-token")
        assert status == 401
        assert headers["X-Request-ID"] == "no-token"
        assert "receiver_callbacks_total" not in text


def test_alert_rules_pass_promtool_and_their_unit_tests():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "5 rules found" in checked.stdout
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


# --- a real Prometheus ---------------------------------------------------------------------------


class Prometheus:
    """Debian's prometheus on a free port, its own config and storage under ``directory``."""

    def __init__(self, directory, target_port, token):
        self.port = free_port()
        self.directory = Path(directory)
        config = self.directory / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_CONFIG / "alerts.yml")],
            "scrape_configs": [{
                "job_name": "dispatch-receiver",
                "authorization": {"type": "Bearer", "credentials": token},
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }],
        }))
        self.log = open(self.directory / "prometheus.log", "wb")
        self.popen = subprocess.Popen(
            ["prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={self.directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        response = requests.get(url, timeout=5)
        response.raise_for_status()
        return response.json()["data"]

    def wait_for(self, predicate, what, timeout=60.0):
        """Poll ``predicate()`` until it returns a true value (returned); bounded."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.popen.returncode}\n"
                                     + self.output())
            try:
                last = predicate()
                if last:
                    return last
            except requests.RequestException as error:
                last = error
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})\n" + self.output())

    def output(self):
        return (self.directory / "prometheus.log").read_text(errors="replace")[-5000:]

    def stop(self):
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
        self.log.close()


def test_prometheus_scrapes_the_receiver_and_reads_the_counters(receiver, tmp_path):
    prometheus = Prometheus(tmp_path, receiver.port, TOKEN)
    try:
        def stored():
            result = prometheus.api(
                "query", query='sum(receiver_callbacks_total{outcome="stored"})')["result"]
            return result and float(result[0]["value"][1])

        assert prometheus.wait_for(stored, "the stored-callbacks counter") == DISTINCT
        rejected = prometheus.api("query", query='sum by (reason) (receiver_rejections_total)')
        assert {r["metric"]["reason"]: float(r["value"][1]) for r in rejected["result"]} == {
            "invalid_json": BAD_JSON, "unknown_kind": UNKNOWN_KIND}
        (target,) = prometheus.api("targets")["activeTargets"]
        assert target["health"] == "up", target

        # The shipped alert rules load and evaluate against the real series without error.
        def evaluated():
            rules = [rule for group in prometheus.api("rules")["groups"]
                     for rule in group["rules"]]
            return len(rules) == 5 and all(r["health"] == "ok" for r in rules) and rules
        rules = prometheus.wait_for(evaluated, "the alert rules evaluated")
        assert {r["name"] for r in rules} == {"ReceiverNoCallbacks", "ReceiverStorageErrors",
                                              "ReceiverSignatureFailures",
                                              "ReceiverCallbackLagHigh",
                                              "ReceiverProjectionBehind"}
        assert [r["name"] for r in rules if r["state"] == "firing"] == []
    finally:
        prometheus.stop()


# --- logs -------------------------------------------------------------------------------------------


def json_lines(server):
    """Every line gunicorn wrote since its start, parsed as JSON (fails on any other line)."""
    text = server.log_path.read_text(errors="replace")
    lines = text.split("\n===== start #1", 1)[1].splitlines()[1:]
    parsed = []
    for line in lines:
        if line.strip():
            try:
                parsed.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
    return parsed


def test_json_logs_give_one_line_per_callback_outcome(receiver):
    lines = json_lines(receiver)
    outcomes = [line for line in lines if "outcome" in line]
    by_outcome = {}
    for line in outcomes:
        by_outcome[line["outcome"]] = by_outcome.get(line["outcome"], 0) + 1
    assert by_outcome == {"stored": DISTINCT, "duplicate": DUPLICATES,
                          "rejected": BAD_JSON + UNKNOWN_KIND}
    for line in outcomes:
        assert set(line) >= {"time", "level", "request_id", "kind", "api", "outcome",
                             "latency_ms", "http_status"}, line
        assert ("callback_id" in line) == (line["outcome"] != "rejected"), line
        assert ("rejected_id" in line) == (line["outcome"] == "rejected"), line
        assert line["latency_ms"] > 0
    assert {line["reason"] for line in outcomes if line["outcome"] == "rejected"} == {
        "invalid_json", "unknown_kind"}
    assert {line["kind"] for line in outcomes if line["outcome"] == "stored"} == {
        "message_status", "final_report"}

    # gunicorn's access log: a JSON line per request, with the same request id.
    access = {line["request_id"]: line for line in lines if line["logger"] == "gunicorn.access"}
    for line in outcomes:
        entry = access[line["request_id"]]
        assert entry["status"] == line["http_status"]
        assert entry["path"] == "/webhooks/vonage"
        assert entry["message"] == "POST /webhooks/vonage HTTP/1.1"
        assert (entry["method"], entry["query"], entry["remote_addr"]) == ("POST", "", "127.0.0.1")
        assert entry["bytes"] > 0 and entry["duration_ms"] > 0 and entry["user_agent"], entry
    # and its error log.
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"]
               for line in lines)


def test_plain_text_logs_are_the_default(tmp_path):
    server = Gunicorn(tmp_path / "events.db", tmp_path / "gunicorn.log", workers=2,
                      GUNICORN_ACCESS_LOG="-").start(timeout=60)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("POST", "/webhooks/vonage?x=1", b"{not json",
                     {"Content-Type": "application/json", "X-Request-ID": "plain-1",
                      "User-Agent": "plain-test/1"})
        response = conn.getresponse()
        sent = len(response.read())
        assert response.status == 400
        assert response.getheader("X-Request-ID") == "plain-1"
        conn.close()
    finally:
        assert not server.stop()
    lines = server.output().split("\n===== start #1", 1)[1].splitlines()[1:]
    assert lines and not any(line.startswith("{") for line in lines), lines
    assert any("[INFO] Booting worker" in line for line in lines)
    # The access log's line: client, request line, status, bytes sent, milliseconds, user agent.
    access = [line for line in lines if "/webhooks/vonage?x=1" in line]
    assert len(access) == 1, lines
    assert re.fullmatch(r'127\.0\.0\.1 "POST /webhooks/vonage\?x=1 HTTP/1\.1" 400 (\d+) \d+ms '
                        r'"plain-test/1"', access[0]), access
    assert int(access[0].split(" ")[5]) == sent
    assert any("invalid_json" in line and "kept as rejected_callbacks/1" in line
               and "[request plain-1]" in line for line in lines), lines


def test_a_dead_workers_counts_are_kept(receiver):
    """Last in the module (it replaces a worker): a worker killed with everything it counted
    still counts, its replacement counts on top, and the master's child_exit hook is quiet."""
    victim = receiver.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    receiver.wait_workers([victim])
    found = samples(scrape(receiver.port)[2])
    assert total(found, "receiver_callbacks_total", outcome="stored") == DISTINCT
    supply = Bodies(seed=13)
    statuses = post_all(receiver.port, [supply.next() for _ in range(WORKERS)], 3)
    assert statuses == [200] * WORKERS
    found = samples(scrape(receiver.port)[2])
    assert total(found, "receiver_callbacks_total", outcome="stored") == DISTINCT + WORKERS
    assert "Traceback" not in receiver.output()
