"""Vonage's Reports API as a user meets it, for tests and benchmarks: report CSVs and zips in
Vonage's format (``/work/wt/shared/vonage/REPORTS.md``), the JSON of ``GET /v2/reports/records``,
and a real HTTP server on 127.0.0.1 answering that endpoint as the spec says (Basic auth, 24-hour
windows on ``date_received``, pages linked by ``_links.next``, scripted 429s and 5xx).
"""

import base64
import csv
import io
import json
import re
import threading
import time
import zipfile
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

ACCOUNT_ID = "abcd1234"
API_SECRET = "s3cr3t-for-tests"

# Column order of Vonage's outbound report CSVs (csv_messages_outbound, csv_sms_outbound).
COLUMNS = {
    "MESSAGES": ("account_id", "message_id", "client_ref", "direction", "from", "to", "provider",
                 "status", "error_code", "country", "country_name", "date_received",
                 "date_finalized", "latency", "total_price", "currency"),
    "SMS": ("account_id", "message_id", "client_ref", "direction", "from", "to", "network",
            "network_name", "country", "country_name", "status", "error_code",
            "error_code_description", "date_received", "date_finalized", "latency", "total_price",
            "currency"),
}


def vonage_time(moment):
    """Aware datetime -> Vonage's report text, '2019-06-28T15:30:00+0000'."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")


def record(message_id, date_received, *, product="MESSAGES", price="0.0085", currency="EUR",
           provider="whatsapp", status="delivered", **fields):
    """One outbound record as Vonage reports it (every value text, as in the CSV)."""
    received = date_received if isinstance(date_received, str) else vonage_time(date_received)
    row = {"account_id": ACCOUNT_ID, "message_id": message_id, "client_ref": "", "direction": "outbound",
           "from": "447700900000", "to": "447700900123", "status": status, "error_code": "",
           "country": "GB", "country_name": "United Kingdom", "date_received": received,
           "date_finalized": received, "latency": "1200", "total_price": price, "currency": currency}
    if product == "MESSAGES":
        row["provider"] = provider
    else:
        row.update(network="23415", network_name="Vodafone Limited", error_code_description="Delivered",
                   error_code="0")
    row.update(fields)
    return row


def report_name(product="MESSAGES", account_id=ACCOUNT_ID, day="20261101"):
    """The CSV's name inside a report zip: report_<PRODUCT>_<ACCOUNT_ID>_<yyyyMMdd>.csv."""
    return f"report_{product}_{account_id}_{day}.csv"


def write_csv(text_file, records, product="MESSAGES", *, delimiter=","):
    """Write a report CSV (header, then one line per record) to an open text file."""
    writer = csv.writer(text_file, delimiter=delimiter, lineterminator="\n")
    columns = COLUMNS[product]
    writer.writerow(columns)
    writer.writerows([r.get(c, "") for c in columns] for r in records)


def write_zip(path, records, product="MESSAGES", *, member=None, account_id=ACCOUNT_ID):
    """A report zip as Vonage's download gives it: one deflated CSV, written as ``records``
    (any iterable, consumed once) streams, so a million records take no memory."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(member or report_name(product, account_id), "w", force_zip64=True) as raw:
            with io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
                write_csv(text, records, product)
    return path


def records_answer(records, product="MESSAGES", *, date_start=None, date_end=None, next_href=None,
                   account_id=ACCOUNT_ID, base="https://api.nexmo.com"):
    """The JSON text of GET /v2/reports/records. ``total_price`` is a JSON number, as the spec
    types it (so a reader must not let it through a binary float)."""
    query = {"account_id": account_id, "product": product, "direction": "outbound"}
    if date_start:
        query.update(date_start=date_start, date_end=date_end)
    answer = {
        "_links": {"self": {"href": f"{base}/v2/reports/records?{urlencode(query)}"}},
        "request_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab", "request_status": "SUCCESS",
        "received_at": "2026-12-01T00:00:00+0000", "product": product, "direction": "outbound",
        "account_id": account_id, "items_count": len(records), "records": list(records),
    }
    if next_href:
        answer["_links"]["next"] = {"href": next_href}
    text = json.dumps(answer, indent=1)
    # Prices as bare numbers: "total_price": "0.0085" -> "total_price": 0.0085
    return re.sub(r'"total_price": "([0-9.]+)"', r'"total_price": \1', text)


# --- the endpoint, served ------------------------------------------------------------------


def _parse(text):
    return datetime.strptime(text.replace("Z", "+0000").replace("+00:00", "+0000"),
                             "%Y-%m-%dT%H:%M:%S%z")


class ReportsAPI:
    """GET /v2/reports/records on 127.0.0.1, answering from ``records`` as the spec says.

    ``page_size`` records per answer, the rest behind ``_links.next`` (a ``cursor``);
    ``failures`` is a list of statuses answered, in order, before the real answers
    (429 with ``Retry-After: 1``). Every request is logged in ``requests`` as
    (monotonic time, path, status). Use as a context manager.
    """

    def __init__(self, records, *, product="MESSAGES", api_key=ACCOUNT_ID, api_secret=API_SECRET,
                 page_size=1000, failures=()):
        self.records, self.product, self.page_size = records, product, page_size
        self.failures = list(failures)
        self.expected = "Basic " + base64.b64encode(f"{api_key}:{api_secret}".encode()).decode()
        self.requests = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                api._answer(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _send(self, handler, status, body, headers=()):
        with self.lock:
            self.requests.append((time.monotonic(), handler.path, status))
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, handler):
        url = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if handler.headers.get("Authorization") != self.expected:
            return self._send(handler, 401, {
                "type": "https://developer.nexmo.com/api-errors#unauthorized", "title": "Unauthorized",
                "detail": "You did not provide correct credentials.", "instance": "f94b4e56"})
        with self.lock:
            failure = self.failures.pop(0) if self.failures else None
        if failure == 429:
            return self._send(handler, 429, {"title": "Too Many Requests"}, [("Retry-After", "1")])
        if failure:
            return self._send(handler, failure, {"title": "Internal Error"})
        if url.path != "/v2/reports/records" or query.get("product") != self.product \
                or query.get("direction") != "outbound" or query.get("account_id") != ACCOUNT_ID:
            return self._send(handler, 422, {"title": "Unprocessable entity", "detail": handler.path})
        if "id" in query:
            wanted = query["id"].split(",")
            found = [r for r in self.records if r["message_id"] in wanted]
            answer = json.loads(records_answer(found, self.product, base=self.url))
            answer["ids_not_found"] = ",".join(sorted(set(wanted) - {r["message_id"] for r in found}))
            return self._send(handler, 200, answer)
        start, end = _parse(query["date_start"]), _parse(query["date_end"])
        if not timedelta(0) < end - start <= timedelta(hours=24):
            return self._send(handler, 422, {"title": "Invalid date range"})
        window = [r for r in self.records if start <= _parse(r["date_received"]) < end]
        cursor = int(query.get("cursor", 0))
        page = window[cursor:cursor + self.page_size]
        next_href = None
        if cursor + self.page_size < len(window):
            next_href = f"{self.url}/v2/reports/records?{urlencode({**query, 'cursor': cursor + self.page_size})}"
        self._send(handler, 200, records_answer(page, self.product, date_start=query["date_start"],
                                                 date_end=query["date_end"], next_href=next_href,
                                                 base=self.url))
