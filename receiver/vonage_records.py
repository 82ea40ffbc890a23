"""Vonage's own records of what it sent and billed (its Reports API), imported into
``vonage_records`` so they can be reconciled with the callbacks we received.

Three shapes come in, all through ``import_file``:

- the zip of an asynchronous report, holding one ``report_<PRODUCT>_<ACCOUNT_ID>_<yyyyMMdd>.csv``;
- that CSV on its own;
- the JSON answer of the synchronous ``GET /v2/reports/records``.

``fetch`` calls that endpoint itself and imports the pages it gets the same way.

One row per ``message_id``: the latest import of a message wins and its ``import_id`` says which
import that was; importing the same bytes again changes nothing. A file's rows are read, checked
and staged in a temporary table first, then published in one short write transaction, so a bad
file imports nothing (the error names the file, the line and the problem) and the receiver is
kept waiting for the database's write lock only while the rows are copied, not while the file
is read.
Prices are kept exactly (decimal text and integer nano units, ``receiver/money.py``).

The range an import covers (``date_start`` inclusive, ``date_end`` exclusive, on
``date_received``) is, in this order: the ``start``/``end`` the user gives; the JSON's self
link's ``date_start``/``date_end``; else the whole UTC days the rows' ``date_received`` span.
"""

import base64
import csv
import hashlib
import io
import json
import operator
import os
import re
import time
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

from . import money, store
from .schemas import channel_name, format_timestamp, parse_timestamp

PRODUCTS = ("MESSAGES", "SMS")

# The CSV columns each product must have (REPORTS.md: csv_messages_outbound, csv_sms_outbound);
# the others are read when present.
REQUIRED = {
    "MESSAGES": ("message_id", "direction", "provider", "status", "date_received", "total_price",
                 "currency"),
    "SMS": ("message_id", "direction", "status", "date_received", "total_price", "currency"),
}

# vonage_records text columns copied from a record as they are, and the record field each
# comes from (an empty field is NULL).
TEXT_FIELDS = {
    "account_id": "account_id", "client_ref": "client_ref", "direction": "direction",
    "from_id": "from", "to_id": "to", "provider": "provider", "status": "status",
    "error_code": "error_code", "error_code_description": "error_code_description",
    "country": "country", "country_name": "country_name", "network": "network",
    "network_name": "network_name",
}
# The record fields read, in all.
RECORD_FIELDS = ("message_id", *TEXT_FIELDS.values(), "date_received", "date_finalized", "latency",
                 "total_price", "currency")

# One tuple per record, in this order; '' becomes NULL in SQL (cheaper than in Python), and
# latency's text becomes an integer by the column's affinity.
COLUMNS = ("message_id", "import_id", "product", *TEXT_FIELDS, "date_finalized", "channel",
           "date_received", "latency", "price", "price_nano", "currency")
_PLACES = ["?", "?", "?", *["NULLIF(?, '')"] * len(TEXT_FIELDS), "?", "?", "?", "NULLIF(?, '')",
           "?", "?", "NULLIF(?, '')"]
_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "message_id")
# A file's rows are staged first (a message_id twice in one file: its last row), then
# published in message_id order, the latest import of a message winning.
STAGING_TABLE = (
    f"CREATE TEMP TABLE IF NOT EXISTS staged_records (message_id TEXT PRIMARY KEY, "
    f"{', '.join(COLUMNS[1:])})"
)
STAGE = (
    f"INSERT INTO temp.staged_records ({', '.join(COLUMNS)}) VALUES ({', '.join(_PLACES)}) "
    f"ON CONFLICT (message_id) DO UPDATE SET {_UPDATES}"
)
PUBLISH = (
    f"INSERT INTO main.vonage_records ({', '.join(COLUMNS)}) "
    f"SELECT {', '.join(':import_id' if c == 'import_id' else c for c in COLUMNS)} "
    f"FROM temp.staged_records WHERE true ORDER BY message_id "
    f"ON CONFLICT (message_id) DO UPDATE SET {_UPDATES}"
)
# Vonage's usual date shape, UTC: 2019-06-28T15:30:00+0000 (days are checked once each).
UTC_SHAPE = re.compile(r"(\d{4}-[01]\d-[0-3]\d)T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\+0000|Z)\Z")

