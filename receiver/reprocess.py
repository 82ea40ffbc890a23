"""``receiver reprocess``: re-run rejected callbacks through today's validation and store
those that now pass, each with its original arrival time and signature rule."""

import json
import logging
import sqlite3
from dataclasses import dataclass, field

from . import store
from .callbacks import ENDPOINT_KINDS, REASONS, Rejection, parse
from .signatures import BASIC_REASONS, UNSIGNED, Signature
from .writer import is_database_failure

log = logging.getLogger("receiver")

ACCEPTED_UNVERIFIED = "accepted_unverified"


class Unverifiable(Rejection):
    """A body the server may have checked and this shell cannot: no secret set here."""

    def __init__(self, setting, why):
        super().__init__(
            401, "cannot_verify",
            f"cannot verify: {setting} not set in this shell ({why}); run reprocess with the "
            f"server's settings, or pass --accept-unverified to store it unverified.",
        )
        self.setting = setting


@dataclass
class Result:
    """What a reprocess run did (or, dry, would do) with the pending rows it read."""

    pending: int = 0
    counts: dict = field(default_factory=lambda: {
        "stored": 0, "duplicate": 0, "still_rejected": 0, "failed": 0})
    unverifiable: dict = field(default_factory=dict)  # setting -> rows it would have checked
    unverified: int = 0
    truncated: int = 0

    def summary(self, dry_run=False):
        """The one-paragraph summary the command prints."""
        verb = "would be" if dry_run else "were"
        counts = self.counts
        text = (f"{self.pending} pending: {counts['stored']} {verb} stored, {counts['duplicate']} "
                f"{verb} already stored, {counts['still_rejected']} still rejected.")
        if self.unverified:
            text += f" {self.unverified} {verb} stored unverified (--accept-unverified)."
        for setting, n in sorted(self.unverifiable.items()):
            text += (f" {n} not verifiable here: {setting} not set in this shell; run reprocess "
                     "with the server's settings, or pass --accept-unverified.")
        if counts["failed"]:
            text += f" {counts['failed']} failed to store (see the log and reprocess_result)."
        if self.truncated:
            text += f" {self.truncated} oversized bodies, kept only in part, are not reprocessed."
        return text


def check_filters(conn, ids, reason):
    """Refuse --id and --reason values that name no rejected callback (a typo does nothing):
    ValueError saying which."""
    if ids:
        found = dict(conn.execute(
            f"SELECT id, reprocessed_at FROM rejected_callbacks WHERE id IN ({', '.join('?' * len(ids))})",
            ids,
        ).fetchall())
        missing = [str(i) for i in ids if i not in found]
        if missing:
            raise ValueError(f"no rejected callback with id {', '.join(missing)}")
        done = [str(i) for i in ids if found[i] is not None]
        if done:
            raise ValueError(f"rejected callback {', '.join(done)} was already reprocessed (see callback_id)")
    if reason and reason not in REASONS:
        present = [r for (r,) in conn.execute(
            "SELECT DISTINCT reason FROM rejected_callbacks ORDER BY reason")]
        raise ValueError(
            f"unknown reason {reason!r}: the receiver gives no such reason (reasons here: "
            f"{', '.join(present) or 'none'})")


def _pending(ids, reason):
    """The WHERE clause and parameters of the pending rows a run reads."""
    where, params = ["reprocessed_at IS NULL", "body_truncated = 0"], []
    if ids:
        where.append(f"id IN ({', '.join('?' * len(ids))})")
        params.extend(ids)
    if reason:
        where.append("reason = ?")
        params.append(reason)
    return " AND ".join(where), params


def count_pending(conn, ids=(), reason=None):
    """How many pending rows a run with these filters reads (for the progress bar)."""
    condition, params = _pending(ids, reason)
    return conn.execute(f"SELECT count(*) FROM rejected_callbacks WHERE {condition}", params).fetchone()[0]


