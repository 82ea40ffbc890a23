"""The ``receiver`` command line: set up the database, re-run rejected callbacks."""

import json
import logging
import os
import sqlite3
import sys
from datetime import date

import click

from . import __version__, db, store
from . import export as exports
from .browse import datasette_command
from .callbacks import ENDPOINT_KINDS, REASONS, Rejection, parse
from .config import describe, load_settings
from .signatures import BASIC_REASONS, UNSIGNED, Signature, Verifier
from .writer import is_database_failure

log = logging.getLogger("receiver")


def _settings(database):
    return load_settings(**({"db_path": database} if database else {}))


def _open(database, *, readonly=False):
    """The existing database of ``--db`` (else $RECEIVER_DB): never creates a file."""
    return db.open_existing(_settings(database), readonly=readonly)


class ReceiverGroup(click.Group):
    """The command group, where every command's errors become one line and exit status 1.

    A bad setting, a missing or foreign database file, a file that cannot be written: the
    message says what is wrong, never a traceback. Anything unexpected (a bug) is one line
    too; its traceback is logged at RECEIVER_LOG_LEVEL=DEBUG.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # The reader went away (`receiver config | head`): stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except (ValueError, db.DatabaseError, OSError) as error:
            # ValueError: a setting (receiver.config names the variable); OSError: a file.
            raise click.ClickException(str(error)) from None
        except sqlite3.Error as error:
            raise click.ClickException(f"database: {error}") from None
        except Exception as error:
            log.debug("unexpected error", exc_info=True)
            raise click.ClickException(
                f"unexpected {type(error).__name__}: {error} (a bug; RECEIVER_LOG_LEVEL=DEBUG "
                f"logs the traceback)") from None


database_option = click.option(
    "--db", "database", type=click.Path(dir_okay=False), default=None,
    help="SQLite file (default: $RECEIVER_DB, else var/events.db).",
)


@click.group(cls=ReceiverGroup)
@click.version_option(__version__, prog_name="receiver")
def cli():
    """dispatch-receiver: store Vonage Dispatch callbacks in SQLite and browse them in Datasette.

    The web process itself runs under gunicorn (see the Procfile); these commands set up,
    check, repair, export and feed the database.

    Example: receiver init-db && receiver simulate --dispatches 100
    """
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
@click.option("--accept-unverified", is_flag=True,
              help="Store bodies whose signature or credentials this shell cannot check (no "
                   "secret set here), marked accepted_unverified. Never needed where the "
                   "server's settings are.")
@click.option("--batch-size", default=500, show_default=True, help="Rows per transaction.")
def reprocess_command(database, ids, reason, dry_run, accept_unverified, batch_size):
    """Re-run rejected callbacks through today's validation; store those that now pass.

    Each stored one keeps its original arrival time and is marked reprocessed, with the id of
    its callbacks row; those still rejected stay pending with their new error.

    Signatures are checked as the server checks them, with the settings of this shell
    (VONAGE_SIGNATURE_SECRET(S) or RECEIVER_BASIC_AUTH) as of each callback's arrival. A body
    the server may have checked (refused for its signature or credentials, or sent with an
    Authorization header) stays rejected when this shell has no secret to check it with,
    unless --accept-unverified is given.

    Example: receiver reprocess --reason schema_error --dry-run
    """
    settings = _settings(database)
    verifier = Verifier(settings)
    conn = _open(database)
    _check_filters(conn, ids, reason)
    where, params = ["reprocessed_at IS NULL", "body_truncated = 0"], []
    if ids:
        where.append(f"id IN ({', '.join('?' * len(ids))})")
        params.extend(ids)
    if reason:
        where.append("reason = ?")
        params.append(reason)
    condition = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) FROM rejected_callbacks WHERE {condition}", params).fetchone()[0]
    counts = {"stored": 0, "duplicate": 0, "still_rejected": 0, "failed": 0}
    unverifiable, unverified = {}, 0
    last_id = 0
    with click.progressbar(length=total, label="Reprocessing", file=sys.stderr) as bar:
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
                        outcome, signature = _reprocess_one(conn, verifier, row, accept_unverified)
                    except sqlite3.Error as error:
                        if is_database_failure(error):
                            raise
                        outcome, signature = _reprocess_failed(conn, row[0], error), None
                    except Exception as error:  # one bad row must not stop the others
                        outcome, signature = _reprocess_failed(conn, row[0], error), None
                    conn.execute("RELEASE row")
                    counts[outcome] += 1
                    if isinstance(signature, Unverifiable):
                        unverifiable[signature.setting] = unverifiable.get(signature.setting, 0) + 1
                    elif isinstance(signature, Signature) and signature.status == ACCEPTED_UNVERIFIED:
                        unverified += 1
                if dry_run:
                    conn.execute("ROLLBACK TO batch")
                conn.execute("RELEASE batch")
            bar.update(len(batch))
    verb = "would be" if dry_run else "were"
    truncated = conn.execute(
        "SELECT count(*) FROM rejected_callbacks WHERE reprocessed_at IS NULL AND body_truncated = 1"
    ).fetchone()[0]
    summary = (f"{total} pending: {counts['stored']} {verb} stored, {counts['duplicate']} {verb} "
               f"already stored, {counts['still_rejected']} still rejected.")
    if unverified:
        summary += f" {unverified} {verb} stored unverified (--accept-unverified)."
    for setting, n in sorted(unverifiable.items()):
        summary += (f" {n} not verifiable here: {setting} not set in this shell; run reprocess "
                    "with the server's settings, or pass --accept-unverified.")
    if counts["failed"]:
        summary += f" {counts['failed']} failed to store (see the log and reprocess_result)."
    if truncated:
        summary += f" {truncated} oversized bodies, kept only in part, are not reprocessed."
    click.echo(summary, err=True)


def _check_filters(conn, ids, reason):
    """Refuse --id and --reason values that name no rejected callback (a typo does nothing)."""
    if ids:
        found = dict(conn.execute(
            f"SELECT id, reprocessed_at FROM rejected_callbacks WHERE id IN ({', '.join('?' * len(ids))})",
            ids,
        ).fetchall())
        missing = [str(i) for i in ids if i not in found]
        if missing:
            raise click.ClickException(f"no rejected callback with id {', '.join(missing)}")
        done = [str(i) for i in ids if found[i] is not None]
        if done:
            raise click.ClickException(
                f"rejected callback {', '.join(done)} was already reprocessed (see callback_id)")
    if reason and reason not in REASONS:
        present = [r for (r,) in conn.execute(
            "SELECT DISTINCT reason FROM rejected_callbacks ORDER BY reason")]
        raise click.ClickException(
            f"unknown reason {reason!r}: the receiver gives no such reason (reasons here: "
            f"{', '.join(present) or 'none'})")


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


def _signature(verifier, row, raw, received_epoch, accept_unverified):
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
        return verifier.check(authorization, raw, received_epoch)
    basic = reason in BASIC_REASONS or (authorization or "").lower().startswith("basic ")
    setting = "RECEIVER_BASIC_AUTH" if basic else "VONAGE_SIGNATURE_SECRET"
    if accept_unverified:
        return Signature(ACCEPTED_UNVERIFIED)
    why = (f"the server refused it as {reason}" if http_status == 401
           else "it came with an Authorization header the server may have checked")
    raise Unverifiable(setting, why)


def _reprocess_failed(conn, rejected_id, error):
    """Undo one row's partial work and note why it failed; the row stays pending."""
    log.error("reprocessing rejected_callbacks/%d failed: %r", rejected_id, error)
    conn.execute("ROLLBACK TO row")
    conn.execute(
        "UPDATE rejected_callbacks SET reprocess_result = ? WHERE id = ?",
        (json.dumps({"at": store.utcnow(), "failed": f"{type(error).__name__}: {error}"}), rejected_id),
    )
    return "failed"