# A MESSAGES record's provider spelt otherwise than any API names its channel; every name then
# goes through schemas.channel_name, the one name our tables use.
PROVIDER_CHANNELS = {"viber": "viber_service"}

REPORT_NAME = re.compile(r"report_([A-Z][A-Z-]*)_([^_/]*)_(\d{8})\.csv\Z")
CHUNK = 20_000  # rows per executemany
CURRENCY = re.compile(r"[A-Z]{3}\Z")  # ISO 4217, as Vonage writes it: amounts group by it
BULK_CACHE_KIB = 64 * 1024
ONE_DAY = timedelta(days=1)


class RecordsError(ValueError):
    """A file or answer that cannot be imported, said in one line (the CLI exits 1 with it)."""


@dataclass
class Imported:
    """What one import did: its vonage_record_imports id, the records read, the range covered;
    ``already`` when the same bytes had been imported before (then nothing changed)."""

    import_id: int
    rows: int
    date_start: str
    date_end: str
    product: str
    already: bool = False
    not_found: tuple = ()  # ids a fetch by id asked for that Vonage has no record of


# --- dates ---------------------------------------------------------------------------------


def parse_moment(text, *, end=False):
    """'2026-11-01' or an ISO 8601 date-time -> aware UTC datetime. A date as an end means the
    end of that day (so ``--to 2026-11-30`` includes the 30th); a date-time is taken as is."""
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        moment = parse_timestamp(text)
        if moment is None:
            raise RecordsError(f"{text!r} is not a date (2026-11-01) or an ISO 8601 date-time") from None
        return moment
    return day + ONE_DAY if end else day


def _vonage_time(text):
    """A record's date ('2019-06-28T15:30:00+0000', '...Z', other offsets) -> the store's
    UTC text, or None when it is not a date-time."""
    moment = parse_timestamp(text)
    return None if moment is None else format_timestamp(moment)


def _is_day(text, days):
    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        return False
    days.add(text)
    return True


def _day_start(stamp):
    return stamp[:10] + "T00:00:00.000000Z"


def _next_day(stamp):
    day = datetime.strptime(stamp[:10], "%Y-%m-%d") + ONE_DAY
    return day.strftime("%Y-%m-%d") + "T00:00:00.000000Z"


# --- reading -------------------------------------------------------------------------------


