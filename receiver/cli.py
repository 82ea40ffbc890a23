"""The ``receiver`` command line: set up the database, re-run rejected callbacks."""

import json
import logging
import sys

import click

from . import __version__, db, store
from .callbacks import ENDPOINT_KINDS, Rejection, parse
from .config import describe, load_settings
from .signatures import Verifier

log = logging.getLogger("receiver")


def _settings(database):
    return load_settings(**({"db_path": database} if database else {}))


database_option = click.option(
    "--db", "database", type=click.Path(dir_okay=False), default=None,
    help="SQLite file (default: $RECEIVER_DB, else var/events.db).",
)


@click.group()
@click.version_option(__version__, prog_name="receiver")
def cli():
    """dispatch-receiver: store Vonage Dispatch callbacks in SQLite and browse them in Datasette."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command("init-db")
@database_option
def init_db_command(database):
    """Create or migrate the database schema. Safe to run again, and from several processes.

    Example: receiver init-db --db var/events.db
    """
    settings = _settings(database)
    before = db.init_db(settings.db_path, synchronous=settings.synchronous,
                        busy_timeout_ms=settings.busy_timeout_ms)
    action = "created" if before == 0 else f"checked (schema version {before} -> {db.SCHEMA_VERSION})"
    click.echo(f"{settings.db_path}: schema {action}", err=True)


@cli.command("config")
def config_command():
    """Print every setting as the receiver reads it from the environment.

    Example: RECEIVER_DB=/data/events.db receiver config
    """
    for line in describe(load_settings()):
        click.echo(line)


@cli.command("reprocess")
@database_option
@click.option("--id", "ids", type=int, multiple=True, help="Only this rejected_callbacks id (repeatable).")
@click.option("--reason", help="Only rejections with this reason (e.g. schema_error).")
@click.option("--dry-run", is_flag=True, help="Report what would be stored; change nothing.")
@click.option("--batch-size", default=500, show_default=True, help="Rows per transaction.")
def reprocess_command(database, ids, reason, dry_run, batch_size):
    """Re-run rejected callbacks through today's validation; store those that now pass.

    Each stored one keeps its original arrival time and is marked reprocessed, with the id of
    its callbacks row; those still rejected stay pending with their new error.

    Example: receiver reprocess --reason schema_error --dry-run
    """
    settings = _settings(database)
    verifier = Verifier(settings)
    conn = db.connect_settings(settings)
    where, params = ["reprocessed_at IS NULL"], []
    if ids:
        where.append(f"id IN ({', '.join('?' * len(ids))})")
        params.extend(ids)
    if reason:
        where.append("reason = ?")
        params.append(reason)
    condition = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) FROM rejected_callbacks WHERE {condition}", params).fetchone()[0]
    counts = {"stored": 0, "duplicate": 0, "still_rejected": 0}
    last_id = 0
    with click.progressbar(length=total, label="Reprocessing", file=sys.stderr) as bar:
        while True:
            batch = conn.execute(
                f"SELECT id, endpoint, body, received_at, remote_addr, user_agent, content_type, "
                f"authorization "
                f"FROM rejected_callbacks WHERE {condition} AND id > ? ORDER BY id LIMIT ?",
                [*params, last_id, batch_size],
            ).fetchall()
            if not batch:
                break
            last_id = batch[-1][0]
            conn.execute("BEGIN IMMEDIATE")
            try:
                for row in batch:
                    counts[_reprocess_one(conn, verifier, row)] += 1
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("ROLLBACK" if dry_run else "COMMIT")
            bar.update(len(batch))
    verb = "would be" if dry_run else "were"
    click.echo(
        f"{total} pending: {counts['stored']} {verb} stored, {counts['duplicate']} {verb} "
        f"already stored, {counts['still_rejected']} still rejected.",
        err=True,
    )


def _reprocess_one(conn, verifier, row):
    """Check and parse one rejected body again; store it if it passes. Returns the outcome.

    A signature is checked as of the callback's original arrival, with today's secrets.
    """
    rejected_id, endpoint, body, received_at, remote_addr, user_agent, content_type, auth = row
    raw = body.encode("utf-8") if isinstance(body, str) else (body or b"")
    delivery = store.Delivery(raw, endpoint, received_at, remote_addr, user_agent, content_type, auth)
    try:
        signature = verifier.check(auth, raw, delivery.received_epoch)
        callback = parse(raw, ENDPOINT_KINDS.get(endpoint))
    except Rejection as rejection:
        conn.execute(
            "UPDATE rejected_callbacks SET reprocess_result = ? WHERE id = ?",
            (json.dumps({"at": store.utcnow(), **rejection.as_json()}), rejected_id),
        )
        return "still_rejected"
    stored = store.store_callback(conn, callback, delivery, signature)
    conn.execute(
        "UPDATE rejected_callbacks SET reprocessed_at = ?, reprocess_result = ?, callback_id = ? "
        "WHERE id = ?",
        (store.utcnow(), "duplicate" if stored.duplicate else "stored", stored.callback_id, rejected_id),
    )
    return "duplicate" if stored.duplicate else "stored"


if __name__ == "__main__":  # pragma: no cover
    cli()