def _reprocess_one(conn, verifier, row, accept_unverified=False):
    """Check and parse one rejected body again; store it if it passes.

    Returns (outcome, the Signature stored or the Rejection that kept it pending).
    """
    rejected_id, endpoint, body, received_at, remote_addr, user_agent, content_type, auth = row[:8]
    raw = body.encode("utf-8") if isinstance(body, str) else (body or b"")
    delivery = store.Delivery(raw, endpoint, received_at, remote_addr, user_agent, content_type, auth)
    try:
        signature = _signature(verifier, row, raw, delivery.received_epoch, accept_unverified)
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


@cli.command("check")
@database_option
def check_command(database):
    """Check the database: SQLite's integrity check, and that the derived messages and
    dispatches rows equal a rebuild from the event log. Exits 1 on any problem.

    Example: receiver check --db var/events.db
    """
    conn = _open(database)
    integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    click.echo(f"integrity_check: {', '.join(integrity)}")
    differences = store.derived_differences(conn)
    for table, count in differences.items():
        click.echo(f"{table}: {'matches the event log' if not count else f'{count} rows differ from the event log'}")
    if integrity != ["ok"] or any(differences.values()):
        raise SystemExit(1)


@cli.command("rebuild")
@database_option
def rebuild_command(database):
    """Recompute every messages and dispatches row from the event log (status_events,
    final_reports), e.g. after restoring a backup or a change of the merge rules.

    Example: receiver rebuild --db var/events.db
    """
    conn = _open(database)
    with store.transaction(conn):
        store.rebuild_derived(conn)
    click.echo("messages and dispatches rebuilt from the event log", err=True)


