"""Prometheus metrics: what the receiver counts, and ``GET /metrics`` in the text format.

Under gunicorn every process (each worker, and the writer) counts into files of its own in
PROMETHEUS_MULTIPROC_DIR, a private directory config/gunicorn.conf.py makes in the master
before anything imports prometheus_client; a scrape adds them up (prometheus_client's
multiprocess mode). Without that directory (the Flask test client, one process) the values
live in this process.

The request path does a few counter increments and one or two histogram observations per
callback; the database's size and the time of the last stored callback are read when scraped.
"""

import functools
import hmac
import logging
import os
import sqlite3
from datetime import datetime

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)
from prometheus_client.core import GaugeMetricFamily

from . import db, store
from .schemas import channel_name

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("receiver.metrics")

# Every metric of this process; in multiprocess mode a scrape reads the files instead.
REGISTRY = CollectorRegistry()

CALLBACKS = Counter(
    "receiver_callbacks_total", "Callbacks received, by kind, API and outcome.",
    ["kind", "api", "outcome"], registry=REGISTRY)
REJECTIONS = Counter(
    "receiver_rejections_total", "Callbacks refused (kept in rejected_callbacks), by reason.",
    ["reason"], registry=REGISTRY)
SIGNATURES = Counter(
    "receiver_signature_results_total",
    "Signature checks by result: verified, unsigned, not_checked, basic_auth, or failed (401).",
    ["result"], registry=REGISTRY)
STORAGE_ERRORS = Counter(
    "receiver_storage_errors_total",
    "Webhook requests answered 503 because the database could not take the write.",
    registry=REGISTRY)
REQUEST_SECONDS = Histogram(
    "receiver_request_duration_seconds",
    "Time from a webhook request's start to its answer (stored callbacks: to the commit).",
    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15),
    registry=REGISTRY)