class _Counted(io.RawIOBase):
    """A binary stream that reports the bytes read through it (for a progress bar by bytes)."""

    def __init__(self, raw, progress):
        self.raw, self.progress = raw, progress

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.raw.read(len(buffer))
        buffer[:len(data)] = data
        if self.progress and data:
            self.progress(len(data))
        return len(data)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _first_bad_utf8_line(opener):
    """The number of the first line that is not UTF-8, for the error message."""
    with opener() as raw:
        for number, line in enumerate(raw, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _product_from_header(header):
    if "provider" in header:
        return "MESSAGES"
    if "network" in header or "error_code_description" in header:
        return "SMS"
    return None


def _row_converter(name, header, product, job, where):
    """A function turning one CSV row (a list of strings) into a vonage_records tuple.

    Built once per file from the header, so the per-row work is indexing and a few string
    checks; a price or provider seen before is converted once. With a known range, a row
    outside it is an error."""
    import_id = job.id
    start = end = None
    if job.start is not None:
        start, end = format_timestamp(job.start), format_timestamp(job.end)
    width = len(header)
    index = {column: position for position, column in enumerate(header)}
    # A column the file lacks reads the '' appended to each row (at position `width`).
    pick = operator.itemgetter(*(index.get(field, width) for field in TEXT_FIELDS.values()))
    i_id, i_date, i_price, i_currency, i_direction = (
        index[c] for c in ("message_id", "date_received", "total_price", "currency", "direction"))
    i_finalized, i_latency, i_provider = (index.get(c, width) for c in ("date_finalized", "latency", "provider"))
    prices = {"": (None, None)}
    currencies = {""}  # no price, no currency
    channels = {}
    days = set()
    shape = UTC_SHAPE.match

    def fail(problem):
        raise RecordsError(f"{name}: {where()}: {problem}")

    def time_of(column, text):
        # The usual shape by slicing (a day is checked against the calendar once), else datetime.
        match = shape(text)
        if match and (match[1] in days or _is_day(match[1], days)):
            return text[:19] + ".000000Z"
        stamp = _vonage_time(text)
        if stamp is None:
            fail(f"{column} {text!r} is not an ISO 8601 date-time")
        return stamp

    def convert(row):
        if len(row) != width:
            fail(f"{len(row)} fields where the header has {width}")
        row.append("")
        message_id = row[i_id]
        if not message_id:
            fail("message_id is empty")
        if row[i_direction] != "outbound":
            fail(f"direction {row[i_direction]!r}: only outbound records are imported")
        received = time_of("date_received", row[i_date])
        if start is not None and not start <= received < end:
            fail(f"date_received {row[i_date]} is outside {start} .. {end}, the range this "
                 f"import covers")
        finalized = row[i_finalized]
        if finalized:
            finalized = time_of("date_finalized", finalized)
        try:
            price, nano = prices[row[i_price]]
        except KeyError:
            price = row[i_price]
            if not money.is_price(price):
                fail(f"total_price {price!r} is not a decimal number such as 0.042 (at most 9 "
                     f"decimal places)")
            price, nano = prices[price] = (price, money.to_nano(price))
        currency = row[i_currency]
        if currency not in currencies:
            if not CURRENCY.match(currency):
                fail(f"currency {currency!r} is not a three-letter code such as EUR")
            currencies.add(currency)
        latency = row[i_latency]
        if latency and not latency.isdigit():
            fail(f"latency {latency!r} is not a whole number of milliseconds")
        provider = row[i_provider]
        try:
            channel = channels[provider]
        except KeyError:
            channel = channels[provider] = "sms" if product == "SMS" else (
                channel_name(PROVIDER_CHANNELS.get(provider.lower(), provider.lower())) or None)
        return (message_id, import_id, product, *pick(row), finalized or None, channel, received,
                latency, price, nano, currency)

    return convert


def _check_header(name, header, product):
    """The product the CSV's columns say, checked against the one its name says."""
    if len(header) == 1 and any(mark in header[0] for mark in (";", "\t", "|")):
        mark = next(mark for mark in (";", "\t", "|") if mark in header[0])
        raise RecordsError(f"{name}: line 1: fields are separated by {mark!r}; Vonage's reports "
                           f"use ',' (comma)")
    product = product or _product_from_header(header)
    if product is None:
        raise RecordsError(f"{name}: line 1: not a MESSAGES or SMS outbound report (no provider, "
                           f"network or message_id columns)")
    missing = [column for column in REQUIRED[product] if column not in header]
    if missing:
        raise RecordsError(f"{name}: line 1: missing column{'s' * (len(missing) > 1)} "
                           f"{', '.join(missing)} of a {product} report")
    return product


def _check_product(name, product):
    if product not in PRODUCTS:
        raise RecordsError(f"{name}: a {product} report; only MESSAGES and SMS (outbound) records "
                           f"are imported")
    return product


# --- the import ----------------------------------------------------------------------------


class _Import:
    """One import in progress: its rows staged in a temporary table while the file is read
    and checked (no lock on the database, so the receiver keeps storing callbacks), then
    published with the vonage_record_imports row in one short write transaction."""

    def __init__(self, conn, name, sha256, source, product, account_id, start, end, covers=True):
        self.conn, self.name, self.file_name = conn, name, name  # name: how errors say it
        self.sha256, self.source, self.account_id = sha256, source, account_id
        self.start, self.end, self.covers = start, end, covers
        self.id = 0  # staged rows carry 0; publishing gives them the import's id
        self.rows = 0
        self.first = self.last = None

    def write(self, tuples):
        """Stage a chunk of vonage_records tuples; track the range of their date_received."""
        if not tuples:
            return
        received = [row[-5] for row in tuples]
        low, high = min(received), max(received)
        self.first = low if self.first is None else min(self.first, low)
        self.last = high if self.last is None else max(self.last, high)
        self.conn.executemany(STAGE, tuples)
        self.rows += len(tuples)

    def finish(self, product):
        """Publish the staged rows with the import's row (the range covered, the count, and the
        account when neither the file's name nor the answer said it: the first record's) in one
        write transaction; return what was imported."""
        if not self.covers:  # records looked up by id: an empty range, start = end
            start = end = self.first or store.utcnow()
        elif self.start is None:
            if self.first is None:
                raise RecordsError(f"{self.name}: no records, and no --from/--to to say which "
                                   f"range it covers")
            start, end = _day_start(self.first), _next_day(self.last)
        else:
            start, end = format_timestamp(self.start), format_timestamp(self.end)
        self.conn.execute("COMMIT")  # the staging transaction: the temporary table only
        with store.transaction(self.conn):
            done = _already(self.conn, self.sha256)  # the same bytes, imported meanwhile
            if done:
                return Imported(*done, already=True)
            self.id = self.conn.execute(
                "INSERT INTO vonage_record_imports (file_name, sha256, source, product, account_id, "
                "date_start, date_end, row_count, imported_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.file_name, self.sha256, self.source, product, self.account_id, start, end,
                 self.rows, store.utcnow()),
            ).lastrowid
            self.conn.execute(PUBLISH, {"import_id": self.id})
            self.conn.execute(
                "UPDATE vonage_record_imports SET account_id = (SELECT account_id FROM "
                "temp.staged_records LIMIT 1) WHERE id = ? AND account_id IS NULL", (self.id,))
        return Imported(self.id, self.rows, start, end, product)