class Day(click.ParamType):
    """A calendar date, YYYY-MM-DD."""

    name = "DATE"

    def convert(self, value, param, ctx):
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not a date like 2026-11-01", param, ctx)


def _progress(length, label):
    """A progress bar on stderr (shown when stderr is a terminal)."""
    return click.progressbar(length=length, label=label, file=sys.stderr)


def _open_output(path):
    """The output file, or standard output for none (click does not close stdout)."""
    return click.open_file(path or "-", "w", encoding="utf-8")


@cli.group()
def export():
    """Export billing lines or raw callbacks for a period."""


period_options = [
    click.option("--from", "start", type=Day(), required=True, help="First day (YYYY-MM-DD), inclusive."),
    click.option("--to", "end", type=Day(), required=True, help="Last day (YYYY-MM-DD), inclusive."),
    click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
                 help="File to write (default: standard output)."),
]


def _with_period(command):
    for option in reversed(period_options):
        command = option(command)
    return command


@export.command("billing")
@database_option
@_with_period
@click.option("--by", type=click.Choice(["message", "dispatch", "day"]), default="message",
              show_default=True, help="One row per charged message; per dispatch (or Messages workflow) and currency, "
              "for those first charged in the period, all their charges; or per day, channel "
              "and currency.")
def export_billing(database, start, end, output, by):
    """Billing CSV: what Vonage charged, by the time each message became chargeable.

    SMS/MMS are charged when submitted, WhatsApp, Viber and Messenger when delivered.
    Each row has one currency; totals are exact decimals, never summed across currencies;
    the grand total per currency is printed on stderr. Reads the views billing_lines,
    billing_by_workflow and billing_by_day.

    Example: receiver export billing --from 2026-11-01 --to 2026-11-30 --by day -o nov.csv
    """
    conn = _open(database, readonly=True)
    total = exports.count_billing_rows(conn, by, start, end)
    with _open_output(output) as out, _progress(total, "Exporting billing") as bar:
        totals = exports.write_billing_csv(conn, by, start, end, out, progress=bar)
    summary = ", ".join(f"{amount} {currency}" for currency, amount in sorted(totals.items()))
    click.echo(f"{total} rows; total {summary or '0'}", err=True)


@export.command("vonage-reconciliation")
@database_option
@_with_period
@click.option("--by", type=click.Choice(["message", "day", "workflow"]), default="message",
              show_default=True, help="One row per message (with its class); per day, channel "
              "and currency; or per failover workflow and currency.")
