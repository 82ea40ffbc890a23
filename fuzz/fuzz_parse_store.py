"""Atheris harness: arbitrary bytes through ``receiver.callbacks.parse`` and into SQLite.

Each input is parsed as it would be at each webhook URL. A body that parses is stored with
``store.store_callback`` in a real database created by ``receiver.db.init_db``; a body that
is refused is kept with ``store.store_rejection``, as the receiver does for every 4xx. The
only exception allowed out of ``parse`` is ``callbacks.Rejection`` (400 or 422, with a typed
reason and JSON-serialisable errors); storing either way must not raise at all, since any
exception there is a 503 to Vonage and a body that is not kept.

Run (libFuzzer flags; the last arguments are corpus directories or single inputs):

    .venv/bin/python fuzz/fuzz_parse_store.py -atheris_runs=20000 fuzz/corpus

FUZZ_DB_DIR names the directory for the database (default: a new temporary directory).
"""

import json
import os
import re
import sys
import tempfile
import zlib

import atheris

with atheris.instrument_imports(include=["receiver", "marshmallow"]):
    from receiver import callbacks, db, store
    from receiver.callbacks import ENDPOINT_KINDS, Rejection, parse
    from receiver.schemas import KINDS

DB_PATH = os.path.join(os.environ.get("FUZZ_DB_DIR") or tempfile.mkdtemp(prefix="fuzz-parse-store-"),
                       "events.db")
db.init_db(DB_PATH)
CONN = db.connect(DB_PATH, synchronous="OFF")
ENDPOINTS = list(ENDPOINT_KINDS)
TYPED_REASON = re.compile(r"[a-z][a-z0-9_]*")


def outcome(data, endpoint):
    """The Callback parse returns, or the Rejection it raises (checked)."""
    try:
        callback = parse(data, ENDPOINT_KINDS[endpoint])
    except Rejection as rejection:
        # 400: not JSON (or not text); 422: JSON that is no valid callback.
        assert rejection.http_status in (400, 422), rejection.http_status
        assert TYPED_REASON.fullmatch(rejection.reason), rejection.reason
        assert isinstance(rejection.errors, dict) and rejection.errors, rejection.errors
        json.dumps(rejection.as_json(), ensure_ascii=False)
        return rejection
    assert callback.kind in KINDS, callback.kind
    assert isinstance(callback.data, dict)
    return callback


def TestOneInput(data):
    results = {endpoint: outcome(data, endpoint) for endpoint in ENDPOINTS}
    common = results["/webhooks/vonage"]
    if isinstance(common, callbacks.Callback):
        # The kind is decided by the body's shape: every URL takes it the same way.
        for endpoint, result in results.items():
            assert isinstance(result, callbacks.Callback) and result.kind == common.kind, \
                (endpoint, result, common.kind)

    endpoint = ENDPOINTS[zlib.crc32(data) % len(ENDPOINTS)]
    result = results[endpoint]
    delivery = store.Delivery(body=data, endpoint=endpoint, received_at=store.utcnow())
    with store.transaction(CONN):
        if isinstance(result, Rejection):
            assert store.store_rejection(CONN, result, delivery) > 0
        else:
            stored = store.store_callback(CONN, result, delivery)
            assert stored.callback_id > 0 and stored.delivery_count >= 1
            assert stored.kind == result.kind


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