@contextmanager
def _bulk_transaction(conn):
    """Around one import: a temporary table on disk to stage its rows in (temp_store FILE keeps
    a million records out of memory), with a 64 MiB page cache and no foreign-key lookup per
    row while publishing (measured: -40 % CPU at 300,000 rows). A failure before publishing
    leaves the database as it was."""
    cache = conn.execute("PRAGMA cache_size").fetchone()[0]
    temp_store = conn.execute("PRAGMA temp_store").fetchone()[0]
    conn.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("PRAGMA temp_store = FILE")
    conn.execute(STAGING_TABLE)
    conn.execute("BEGIN")  # deferred, and only the temporary table is written: no lock taken
    try:
        yield conn
    finally:
        if conn.in_transaction:  # a failure (or an early return) before publishing
            conn.execute("ROLLBACK")
        conn.execute("DROP TABLE IF EXISTS temp.staged_records")
        conn.execute(f"PRAGMA temp_store = {temp_store}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA cache_size = {cache}")


def _already(conn, sha256):
    return conn.execute("SELECT id, row_count, date_start, date_end, product FROM "
                        "vonage_record_imports WHERE sha256 = ? ORDER BY id LIMIT 1",
                        (sha256,)).fetchone()


def _import_csv(conn, file_name, opener, sha256, source, product, account_id, start, end, progress,
                name=None):
    """Stream the CSV ``opener()`` gives (binary) into vonage_records, in the current transaction.
    ``name`` (default ``file_name``) is how errors name it (a zip's member: zip:member)."""
    name = name or file_name
    try:
        with opener() as raw:
            text = io.TextIOWrapper(io.BufferedReader(_Counted(raw, progress), 1 << 16),
                                    encoding="utf-8-sig", newline="")
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None:
                raise RecordsError(f"{name}: empty file (not even a header line)")
            product = _check_header(name, header, product)
            job = _Import(conn, file_name, sha256, source, product, account_id, start, end)
            job.name = name
            convert = _row_converter(name, header, product, job, lambda: f"line {reader.line_num}")
            chunk = []
            for row in reader:
                if row:
                    chunk.append(convert(row))
                    if len(chunk) >= CHUNK:
                        job.write(chunk)
                        chunk = []
            job.write(chunk)
            return job.finish(product)
    except UnicodeDecodeError:
        line = _first_bad_utf8_line(opener)
        raise RecordsError(f"{name}: line {line or '?'}: not UTF-8 text") from None
    except csv.Error as error:
        raise RecordsError(f"{name}: line {reader.line_num}: {error}") from None