def export_vonage_reconciliation(database, start, end, output, by):
    """Vonage's records against our callbacks as CSV, every column of the view
    vonage_reconciliation (--by message), vonage_reconciliation_by_day or
    vonage_reconciliation_workflows, for the days Vonage received the messages (a message
    it never recorded: the day of our first status). Import the records first with
    `receiver vonage-records import`. The messages in each class are printed on stderr.

    Example: receiver export vonage-reconciliation --from 2026-11-01 --to 2026-11-30 --by day -o recon.csv
    """
    conn = _open(database, readonly=True)
    with _open_output(output) as out:
        classes = exports.write_reconciliation_csv(conn, by, start, end, out)
    click.echo(", ".join(f"{n} {name}" for name, n in classes.items()) or "no rows", err=True)


@export.command("events")
@database_option
@_with_period
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="jsonl",
              show_default=True, help="CSV, or JSON Lines with each body as a JSON string.")
def export_events(database, start, end, output, fmt):
    """Every accepted callback received in the period, with its body exactly as received.

    Example: receiver export events --from 2026-11-01 --to 2026-11-30 --format jsonl -o nov.jsonl
    """
    conn = _open(database, readonly=True)
    total = exports.count_events(conn, start, end)
    with _open_output(output) as out, _progress(total, "Exporting callbacks") as bar:
        exports.write_events(exports.events(conn, start, end), out, fmt, progress=bar)
    click.echo(f"{total} callbacks", err=True)


@cli.command("simulate")
@click.option("--db", "database", type=click.Path(dir_okay=False), default=None,
              help="SQLite file to write (default: var/demo.db, never $RECEIVER_DB).")
@click.option("--dispatches", "count", default=1000, show_default=True, help="How many workflows.")
@click.option("--url", help="Post to a running receiver (e.g. http://127.0.0.1:8000/webhooks/vonage) "
              "instead of writing to the database.")
@click.option("--secret", envvar="VONAGE_SIGNATURE_SECRET", help="Sign each callback like Vonage "
              "(default: $VONAGE_SIGNATURE_SECRET).")
@click.option("--seed", type=int, default=None,
              help="Random seed; the same seed gives the same traffic (default: a new one each run).")
@click.option("--days", default=30, show_default=True, help="Spread the workflows over this many past days.")
@click.option("--concurrency", default=8, show_default=True, help="Parallel requests with --url.")
@click.option("--api", type=click.Choice(["dispatch", "messages", "mixed"]), default="dispatch",
              show_default=True, help="Dispatch workflows (statuses and final reports), Messages "
              "API v1 failover (v1 statuses of each leg), or half of each, as during a migration.")
@click.option("--remove", is_flag=True, help="Delete every simulated callback from the database "
              "(and what was derived from it) instead of adding any.")
@click.option("--vonage-records", "records_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write Vonage's records of this traffic (a report zip, or a .csv) with "
              "planted discrepancies: some callbacks withheld, prices and currencies changed, "
              "statuses changed, records left out (about 1 % of the messages each).")
def simulate_command(database, count, url, secret, seed, days, concurrency, api, remove,
                     records_path):
    """Generate realistic traffic: failover workflows of the Dispatch API (statuses and final
    reports) and/or of the Messages API v1 (v1 status webhooks of each leg).

    Without --db the callbacks go to a demo database, var/demo.db (browse it with
    `receiver datasette --db var/demo.db --port 8002`). With --url they are posted to a
    running receiver (signed when a secret is set). Every simulated body carries
    "simulated": true, so --remove can take it out of any database again.

    \b
    Example: receiver simulate --dispatches 2000
    Example: receiver simulate --api mixed --dispatches 500 --url http://127.0.0.1:8000/webhooks/vonage
    Example: receiver simulate --remove --db var/events.db
    Example: receiver simulate --api mixed --vonage-records var/demo-records.zip
    """
    from . import simulate

    settings = load_settings(db_path=database or simulate.DEMO_DB)
    if remove:
        removed = simulate.remove(db.open_existing(settings))
        click.echo(f"{settings.db_path}: {removed} simulated callbacks removed", err=True)
        return
    seed = simulate.new_seed() if seed is None else seed
    workflows = simulate.generate(count, seed=seed, days=days, api=api)
    records = simulate.VonageRecords(records_path, seed=seed) if records_path else None
    if records:
        workflows = records.withhold(workflows)
    if url:
        outcome = simulate.post_all(workflows, url, secret=secret, concurrency=concurrency,
                                    progress=_progress(count, "Posting"))
        target = url
    else:
        db.init_db(settings.db_path, synchronous=settings.synchronous,
                   busy_timeout_ms=settings.busy_timeout_ms)
        conn = db.connect_settings(settings)
        outcome = simulate.store_all(workflows, conn, progress=_progress(count, "Storing"))
        target = settings.db_path
    click.echo(f"{target} (seed {seed}): "
               + ", ".join(f"{n} {what}" for what, n in sorted(outcome.items())), err=True)
    if records:
        records.close()
        click.echo(f"{records_path}: {records.records} Vonage records; planted: "
                   + ", ".join(f"{n} {plant}" for plant, n in records.counts.items()), err=True)
    if url and any(what != "200" for what in outcome):
        raise SystemExit(1)