def reprocess(conn, verifier, *, ids=(), reason=None, dry_run=False, accept_unverified=False,
              batch_size=500, progress=None):
    """Reprocess the pending rejected callbacks matching ``ids``/``reason``, ``batch_size`` per
    transaction (rolled back with ``dry_run``); ``progress(n)`` after each batch. Returns a Result.
    Check the filters first (``check_filters``): a typo would match nothing."""
    condition, params = _pending(ids, reason)
    result = Result(pending=count_pending(conn, ids, reason))
    last_id = 0
    while True:
        batch = conn.execute(
            f"SELECT id, endpoint, body, received_at, remote_addr, user_agent, content_type, "
            f"authorization, http_status, reason "
            f"FROM rejected_callbacks WHERE {condition} AND id > ? ORDER BY id LIMIT ?",
            [*params, last_id, batch_size],
        ).fetchall()
        if not batch:
            break
        last_id = batch[-1][0]
        with store.transaction(conn):
            conn.execute("SAVEPOINT batch")
            for row in batch:
                conn.execute("SAVEPOINT row")
                try:
                    outcome, signature = reprocess_one(conn, verifier, row, accept_unverified)
                except sqlite3.Error as error:
                    if is_database_failure(error):
                        raise
                    outcome, signature = _failed(conn, row[0], error), None
                except Exception as error:  # one bad row must not stop the others
                    outcome, signature = _failed(conn, row[0], error), None
                conn.execute("RELEASE row")
                result.counts[outcome] += 1
                if isinstance(signature, Unverifiable):
                    result.unverifiable[signature.setting] = result.unverifiable.get(signature.setting, 0) + 1
                elif isinstance(signature, Signature) and signature.status == ACCEPTED_UNVERIFIED:
                    result.unverified += 1
            if dry_run:
                conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
        if progress is not None:
            progress(len(batch))
    result.truncated = conn.execute(
        "SELECT count(*) FROM rejected_callbacks WHERE reprocessed_at IS NULL AND body_truncated = 1"
    ).fetchone()[0]
    return result


def _signature(verifier, row, delivery, accept_unverified):
    """The signature rule the server applied to this body, applied again.

    The server checks signatures before it reads the body, so a body refused with another
    status than 401 and without an Authorization header came to a server that checks nothing:
    it is stored unsigned, as that server would have. Any other body is checked with this
    shell's settings, as of its arrival; with none set here it is Unverifiable.
    """
    authorization, http_status, reason = row[7], row[8], row[9]
    if http_status != 401 and not authorization:
        return UNSIGNED
    if verifier.basic or verifier.enabled:
        return verifier.check(delivery)
    basic = reason in BASIC_REASONS or (authorization or "").lower().startswith("basic ")
    setting = "RECEIVER_BASIC_AUTH" if basic else "VONAGE_SIGNATURE_SECRET"
    if accept_unverified:
        return Signature(ACCEPTED_UNVERIFIED)
    why = (f"the server refused it as {reason}" if http_status == 401
           else "it came with an Authorization header the server may have checked")
    raise Unverifiable(setting, why)


def _failed(conn, rejected_id, error):
    """Undo one row's partial work and note why it failed; the row stays pending."""
    log.error("reprocessing rejected_callbacks/%d failed: %r", rejected_id, error)
    conn.execute("ROLLBACK TO row")
    conn.execute(
        "UPDATE rejected_callbacks SET reprocess_result = ? WHERE id = ?",
        (json.dumps({"at": store.utcnow(), "failed": f"{type(error).__name__}: {error}"}), rejected_id),
    )
    return "failed"


def reprocess_one(conn, verifier, row, accept_unverified=False):
    """Check and parse one rejected body again; store it if it passes.

    Returns (outcome, the Signature stored or the Rejection that kept it pending).
    """
    rejected_id, endpoint, body, received_at, remote_addr, user_agent, content_type, auth = row[:8]
    raw = body.encode("utf-8") if isinstance(body, str) else (body or b"")
    delivery = store.Delivery(raw, endpoint, received_at, remote_addr, user_agent, content_type, auth)
    try:
        signature = _signature(verifier, row, delivery, accept_unverified)
        callback = parse(raw, ENDPOINT_KINDS.get(endpoint))
    except Rejection as rejection:
        conn.execute(
            "UPDATE rejected_callbacks SET reprocess_result = ? WHERE id = ?",
            (json.dumps({"at": store.utcnow(), **rejection.as_json()}), rejected_id),
        )
        return "still_rejected", rejection
    stored = store.store_callback(conn, callback, delivery, signature)
    result = "duplicate" if stored.duplicate else "stored"
    if signature.status == ACCEPTED_UNVERIFIED and not stored.duplicate:
        result = "stored (accepted unverified)"
    conn.execute(
        "UPDATE rejected_callbacks SET reprocessed_at = ?, reprocess_result = ?, callback_id = ? "
        "WHERE id = ?",
        (store.utcnow(), result, stored.callback_id, rejected_id),
    )
    return ("duplicate" if stored.duplicate else "stored"), signature