def _zip_member(path, name):
    """The one report CSV in a zip; RecordsError when there is none (or several)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise RecordsError(f"{name}: not a readable zip ({error})") from None
    members = [m for m in archive.infolist() if m.filename.lower().endswith(".csv") and not m.is_dir()]
    if not members:
        archive.close()
        raise RecordsError(f"{name}: the zip holds no CSV report")
    if len(members) > 1:
        archive.close()
        raise RecordsError(f"{name}: the zip holds {len(members)} CSV files; a report has one")
    return archive, members[0]


def _name_says(filename):
    """(product, account_id) from report_<PRODUCT>_<ACCOUNT_ID>_<yyyyMMdd>.csv, else (None, None)."""
    match = REPORT_NAME.search(os.path.basename(filename))
    return (match.group(1), match.group(2)) if match else (None, None)


def _json_source(name, data):
    """(product, account_id, self-link start, end, record list) of a records answer."""
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise RecordsError(f"{name}: not an answer of GET /v2/reports/records (no records list)")
    product = data.get("product")
    if not isinstance(product, str):
        raise RecordsError(f"{name}: no product in the answer")
    _check_product(name, product)
    if data.get("direction", "outbound") != "outbound":
        raise RecordsError(f"{name}: direction {data.get('direction')!r}: only outbound records "
                           f"are imported")
    href = ((data.get("_links") or {}).get("self") or {}).get("href") or ""
    query = parse_qs(urlsplit(href).query)
    start = end = None
    if query.get("date_start") and query.get("date_end"):
        start = parse_timestamp(query["date_start"][0])
        end = parse_timestamp(query["date_end"][0])
    account = data.get("account_id") or (query.get("account_id") or [None])[0]
    return product, account, start, end, data["records"]


def _json_rows(name, records, product, job, first_record=1):
    """Turn JSON records into vonage_records tuples by the CSV path: one header, rows of text."""
    header = RECORD_FIELDS
    number = first_record
    convert = _row_converter(name, header, product, job, lambda: f"record {number}")
    for number, record in enumerate(records, first_record):
        if not isinstance(record, dict):
            raise RecordsError(f"{name}: record {number}: not an object")
        row = []
        for column in header:
            value = record.get(column)
            if value is None:
                value = ""
            elif isinstance(value, Decimal):
                value = money.format_decimal(value)
            elif isinstance(value, bool) or not isinstance(value, (str, int)):
                raise RecordsError(f"{name}: record {number}: {column} {value!r} is not text")
            row.append(str(value))
        if column_missing := [c for c in REQUIRED[product] if c not in record]:
            raise RecordsError(f"{name}: record {number}: missing {', '.join(column_missing)}")
        yield convert(row)


def _load_json(name, data_bytes):
    try:
        return json.loads(data_bytes.decode("utf-8-sig"), parse_float=Decimal)
    except UnicodeDecodeError:
        line = _first_bad_utf8_line(lambda: io.BytesIO(data_bytes))
        raise RecordsError(f"{name}: line {line}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise RecordsError(f"{name}: line {error.lineno}: not JSON ({error.msg})") from None


def _import_json(conn, name, pages, sha256, source, start, end, progress=None, covers=True):
    """Import the records of one or more JSON answers (a fetch's pages) as one import;
    ``covers=False``: records looked up by id, the import covers no range."""
    job = None
    product_seen = None
    number = 1
    for page in pages:
        product, account, link_start, link_end, records = _json_source(name, page)
        if product_seen and product != product_seen:
            raise RecordsError(f"{name}: pages of two products ({product_seen}, {product})")
        if job is None:
            if start is None and link_start is not None and link_end is not None:
                start, end = link_start, link_end
            job = _Import(conn, name, sha256, source, product, account, start, end, covers)
        product_seen = product
        job.write(list(_json_rows(name, records, product, job, number)))
        number += len(records)
        if progress:
            progress(1)
    if job is None:
        raise RecordsError(f"{name}: no answer to import")
    return job.finish(product_seen)


def import_file(conn, path, *, start=None, end=None, progress=None, total=None):
    """Import one file (zip, CSV or JSON) in one transaction; return an Imported.

    ``start``/``end`` (aware datetimes) are the range the file covers when the user knows it.
    ``progress(n)`` is called with the bytes read; ``total(n)`` once with the bytes to read.
    """
    name = os.path.basename(path)
    if os.path.getsize(path) == 0:
        raise RecordsError(f"{name}: empty file")
    sha256 = _sha256(path)
    done = _already(conn, sha256)
    if done:
        return Imported(*done, already=True)
    with open(path, "rb") as handle:
        head = handle.read(4)
    with _bulk_transaction(conn):
        if head.startswith(b"PK"):
            archive, member = _zip_member(path, name)
            with archive:
                product, account = _name_says(member.filename)
                if product:
                    _check_product(name, product)
                if total:
                    total(member.file_size)
                return _import_csv(conn, name, lambda: archive.open(member), sha256, "zip", product,
                                   account, start, end, progress, name=f"{name}:{member.filename}")
        if head.lstrip()[:1] in (b"{", b"["):
            if total:
                total(1)
            with open(path, "rb") as handle:
                data = _load_json(name, handle.read())
            return _import_json(conn, name, [data], sha256, "json", start, end, progress)
        product, account = _name_says(name)
        if product:
            _check_product(name, product)
        if total:
            total(os.path.getsize(path))
        return _import_csv(conn, name, lambda: open(path, "rb"), sha256, "csv", product, account,
                           start, end, progress)


def check_range(start, end):
    if start is not None and end is not None and not start < end:
        raise RecordsError(f"--from {format_timestamp(start)} is not before --to {format_timestamp(end)}")


# --- fetch: GET /v2/reports/records ---------------------------------------------------------

WINDOW = timedelta(hours=24)  # the most the endpoint takes between date_start and date_end
MIN_INTERVAL_S = 0.2  # at most 5 requests per second
ATTEMPTS = 6  # per request, when Vonage answers 429 or 5xx
BACKOFF_S = 1.0  # then 2, 4, 8... unless Retry-After says otherwise
MAX_WAIT_S = 60.0
ID_BATCH = 20  # message ids per request when fetching by id


def windows(start, end):
    """[start, end) cut into windows of at most 24 hours."""
    while start < end:
        yield start, min(start + WINDOW, end)
        start += WINDOW


def _vonage_param(moment):
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + "Z"


class _Client:
    """GETs to the Reports API with Basic auth, spaced MIN_INTERVAL_S apart, retrying 429 and
    5xx with backoff (Retry-After honoured); anything else that is not a 200 is one line."""

    def __init__(self, settings, sleep=time.sleep):
        if not (settings.vonage_api_key and settings.vonage_api_secret):
            raise RecordsError("fetch needs VONAGE_API_KEY and VONAGE_API_SECRET (the account's API "
                               "key and secret) in the environment")
        token = base64.b64encode(f"{settings.vonage_api_key}:{settings.vonage_api_secret}".encode())
        self.headers = {"Authorization": "Basic " + token.decode(), "Accept": "application/json",
                        "User-Agent": "dispatch-receiver"}
        self.base = settings.vonage_reports_url.rstrip("/")
        self.origin = urlsplit(self.base)[:2]
        self.sleep, self.last = sleep, None

    def get(self, url):
        """The body of a 200 answer to ``url``."""
        if urlsplit(url)[:2] != self.origin:
            raise RecordsError(f"Vonage linked to {url}, outside {self.base}; not following it")
        for attempt in range(1, ATTEMPTS + 1):
            if self.last is not None:
                self.sleep(max(0.0, self.last + MIN_INTERVAL_S - time.monotonic()))
            self.last = time.monotonic()
            try:
                request = urllib.request.Request(url, headers=self.headers)
                with urllib.request.urlopen(request, timeout=120) as answer:
                    return answer.read()
            except urllib.error.HTTPError as error:
                body = error.read()
                if error.code != 429 and error.code < 500:
                    raise RecordsError(self._refusal(error.code, body)) from None
                if attempt == ATTEMPTS:
                    raise RecordsError(f"Vonage answered HTTP {error.code} {ATTEMPTS} times to "
                                       f"{url}; nothing imported, try again later") from None
                self.sleep(self._wait(error.headers.get("Retry-After"), attempt))
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise RecordsError(f"cannot reach {self.base} ({reason}); nothing imported") from None

    @staticmethod
    def _wait(retry_after, attempt):
        try:
            return min(MAX_WAIT_S, max(0.0, float(retry_after)))
        except (TypeError, ValueError):
            return min(MAX_WAIT_S, BACKOFF_S * 2 ** (attempt - 1))

    @staticmethod
    def _refusal(status, body):
        try:
            answer = json.loads(body)
            said = ": ".join(str(answer[k]) for k in ("title", "detail") if answer.get(k))
        except (ValueError, AttributeError, TypeError):
            said = ""
        line = f"Vonage answered HTTP {status}" + (f" ({said})" if said else "")
        if status in (401, 403):
            line += "; check VONAGE_API_KEY, VONAGE_API_SECRET and VONAGE_ACCOUNT_ID"
        return line + "; nothing imported"


def fetch(conn, settings, start, end, product="MESSAGES", *, ids=(), progress=None,
          sleep=time.sleep):
    """Fetch the outbound records of ``product`` received in [start, end) from the Reports
    API, 24 hours per request at most, following each answer's ``_links.next``; then import
    them all as one import (as ``import_file`` does a JSON file). Nothing is written until
    every page has come. ``progress(1)`` after each window.

    With ``ids`` instead of a range: those messages' records, ID_BATCH ids a request; the
    ids Vonage has no record of come back in ``Imported.not_found``, and the import covers no
    range (start = end), so reconciliation by range is unchanged by it."""
    _check_product("fetch", product)
    client = _Client(settings, sleep)
    account = settings.vonage_account_id or settings.vonage_api_key
    base_query = {"account_id": account, "product": product, "direction": "outbound"}
    if ids:
        name = f"fetch {len(ids)} ids"
        queries = [{**base_query, "id": ",".join(ids[i:i + ID_BATCH])} for i in range(0, len(ids), ID_BATCH)]
    else:
        check_range(start, end)
        name = f"fetch {format_timestamp(start)}..{format_timestamp(end)}"
        queries = [{**base_query, "date_start": _vonage_param(window_start),
                    "date_end": _vonage_param(window_end)} for window_start, window_end in windows(start, end)]
    digest, pages, not_found = hashlib.sha256(), [], []
    for query in queries:
        url = f"{client.base}/v2/reports/records?{urlencode(query)}"
        while url:
            body = client.get(url)
            digest.update(body)
            page = _load_json(name, body)
            if not isinstance(page, dict):
                raise RecordsError(f"{name}: Vonage's answer to {url} is not a JSON object")
            pages.append(page)
            missing = page.get("ids_not_found") or []
            not_found += missing.split(",") if isinstance(missing, str) else missing
            following = ((page.get("_links") or {}).get("next") or {}).get("href")
            url = urljoin(url, following) if following else None
        if progress:
            progress(1)
    done = _already(conn, digest.hexdigest())
    if done:
        return Imported(*done, already=True, not_found=tuple(not_found))
    with _bulk_transaction(conn):
        result = _import_json(conn, name, pages, digest.hexdigest(), "fetch", start, end,
                              covers=not ids)
    result.not_found = tuple(not_found)
    return result