cli.add_command(datasette_command)



# --- operations: backup, restore, prune, archive (receiver/backup.py, prune.py, archive.py) ---


def _pages_bar(label):
    """A progress bar over pages copied, and the callback that moves it."""
    bar = click.progressbar(length=1, label=label, file=sys.stderr)

    def update(done, total):
        bar.length = max(total, 1)
        bar.update(done - bar.pos)

    return bar, update


@cli.command("backup")
@database_option
@click.argument("destination", type=click.Path())
@click.option("--force", is_flag=True, help="Replace DESTINATION if it exists.")
def backup_command(database, destination, force):
    """Copy the database to DESTINATION while the receiver keeps running.

    The copy is one consistent snapshot (every callback acknowledged before the backup
    started is in it), checked with PRAGMA integrity_check before it is put in place. When
    DESTINATION is a directory, the copy is named after the database and the UTC time
    (events-20261202T031500Z.db). An existing file is replaced only with --force.

    Example: receiver backup /var/backups/receiver/
    """
    from . import backup

    settings = _settings(database)
    db.open_existing(settings, readonly=True).close()  # one clear line if it is not there
    source = settings.db_path
    bar, update = _pages_bar("Backing up")
    try:
        with bar:
            target, counts = backup.backup(source, destination, force=force, progress=update)
    except backup.BackupError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{target}: integrity ok; {counts.get('callbacks', 0)} callbacks, "
               f"{counts.get('messages', 0)} messages, {counts.get('dispatches', 0)} dispatches", err=True)
    click.echo(target)


@cli.command("restore")
@database_option
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Restore even while a process (the receiver, Datasette) has the database open.")
def restore_command(database, source, force):
    """Replace the database with the backup SOURCE, after checking it.

    SOURCE must pass PRAGMA integrity_check and be a receiver database whose schema is not
    newer than this receiver's. While a process has the database open (a running receiver or
    Datasette, seen from the lock SQLite holds on its -shm file), the restore is refused:
    stop them first, or pass --force to copy into the live database through SQLite's locks.

    Example: receiver restore /var/backups/receiver/events-20261202T031500Z.db
    """
    from . import backup

    settings = _settings(database)
    bar, update = _pages_bar("Restoring")
    try:
        with bar:
            counts = backup.restore(source, settings.db_path, force=force, progress=update,
                                    synchronous=settings.synchronous)
    except backup.BackupError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{settings.db_path}: restored from {source}; integrity ok; "
               f"{counts.get('callbacks', 0)} callbacks, {counts.get('messages', 0)} messages", err=True)


@cli.command("prune")
@database_option
@click.option("--before", type=Day(), help="Remove event rows that arrived before this day (YYYY-MM-DD, UTC).")
@click.option("--retention", is_flag=True, help="Use RECEIVER_RETENTION_DAYS: before today minus that many days "
              "(does nothing when it is 0 or unset).")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 100_000),
              help="Rows per transaction.")
