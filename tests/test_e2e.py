"""End to end: the Procfile's real processes (gunicorn + Datasette) on 127.0.0.1.

Callbacks go in over HTTP to the receiver exactly as Vonage would post them, and come out
through Datasette's JSON API, which is how operators read them. Nothing is mocked.
"""

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from payloads import (
    SEED_FINAL_REPORT,
    SEED_STATUS,
    V1_ADDRESSES,
    dumps,
    failover_workflow,
    final_report,
    messages_failover,
    new_uuid,
    status,
    v1_status,
)
from testing.processes import Procfile, free_port, receiver_environment

START_TIMEOUT_S = 30
HTTP_TIMEOUT_S = 15
MIB = 1024 * 1024
JSON = {"Content-Type": "application/json", "User-Agent": "Vonage-e2e-test/1.0"}



@dataclass
class Stack:
    procs: Procfile
    db_path: Path
    db_name: str
    web_port: int
    datasette_port: int
    http: requests.Session

    @property
    def web(self):
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def datasette(self):
        return f"http://127.0.0.1:{self.datasette_port}"

    # --- the receiver -------------------------------------------------------------------
    def post(self, path, body, headers=JSON):
        return self.http.post(self.web + path, data=body, headers=headers,
                              timeout=HTTP_TIMEOUT_S)

    def deliver(self, path, body):
        """Post ``body`` (bytes) as Vonage does and insist on the 200 JSON acknowledgement."""
        response = self.post(path, body)
        assert response.status_code == 200, (path, response.status_code, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        return response.json()

    # --- Datasette ----------------------------------------------------------------------
    def ds_get(self, path, params=None):
        return self.http.get(self.datasette + path, params=params, timeout=HTTP_TIMEOUT_S)

    def caught_up(self, timeout_s=10.0):
        """Wait until the derived rows (messages, dispatches, workflows) include every stored
        callback: a 200 promises the events; the writer derives the rest within tens of ms."""
        deadline = time.monotonic() + timeout_s
        while True:
            health = self.http.get(self.web + "/healthz", timeout=HTTP_TIMEOUT_S).json()
            if health.get("projection_behind") == 0 or time.monotonic() > deadline:
                return health
            time.sleep(0.02)

    def rows(self, table, **filters):
        """Rows of ``table`` through Datasette's table JSON API, with column filters, once the
        derived rows have caught up with what was posted."""
        self.caught_up()
        response = self.ds_get(f"/{self.db_name}/{table}.json",
                               {"_shape": "array", "_size": "max", **filters})
        assert response.status_code == 200, (table, filters, response.status_code, response.text)
        return response.json()

    def one(self, table, **filters):
        found = self.rows(table, **filters)
        assert len(found) == 1, (table, filters, found)
        return found[0]

    def sql(self, query, **params):
        """Rows of a read-only SQL query through Datasette's database JSON API."""
        response = self.ds_get(f"/{self.db_name}.json",
                               {"sql": query, "_shape": "array", **params})
        assert response.status_code == 200, (query, response.status_code, response.text)
        return response.json()

    def count(self, table):
        return self.sql(f"select count(*) as n from [{table}]")[0]["n"]

    def callback_body(self, callback_id):
        return self.one("callbacks", id=str(callback_id))["body"].encode("utf-8")


def _environment(tmp):
    web_port = free_port()
    datasette_port = free_port()
    while datasette_port == web_port:  # pragma: no cover - the kernel rarely repeats itself
        datasette_port = free_port()
    # The Procfile's web line binds ${HOST:-0.0.0.0}; tests stay on the loopback (HOST).
    env = receiver_environment(tmp / "e2e-events.db", web_port, DATASETTE_PORT=datasette_port,
                               DATASETTE_HOST="127.0.0.1", GUNICORN_ACCESS_LOG="-")
    return env, web_port, datasette_port


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    env, web_port, datasette_port = _environment(tmp)
    procs = Procfile(env, log_dir=tmp)
    assert set(procs.commands) == {"web", "datasette"}, procs.commands
    procs.start()
    http = requests.Session()
    try:
        not_ready = None
        try:
            procs.wait_until(
                {
                    "receiver /healthz": f"http://127.0.0.1:{web_port}/healthz",
                    "datasette /-/versions.json":
                        f"http://127.0.0.1:{datasette_port}/-/versions.json",
                },
                timeout=START_TIMEOUT_S,
            )
        except RuntimeError as error:
            not_ready = str(error)
        if not_ready is not None:
            pytest.fail(f"the Procfile's processes did not come up:\n{not_ready}", pytrace=False)
        yield Stack(procs, Path(env["RECEIVER_DB"]), "e2e-events", web_port, datasette_port, http)
    finally:
        http.close()
        problems = procs.stop(grace=5.0)
        if problems:
            print(procs.output())
            pytest.fail("teardown left processes behind: " + "; ".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def print_process_output_on_failure(request, stack):
    """A failing test shows what gunicorn and Datasette logged (as its teardown output)."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        print(stack.procs.output(tail=20_000))


# --- start-up --------------------------------------------------------------------------------


def test_web_process_logs_its_settings_and_both_serve_the_same_file(stack):
    web_log = stack.procs.processes["web"].output()
    assert f"setting RECEIVER_DB={stack.db_path}" in web_log
    assert f"setting PORT={stack.web_port}" in web_log
    assert f"setting DATASETTE_PORT={stack.datasette_port}" in web_log
    assert f"setting RECEIVER_MAX_BODY_BYTES={MIB}" in web_log
    assert "setting RECEIVER_SYNCHRONOUS=FULL" in web_log
    assert f"dispatch-receiver: database {stack.db_path} ready" in web_log
    assert f"Listening at: http://127.0.0.1:{stack.web_port}" in web_log

    health = stack.http.get(stack.web + "/healthz", timeout=HTTP_TIMEOUT_S)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["database"] == "writable"

    databases = stack.ds_get("/-/databases.json").json()
    served = {db["name"]: db for db in databases}
    assert stack.db_name in served, databases
    assert Path(served[stack.db_name]["path"]).resolve() == stack.db_path.resolve()
    assert served[stack.db_name]["is_mutable"] is True


# --- callbacks in over HTTP, out through Datasette -----------------------------------------


def test_seed_examples_are_stored_and_browsable(stack):
    status_bytes, report_bytes = dumps(SEED_STATUS), dumps(SEED_FINAL_REPORT)

    ack = stack.deliver("/webhooks/message-status", status_bytes)
    assert ack["status"] == "stored" and ack["kind"] == "message_status"
    assert ack["delivery_count"] == 1
    report_ack = stack.deliver("/webhooks/final-report", report_bytes)
    assert report_ack["status"] == "stored" and report_ack["kind"] == "final_report"

    uuid = SEED_STATUS["message_uuid"]
    event = stack.one("status_events", message_uuid=uuid)
    assert event["callback_id"] == ack["callback_id"]
    assert event["dispatch_uuid"] == SEED_STATUS["_links"]["workflow"]["dispatch_uuid"]
    assert event["status"] == "delivered"
    assert event["timestamp"] == "2020-01-01T14:00:00.000000Z"
    assert (event["to_type"], event["to_number"]) == ("sms", "447700900000")
    assert (event["error_code"], event["error_reason"]) == (1300, "Not part of the provider network")
    assert (event["price"], event["price_nano"], event["currency"]) == ("0.0333", 33_300_000, "EUR")

    report = stack.one("final_reports", dispatch_uuid=SEED_FINAL_REPORT["dispatch_uuid"])
    assert report["callback_id"] == report_ack["callback_id"]
    assert (report["template"], report["status"]) == ("failover", "completed")
    assert (report["price"], report["price_nano"], report["currency"]) == ("0.02", 20_000_000, "EUR")
    assert report["message_count"] == 1
    item = stack.one("final_report_messages", final_report_id=str(report["id"]))
    assert (item["position"], item["message_uuid"], item["channel"], item["status"]) == (
        1, uuid, "viber_service_msg", "submitted")

    message = stack.one("messages", message_uuid=uuid)
    assert message["status"] == "delivered"  # outranks the report's "submitted"
    assert message["price"] == "0.0333"

    ids = f"{ack['callback_id']},{report_ack['callback_id']}"
    callbacks = {c["id"]: c for c in stack.rows("callbacks", id__in=ids)}
    assert callbacks[ack["callback_id"]]["body"].encode("utf-8") == status_bytes
    assert callbacks[ack["callback_id"]]["kind"] == "message_status"
    assert callbacks[ack["callback_id"]]["endpoint"] == "/webhooks/message-status"
    assert callbacks[report_ack["callback_id"]]["body"].encode("utf-8") == report_bytes
    assert callbacks[report_ack["callback_id"]]["kind"] == "final_report"
    assert callbacks[report_ack["callback_id"]]["endpoint"] == "/webhooks/final-report"
    assert callbacks[ack["callback_id"]]["user_agent"] == JSON["User-Agent"]
    assert callbacks[ack["callback_id"]]["remote_addr"] == "127.0.0.1"
    # No VONAGE_SIGNATURE_SECRET in this environment: stored, and marked as not verified.
    assert callbacks[ack["callback_id"]]["signature_status"] == "unsigned"


def test_failover_workflow_on_one_url_in_real_arrival_order(stack):
    dispatch, wa, sms, bodies = failover_workflow()
    # Real traces: everything at the one Status URL; the late WhatsApp leg's `read` even
    # arrives before its `delivered`.
    wa_delivered, wa_read = bodies[4], bodies[5]
    assert (wa_delivered["status"], wa_read["status"]) == ("delivered", "read")
    order = bodies[:4] + [wa_read, wa_delivered]
    posted = []
    for body in order:
        raw = dumps(body)
        ack = stack.deliver("/webhooks/vonage", raw)
        assert ack["status"] == "stored", ack
        posted.append((ack["callback_id"], raw, ack["kind"]))

    events = stack.rows("status_events", dispatch_uuid=dispatch, _sort="id")
    assert [(e["message_uuid"], e["channel"], e["status"]) for e in events] == [
        (wa, "whatsapp", "submitted"),
        (sms, "sms", "submitted"),
        (sms, "sms", "delivered"),
        (wa, "whatsapp", "read"),
        (wa, "whatsapp", "delivered"),
    ]

    whatsapp = stack.one("messages", message_uuid=wa)
    assert (whatsapp["status"], whatsapp["status_rank"]) == ("read", 3)
    assert whatsapp["dispatch_uuid"] == dispatch
    assert whatsapp["workflow_position"] == 1
    assert whatsapp["read_at"] == "2026-11-01T10:13:00.000000Z"
    assert whatsapp["delivered_at"] == "2026-11-01T10:12:00.000000Z"
    assert whatsapp["event_count"] == 3
    assert (whatsapp["price"], whatsapp["currency"]) == ("0.0020", "EUR")
    assert whatsapp["final_report_status"] == "submitted"
    text = stack.one("messages", message_uuid=sms)
    assert (text["status"], text["workflow_position"], text["price"]) == ("delivered", 2, "0.0333")

    row = stack.one("dispatches", dispatch_uuid=dispatch)
    assert row["channels"] == "whatsapp,sms"
    assert row["messages_price"] == "0.0353"
    assert row["messages_price_nano"] == 35_300_000
    assert row["final_status"] == "completed"
    assert row["final_price"] == "0.0353"
    assert row["final_report_count"] == 1
    assert row["message_count"] == 2
    # metadata.yml: "The channel whose message was delivered (or read) first" - the SMS
    # (10:10:03), not the WhatsApp leg whose delivery came late (10:12).
    assert row["delivered_channel"] == "sms"

    for callback_id, raw, kind in posted:
        callback = stack.one("callbacks", id=str(callback_id))
        assert callback["body"].encode("utf-8") == raw
        assert callback["kind"] == kind
        assert callback["endpoint"] == "/webhooks/vonage"
        assert callback["delivery_count"] == 1


def test_messages_v1_beside_dispatch_on_one_url(stack):
    """A migration half done: Dispatch workflows and Messages v1 failover (both workflow
    spellings, legs out of order, every channel) posted to /webhooks/vonage, then read back
    through Datasette in status_events, messages, workflows and billing_lines."""
    d, _, _, dispatch_bodies = failover_workflow()
    spec_id, spec_legs, spec_bodies = messages_failover(("rcs", "whatsapp", "sms"))
    java_id, java_legs, java_bodies = messages_failover(("whatsapp", "sms"), spelling="java")
    singles = [v1_status(channel=channel, price="0.0100" if channel != "rcs" else None)
               for channel in V1_ADDRESSES]
    v1_bodies = list(reversed(spec_bodies)) + java_bodies + singles  # the legs out of order
    for body in dispatch_bodies + v1_bodies:
        assert stack.deliver("/webhooks/vonage", dumps(body))["status"] == "stored"

    for body in v1_bodies:
        events = stack.rows("status_events", message_uuid=body["message_uuid"], status=body["status"])
        assert [e["api"] for e in events] == ["messages"], body
    workflows = {w["workflow_id"]: w for w in stack.rows("workflows", workflow_id__in=f"{d},{spec_id},{java_id}")}
    assert {k: (w["api"], w["outcome"], w["channels"], w["delivered_channel"]) for k, w in workflows.items()} == {
        d: ("dispatch", "delivered", "whatsapp,sms", "sms"),
        spec_id: ("messages", "delivered", "rcs,whatsapp,sms", "sms"),
        java_id: ("messages", "delivered", "whatsapp,sms", "sms"),
    }
    legs = stack.rows("messages", workflow_id=spec_id, _sort="workflow_position")
    assert [m["message_uuid"] for m in legs] == spec_legs
    lines = stack.rows("billing_lines", workflow_id=spec_id)
    assert [(line["api"], line["channel"], line["charged_status"], line["price"]) for line in lines] == [
        ("messages", "sms", "submitted", "0.0333")]
    # Browsable next to Dispatch traffic: the workflows page facets by API.
    page = stack.ds_get(f"/{stack.db_name}/workflows", {"_facet": "api"})
    assert page.status_code == 200 and "messages" in page.text and "dispatch" in page.text


def test_spec_typo_and_odd_shapes_are_accepted_and_kept_verbatim(stack):
    dispatch, viber, sms = new_uuid(), new_uuid(), new_uuid()
    rejected = status(viber, dispatch, "rejected", channel="viber_service_msg", link="workflow",
                      timestamp="2026-11-02T09:00:00.000Z", error=(1300, "Not part of the provider network"))
    # A stray tab in a number (seen in a real trace), an unknown field Vonage may add,
    # non-ASCII text, and pretty-printed JSON: all must come back byte for byte.
    sent = status(sms, dispatch, "delivered", channel="sms", timestamp="2026-11-02T09:01:00.000Z",
                  price="0.0333", client_ref="Grüße ✓", brand_new_field={"nested": [1, 2.50]})
    sent["from"]["number"] = "44770\t0900000"
    report = final_report(dispatch, [(viber, "viber_sevice_msg", "rejected", "0"),
                                     (sms, "sms", "delivered", "0.0333")],
                          price="0.0333", timestamp="2026-11-02T09:01:05.000Z")
    rejected_raw = dumps(rejected)
    sent_raw = json.dumps(sent, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
    report_raw = dumps(report)

    stack.deliver("/webhooks/message-status", rejected_raw)
    sent_ack = stack.deliver("/webhooks/message-status", sent_raw)
    # The shape decides the kind, whatever seed URL it was posted to.
    report_ack = stack.deliver("/webhooks/message-status", report_raw)
    assert report_ack["kind"] == "final_report"

    items = stack.rows("final_report_messages", dispatch_uuid=dispatch, _sort="position")
    assert [(i["position"], i["message_uuid"], i["channel"]) for i in items] == [
        (1, viber, "viber_service_msg"), (2, sms, "sms")]
    assert stack.rows("final_report_messages", channel="viber_sevice_msg") == []

    stored_report = stack.one("callbacks", id=str(report_ack["callback_id"]))
    assert stored_report["body"].encode("utf-8") == report_raw
    assert '"viber_sevice_msg"' in stored_report["body"]
    assert stored_report["kind"] == "final_report"
    assert stack.callback_body(sent_ack["callback_id"]) == sent_raw

    viber_event = stack.one("status_events", message_uuid=viber)
    assert viber_event["dispatch_uuid"] == dispatch  # from the spec's _links.workflow
    assert (viber_event["from_type"], viber_event["from_id"]) == ("viber_service_msg", "12345")
    sms_event = stack.one("status_events", message_uuid=sms)
    assert sms_event["from_number"] == "44770\t0900000"

    viber_message = stack.one("messages", message_uuid=viber)
    assert viber_message["status"] == "rejected"
    assert viber_message["error_code"] == 1300
    row = stack.one("dispatches", dispatch_uuid=dispatch)
    assert row["channels"] == "viber_service_msg,sms"
    assert row["delivered_channel"] == "sms"
    assert row["messages_price"] == "0.0333"


def test_duplicate_delivery_is_acknowledged_and_counted(stack):
    message = new_uuid()
    raw = dumps(status(message, new_uuid(), "delivered", price="0.0020"))
    first = stack.deliver("/webhooks/vonage", raw)
    again = stack.deliver("/webhooks/vonage", raw)
    assert (first["status"], first["delivery_count"]) == ("stored", 1)
    assert (again["status"], again["delivery_count"]) == ("duplicate", 2)
    assert again["callback_id"] == first["callback_id"]

    callback = stack.one("callbacks", id=str(first["callback_id"]))
    assert callback["delivery_count"] == 2
    assert callback["body"].encode("utf-8") == raw
    assert callback["last_received_at"] >= callback["received_at"]
    assert len(stack.rows("status_events", message_uuid=message)) == 1
    assert stack.one("messages", message_uuid=message)["event_count"] == 1


# --- rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, reason",
    [
        pytest.param(b'{"message_uuid": "x", "status": "delivered",', "invalid_json", id="truncated-json"),
        pytest.param(b"\xff\xfe not utf-8 {}", "invalid_utf8", id="not-utf8"),
    ],
)
def test_bad_body_gets_400_json_and_is_kept_verbatim(stack, raw, reason):
    before = stack.count("callbacks")
    response = stack.post("/webhooks/message-status", raw)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    answer = response.json()
    assert (answer["code"], answer["reason"]) == (400, reason)
    assert answer["errors"]["json"]["_body"]

    kept = stack.one("rejected_callbacks", id=str(answer["rejected_id"]))
    assert (kept["http_status"], kept["reason"]) == (400, reason)
    assert kept["endpoint"] == "/webhooks/message-status"
    assert kept["body_bytes"] == len(raw)
    assert kept["body_truncated"] == 0
    assert json.loads(kept["error"])["reason"] == reason
    # The stored body is the bytes as received: text when it is UTF-8, else a BLOB,
    # which Datasette's JSON gives as base64.
    verbatim = stack.sql("select hex(body) as h from rejected_callbacks where id = :id",
                         id=answer["rejected_id"])[0]["h"]
    assert bytes.fromhex(verbatim) == raw
    if reason == "invalid_json":
        assert kept["body"] == raw.decode("utf-8")
    assert stack.count("callbacks") == before


def test_body_over_one_mib_gets_413(stack):
    raw = b'{"message_uuid": "' + b"a" * MIB + b'"}'
    response = stack.post("/webhooks/vonage", raw)
    assert response.status_code == 413, response.text[:500]
    answer = response.json()
    assert answer["reason"] == "body_too_large"

    kept = stack.sql(
        "select http_status, reason, body_bytes, body_truncated, length(cast(body as blob)) as kept "
        "from rejected_callbacks where id = :id", id=answer["rejected_id"])[0]
    assert kept == {"http_status": 413, "reason": "body_too_large", "body_bytes": len(raw),
                    "body_truncated": 1, "kept": MIB}
    # The limit is 1 MiB exactly: a body of that size is still read and judged.
    at_limit = stack.post("/webhooks/vonage", b" " * MIB)
    assert at_limit.status_code == 400, at_limit.text[:500]
    assert at_limit.json()["reason"] == "invalid_json"


# --- load ---------------------------------------------------------------------------------------


def test_concurrent_deliveries_are_all_stored(stack):
    dispatch = new_uuid()
    bodies = [
        dumps(status(new_uuid(), dispatch, "delivered", price="0.0001",
                     timestamp=f"2026-11-03T10:00:{i // 10:02d}.{i % 10}00Z"))
        for i in range(200)
    ]
    threads_n = 16
    barrier = threading.Barrier(threads_n)
    results, errors = [], []
    lock = threading.Lock()

    def worker(chunk):
        with requests.Session() as session:
            barrier.wait(timeout=30)
            for raw in chunk:
                try:
                    response = session.post(stack.web + "/webhooks/vonage", data=raw,
                                            headers=JSON, timeout=HTTP_TIMEOUT_S)
                    outcome = (response.status_code, response.text)
                except requests.RequestException as error:
                    outcome = (None, repr(error))
                with lock:
                    (results if outcome[0] == 200 else errors).append(outcome)

    threads = [threading.Thread(target=worker, args=(bodies[i::threads_n],)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a poster hung"
    assert errors == []
    assert len(results) == 200
    assert all(json.loads(text)["status"] == "stored" for _, text in results)

    table = stack.ds_get(f"/{stack.db_name}/status_events.json",
                         {"dispatch_uuid": dispatch, "_size": "1"}).json()
    assert table["filtered_table_rows_count"] == 200
    counted = stack.sql("select count(*) as n, count(distinct message_uuid) as m, "
                        "sum(price_nano) as nano from status_events where dispatch_uuid = :d",
                        d=dispatch)[0]
    assert counted == {"n": 200, "m": 200, "nano": 200 * 100_000}
    row = stack.one("dispatches", dispatch_uuid=dispatch)
    assert (row["message_count"], row["messages_price"]) == (200, "0.02")
    for process in stack.procs.processes.values():
        assert "database is locked" not in process.output()


# --- Datasette ------------------------------------------------------------------------------


def test_datasette_is_read_only(stack):
    tables = ("callbacks", "status_events", "receiver_health")
    before = {table: stack.count(table) for table in tables}
    row = json.dumps({"row": {"kind": "final_report", "sha256": "x", "body": "{}",
                              "received_at": "x", "last_received_at": "x"}})
    db = f"/{stack.db_name}"
    write_attempts = [
        ("POST", f"{db}/-/create", {"json": {"table": "injected", "row": {"id": 1}}}),
        ("POST", f"{db}/callbacks/-/insert", {"data": row, "headers": JSON}),
        ("POST", f"{db}/callbacks/-/upsert", {"data": row, "headers": JSON}),
        ("POST", f"{db}/callbacks/1/-/delete", {}),
        ("POST", f"{db}/callbacks/-/drop", {"json": {"confirm": True}}),
        ("POST", db, {"data": {"sql": "delete from callbacks"}}),
        ("GET", f"{db}.json",
         {"params": {"sql": "insert into receiver_health (id, checked_at) values (2, 'x')"}}),
        ("GET", f"{db}.json", {"params": {"sql": "delete from callbacks"}}),
        ("GET", f"{db}.json", {"params": {"sql": "with x as (select 1) delete from status_events"}}),
        ("GET", f"{db}.json", {"params": {"sql": "select 1; delete from callbacks"}}),
    ]
    for method, path, kwargs in write_attempts:
        response = stack.http.request(method, stack.datasette + path, timeout=HTTP_TIMEOUT_S, **kwargs)
        assert response.status_code >= 400, (method, path, response.status_code, response.text[:300])
    assert {table: stack.count(table) for table in tables} == before
    assert stack.sql("select count(*) as n from sqlite_master where name = 'injected'") == [{"n": 0}]
    # ...while the receiver keeps writing to the same file.
    assert stack.http.get(stack.web + "/healthz", timeout=HTTP_TIMEOUT_S).status_code == 200


def test_datasette_applies_the_metadata_to_the_e2e_database(stack):
    db = stack.db_name
    html = stack.ds_get(f"/{db}/messages")
    assert html.status_code == 200
    assert "One row per message" in html.text

    database_page = stack.ds_get(f"/{db}")
    assert "The receiver&#39;s event store" in database_page.text or \
        "The receiver's event store" in database_page.text

    metadata = stack.ds_get("/-/metadata.json").json()
    tables = metadata["databases"][db]["tables"]
    assert tables["messages"]["description"].startswith("One row per message")
    assert tables["callbacks"]["columns"]["body"] == "The request body exactly as received."

    # Table settings from the metadata: default sort and facets.
    messages = stack.ds_get(f"/{db}/messages.json").json()
    assert messages["human_description_en"] == "sorted by last_seen_at descending"
    assert "order by last_seen_at desc" in messages["query"]["sql"]
    assert set(messages["facet_results"]) == {"status", "channel", "error_code", "currency"}

    listed = {t["name"]: t for t in stack.ds_get(f"/{db}.json").json()["tables"]}
    assert listed["receiver_health"]["hidden"] is True
    assert listed["callbacks"]["hidden"] is False