LAG_SECONDS = Histogram(
    "receiver_callback_lag_seconds",
    "Arrival time minus the callback's own timestamp, for newly stored callbacks "
    "(negative lag, the sender's clock ahead, counts as 0).",
    ["kind", "channel"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
    registry=REGISTRY)
BATCH_SIZE = Histogram(
    "receiver_writer_batch_size", "Writes committed together by one group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=REGISTRY)
COMMIT_SECONDS = Histogram(
    "receiver_writer_commit_duration_seconds",
    "Time one group commit took: its statements and the synced COMMIT.",
    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10),
    registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "receiver_writer_queue_depth",
    "Writes the writer held at its latest commit: the batch and any waiting behind it.",
    multiprocess_mode="mostrecent", registry=REGISTRY)

# (kind, api) of the callbacks the receiver takes; their series exist from the start, at 0,
# so that a rate or an alert sees the first one.
KINDS_BY_API = (("message_status", "dispatch"), ("final_report", "dispatch"),
                ("message_status", "messages"))
OUTCOMES = ("stored", "duplicate", "rejected")

for _kind, _api in KINDS_BY_API:
    for _outcome in OUTCOMES:
        CALLBACKS.labels(_kind, _api, _outcome)
SIGNATURES.labels("failed")

# Label children looked up once: .labels() costs more than the increment itself.
_callbacks = {}
_signatures = {}
_lags = {}


def _child(cache, metric, *labels):
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = metric.labels(*labels)
    return child


def _never_raises(function):
    """Counting must never change an answer nor stop the writer: a failure is logged once."""

    @functools.wraps(function)
    def counted(*args, **kwargs):
        try:
            function(*args, **kwargs)
        except Exception:  # noqa: BLE001
            if not getattr(counted, "failed", False):
                counted.failed = True
                log.exception("metrics: %s failed (logged once)", function.__name__)

    return counted


@_never_raises
def signature_checked(result):
    """Count one signature check: the Signature's status, or 'failed' for a 401."""
    _child(_signatures, SIGNATURES, result).inc()


@_never_raises
def callback_stored(kind, api, duplicate, seconds, received_epoch, data):
    """Count one acknowledged callback answered after ``seconds``; a newly stored one's lag
    (arrival at ``received_epoch`` minus its payload ``data``'s timestamp) is observed too."""
    _child(_callbacks, CALLBACKS, kind, api, "duplicate" if duplicate else "stored").inc()
    REQUEST_SECONDS.observe(seconds)
    if not duplicate:
        lag = lag_seconds(received_epoch, data.get("timestamp"))
        if lag is not None:
            _child(_lags, LAG_SECONDS, kind, channel_of(data)).observe(lag if lag > 0 else 0.0)


@_never_raises
def callback_rejected(kind, api, reason, http_status, seconds):
    """Count one refused callback (kept in rejected_callbacks)."""
    _child(_callbacks, CALLBACKS, kind, api, "rejected").inc()
    REJECTIONS.labels(reason).inc()
    if http_status == 401:
        signature_checked("failed")
    REQUEST_SECONDS.observe(seconds)


@_never_raises
def storage_failed(seconds):
    """Count one 503 answered because the write could not be stored."""
    STORAGE_ERRORS.inc()
    REQUEST_SECONDS.observe(seconds)


@_never_raises
def observe_batch(size, seconds, queued=0):
    """The writer's hook, once per group commit: its size, how long it took, and how many
    writes were waiting behind it."""
    BATCH_SIZE.observe(size)
    COMMIT_SECONDS.observe(seconds)
    QUEUE_DEPTH.set(size + queued)


def lag_seconds(received_epoch, timestamp):
    """Arrival (Unix seconds) minus a callback's normalised ``timestamp`` text, or None."""
    if not timestamp:
        return None
    try:
        return received_epoch - datetime.fromisoformat(timestamp).timestamp()
    except (TypeError, ValueError):
        return None


def channel_of(data):
    """The channel a callback is about ('none' for a dispatch-wide one such as a final report)."""
    channel = data.get("channel")
    if not channel:
        for side in ("to", "from"):
            endpoint = data.get(side)
            if isinstance(endpoint, dict) and endpoint.get("type"):
                channel = endpoint["type"]
                break
    return channel_name(channel) if isinstance(channel, str) and channel else "none"


# --- the scrape ------------------------------------------------------------------------------


class DatabaseCollector:
    """Gauges read from the database when scraped: file sizes and the last stored callback."""

    def __init__(self, settings):
        self.path = settings.db_path
        self.settings = settings

    def collect(self):
        sizes = GaugeMetricFamily("receiver_database_size_bytes",
                                  "Size of the SQLite database file.")
        sizes.add_metric([], _size(self.path))
        yield sizes
        wal = GaugeMetricFamily("receiver_database_wal_size_bytes",
                                "Size of the database's write-ahead log (WAL) file.")
        wal.add_metric([], _size(self.path + "-wal"))
        yield wal
        projection = self._projection()
        if projection is not None:
            lag = GaugeMetricFamily(
                "receiver_projection_lag_seconds",
                "Age of the oldest stored callback whose derived rows (messages, dispatches, "
                "workflows) are not yet derived; 0 when they are up to date.")
            lag.add_metric([], projection[1])
            yield lag
            behind = GaugeMetricFamily(
                "receiver_projection_behind_events",
                "Stored events (status events, final reports) not yet derived.")
            behind.add_metric([], projection[0])
            yield behind
        last = self._last_stored()
        if last is not None:
            gauge = GaugeMetricFamily(
                "receiver_last_callback_timestamp_seconds",
                "Arrival time (Unix seconds) of the newest stored callback; 0 when none yet.")
            gauge.add_metric([], last)
            yield gauge

    def _projection(self):
        """(events not yet derived, seconds the oldest has waited), None if unreadable."""
        try:
            conn = db.connect_settings(self.settings, readonly=True)
            try:
                return store.projection_behind(conn)
            finally:
                conn.close()
        except sqlite3.Error:
            return None

    def _last_stored(self):
        """max(received_at) of callbacks (indexed), as Unix seconds; None if unreadable."""
        try:
            conn = db.connect_settings(self.settings, readonly=True)
            try:
                (value,) = conn.execute("SELECT max(received_at) FROM callbacks").fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return None
        return datetime.fromisoformat(value).timestamp() if value else 0.0


def _size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


class _ThisProcess:
    """REGISTRY's metrics, for a scrape without multiprocess files."""

    def collect(self):
        return REGISTRY.collect()


def exposition(settings):
    """(body bytes, content type) of a scrape: every process's metrics plus the database's."""
    registry = CollectorRegistry()
    directory = os.environ.get(MULTIPROC_VARIABLE)
    if directory:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_ThisProcess())
    registry.register(DatabaseCollector(settings))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def token_allows(settings, authorization):
    """True when /metrics is open (no RECEIVER_METRICS_TOKEN) or ``authorization`` is
    'Bearer <that token>', compared in constant time."""
    if not settings.metrics_token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), settings.metrics_token.encode("utf-8"))