def prune_command(database, before, retention, dry_run, batch_size):
    """Remove raw bodies and event rows that arrived before a day, keeping derived rows.

    Removes rows of callbacks, status_events, final_reports, final_report_messages and
    rejected_callbacks by received_at, in small transactions so the receiver keeps answering.
    Keeps messages, dispatches and every other derived table, so billing (the billing_lines
    view reads messages) is unchanged. Rows whose events were removed are listed in
    pruned_keys and kept as they stand by `receiver rebuild` and `receiver check`; each run is
    recorded in prunes.

    Example: receiver prune --before 2026-06-01 --dry-run
    """
    from datetime import datetime, timedelta, timezone

    from . import prune

    settings = _settings(database)
    if retention == (before is not None):
        raise click.UsageError("give either --before DAY or --retention")
    if retention:
        if not settings.retention_days:
            click.echo("retention is off (RECEIVER_RETENTION_DAYS is 0 or unset): nothing removed", err=True)
            return
        before = datetime.now(timezone.utc).date() - timedelta(days=settings.retention_days)
    path = settings.db_path
    conn = db.open_existing(settings, readonly=dry_run)
    if dry_run:
        result = prune.dry_run(conn, before)
    else:
        total = sum(prune.count(conn, before).values())
        with _progress(total, f"Pruning before {before}") as bar:
            result = prune.prune(conn, before, batch_size=batch_size, progress=bar.update)
    verb = "would remove" if dry_run else "removed"
    removed = ", ".join(f"{n} {table}" for table, n in result.removed.items())
    kept = ", ".join(f"{n} {table}" for table, n in result.kept.items())
    click.echo(f"{path}: {verb} rows that arrived before {before}: {removed}", err=True)
    click.echo(f"kept: {kept}", err=True)
    if result.frozen:
        click.echo("kept as they stand (events removed): " + ", ".join(
            f"{n} {table}" for table, n in result.frozen.items()), err=True)


@cli.command("archive")
@database_option
@click.option("--month", required=True, help="The month to write (YYYY-MM), by arrival time (UTC).")
@click.option("--name", default="part", show_default=True,
              help="File name prefix: give each receiver sharing DIRECTORY its own.")
@click.argument("directory", type=click.Path(file_okay=False))
def archive_command(database, month, name, directory):
    """Write one month of every table as Parquet: DIRECTORY/<table>/month=YYYY-MM/<name>-0.parquet.

    Event rows that arrived in the month, and the derived rows (messages, dispatches...) as
    they stand now whose first event arrived in it. Money stays exact (int64 *_nano, decimal
    text, DECIMAL(18,9) *_decimal), bodies byte-exact. Running it again replaces the month's
    files. Query the archive with DuckDB, Spark, Trino or Athena.

    Example: receiver archive --month 2026-11 --name eu-1 /srv/archive
    """
    from . import archive

    settings = _settings(database)
    path = settings.db_path
    try:
        archive.month_range(month)
        if not archive.NAME.fullmatch(name):
            raise archive.ArchiveError(f"{name!r} is not a receiver name (letters, digits, '.', '_', '-')")
        conn = db.open_existing(settings, readonly=True)
        total = sum(archive.count_rows(conn, month).values())
        with _progress(total, f"Archiving {month}") as bar:
            written, skipped = archive.archive(conn, month, directory, name=name,
                                               source=path, progress=bar.update)
    except (archive.ArchiveError, OSError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{directory}: {month}: " + ", ".join(f"{n} {table}" for table, n in written.items()), err=True)
    if skipped:
        click.echo("not archived (no arrival time nor event key): " + ", ".join(skipped), err=True)


# --- Vonage's own records (receiver/vonage_records.py) --------------------------------------


@cli.group("vonage-records")
def vonage_records_group():
    """Import Vonage's records of what it sent and billed (its Reports API), to reconcile."""


range_options = [
    click.option("--from", "start", metavar="DATE|DATETIME",
                 help="Start of the range covered, inclusive (a date is its 00:00 UTC)."),
    click.option("--to", "end", metavar="DATE|DATETIME",
                 help="End of the range covered: a date is included whole, a date-time is "
                      "exclusive."),
]


def _range(start, end, *, required=False):
    from . import vonage_records

    if required and not (start and end):
        raise click.UsageError("--from and --to are both required")
    if bool(start) != bool(end):
        raise click.UsageError("give both --from and --to, or neither")
    if not start:
        return None, None
    start, end = vonage_records.parse_moment(start), vonage_records.parse_moment(end, end=True)
    vonage_records.check_range(start, end)
    return start, end


def _imported_line(name, result):
    if result.already:
        return (f"{name}: already imported as import {result.import_id} ({result.rows} records); "
                f"nothing changed")
    return (f"{name}: import {result.import_id}: {result.rows} {result.product} records, "
            f"{result.date_start} .. {result.date_end}")


@vonage_records_group.command("import")
@database_option
@range_options[0]
@range_options[1]
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def vonage_records_import(database, start, end, files):
    """Import Vonage's records from FILES: the zip of an asynchronous report, the CSV inside
    it, or the JSON of GET /v2/reports/records (MESSAGES and SMS, outbound).

    One row per message_id in vonage_records: the latest import of a message wins (its
    import_id says which); the same file again changes nothing. Each file is one transaction:
    a bad file imports nothing. The range a file covers (what reconciliation compares over)
    is --from/--to when given, else the JSON's own date_start/date_end, else the whole UTC
    days its records' date_received span.

    Example: receiver vonage-records import ~/Downloads/MESSAGES_0f1e2d3c.zip
    """
    from . import vonage_records

    start, end = _range(start, end)
    conn = _open(database)
    for path in files:
        bar = click.progressbar(length=1, label=os.path.basename(path), file=sys.stderr)

        def total(n, bar=bar):
            bar.length = max(n, 1)

        with bar:
            result = vonage_records.import_file(conn, path, start=start, end=end,
                                                progress=bar.update, total=total)
        click.echo(_imported_line(path, result), err=True)


@vonage_records_group.command("fetch")
@database_option
@range_options[0]
@range_options[1]
@click.option("--product", type=click.Choice(["MESSAGES", "SMS"]), default="MESSAGES",
              show_default=True, help="The Vonage product whose outbound records to fetch.")
@click.option("--id", "ids", multiple=True, metavar="MESSAGE_ID[,...]",
              help="Instead of a range: these messages' records (repeatable, or comma-separated); "
                   "the ids Vonage has no record of are listed.")
def vonage_records_fetch(database, start, end, product, ids):
    """Fetch Vonage's records of the messages it received from us in --from .. --to, from
    its Reports API (GET /v2/reports/records), and import them as `import` does: one import.

    Needs VONAGE_API_KEY and VONAGE_API_SECRET (VONAGE_ACCOUNT_ID for a subaccount). Asks for
    24 hours at a time, at most 5 requests a second, and retries 429 and 5xx answers. Nothing
    is written until every page has come. With --id, looks those messages up instead (an
    import that covers no range).

    Example: receiver vonage-records fetch --from 2026-11-01 --to 2026-11-30 --product MESSAGES
    """
    from . import vonage_records

    ids = [part.strip() for value in ids for part in value.split(",") if part.strip()]
    if ids and (start or end):
        raise click.UsageError("give --id or --from/--to, not both")
    start, end = _range(start, end, required=not ids)
    settings = _settings(database)
    conn = _open(database)
    steps = -(-len(ids) // vonage_records.ID_BATCH) if ids else len(list(vonage_records.windows(start, end)))
    with _progress(steps, f"Fetching {product} records") as bar:
        result = vonage_records.fetch(conn, settings, start, end, product, ids=ids, progress=bar.update)
    click.echo(_imported_line(f"fetch {product}", result), err=True)
    if result.not_found:
        shown = ", ".join(result.not_found[:10]) + (", ..." if len(result.not_found) > 10 else "")
        click.echo(f"{len(result.not_found)} of the ids have no record at Vonage: {shown}", err=True)


if __name__ == "__main__":  # pragma: no cover
    cli()
