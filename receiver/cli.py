"""The ``receiver`` command line: set up the database, re-run rejected callbacks."""

import contextlib
import functools
import logging
import os
import sqlite3
import sys
from datetime import date

import click

from . import __version__, db, store
from . import export as exports
from .browse import datasette_command
from .config import describe, load_settings
from .signatures import Verifier

log = logging.getLogger("receiver")


def _settings(database):
    return load_settings(**({"db_path": database} if database else {}))


def _open(database, *, readonly=False):
    """The existing database of ``--db`` (else $RECEIVER_DB): never creates a file."""
    return db.open_existing(_settings(database), readonly=readonly)


# What click 8.2+ raises for a group given no command (it shows the group's help).
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _say_if_behind(conn, consequence):
    """One line on stderr when the derived rows trail the event log (the writer is deriving
    them, or is not running): ``consequence`` says what that means for this command."""
    behind, lag_s = store.projection_behind(conn)
    if behind:
        click.echo(f"note: the derived rows are {behind} events behind the event log "
                   f"(oldest stored {lag_s:.1f} s ago); {consequence}", err=True)


class ReceiverGroup(click.Group):
    """The command group, where every command's errors become one line and exit status 1.

    A bad argument, a bad setting, a missing or foreign database file, a file that cannot be
    written: the message says what is wrong, never a traceback. Anything unexpected (a bug) is
    one line too; its traceback is logged at RECEIVER_LOG_LEVEL=DEBUG.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NO_ARGS_IS_HELP:
            raise  # `receiver export` alone: its help, as click shows it
        except click.UsageError as error:
            # A bad argument (a negative count, a reversed period): one line naming it, exit 1,
            # like every other refusal, instead of click's usage block.
            where = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
            raise click.ClickException(error.format_message() + where) from None
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
    """dispatch-receiver: store Vonage's callbacks (Dispatch and Messages APIs) in SQLite and
    browse them in Datasette.

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
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(min=1),
              help="Rows per transaction.")
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
    from . import reprocess

    conn = _open(database)
    reprocess.check_filters(conn, ids, reason)
    with _progress(reprocess.count_pending(conn, ids, reason), "Reprocessing") as bar:
        result = reprocess.reprocess(conn, Verifier(_settings(database)), ids=ids, reason=reason,
                                     dry_run=dry_run, accept_unverified=accept_unverified,
                                     batch_size=batch_size, progress=bar.update)
    click.echo(result.summary(dry_run), err=True)


# `receiver check` names at most this many differing rows of each table.
SHOWN_KEYS = 20


@cli.command("check")
@database_option
def check_command(database):
    """Check the database: SQLite's integrity check, and that the derived messages,
    dispatches and workflows rows equal a rebuild from the event log (naming the first 20
    that differ in each). Exits 1 on any problem.

    Example: receiver check --db var/events.db
    """
    conn = _open(database)
    integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    click.echo(f"integrity_check: {', '.join(integrity)}")
    _say_if_behind(conn, "they are compared as derived up to date")
    differences = store.differing_keys(conn)
    for table, keys in differences.items():
        if not keys:
            click.echo(f"{table}: matches the event log")
            continue
        more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
        click.echo(f"{table}: {len(keys)} rows differ from the event log "
                   f"({store.DERIVED_TABLES[table]} {', '.join(map(str, keys[:SHOWN_KEYS]))}{more})")
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
    """Add --from, --to and -o to an export command, which never runs on a reversed period."""
    @functools.wraps(command)
    def checked(*args, start, end, **kwargs):
        if start > end:
            raise click.UsageError(f"--from {start} is after --to {end}: the period holds no day")
        return command(*args, start=start, end=end, **kwargs)

    for option in reversed(period_options):
        checked = option(checked)
    return checked


@export.command("billing")
@database_option
@_with_period
@click.option("--by", type=click.Choice(list(exports.BILLING)), default="message",
              show_default=True, help="One row per charged message; per dispatch (or Messages workflow) and currency, "
              "for those first charged in the period, all their charges; per day, API, channel "
              "and currency; per month, API, channel and currency (every month the period "
              "touches, whole); or per channel and currency over the period.")
def export_billing(database, start, end, output, by):
    """Billing CSV: what Vonage charged, by the time each message became chargeable.

    SMS/MMS are charged when submitted, WhatsApp, Viber and Messenger when delivered.
    Each row has one currency; totals are exact decimals, never summed across currencies;
    the grand total per currency, and how many charged messages carry no price (per
    channel), are printed on stderr. Every column of the view it reads (billing_lines,
    billing_by_workflow, billing_by_day, billing_by_month), as Datasette's CSV has them.

    Example: receiver export billing --from 2026-11-01 --to 2026-11-30 --by channel -o nov.csv
    """
    conn = _open(database, readonly=True)
    _say_if_behind(conn, "this export leaves out what they have yet to take")
    total = exports.count_billing_rows(conn, by, start, end)
    with _open_output(output) as out, _progress(total, "Exporting billing") as bar:
        summary = exports.write_billing_csv(conn, by, start, end, out, progress=bar)
    click.echo(summary.line(total), err=True)


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
@click.option("--dispatches", "count", default=1000, show_default=True, type=click.IntRange(min=1),
              help="How many workflows.")
@click.option("--url", help="Post to a running receiver (e.g. http://127.0.0.1:8000/webhooks/vonage) "
              "instead of writing to the database.")
@click.option("--secret", envvar="VONAGE_SIGNATURE_SECRET", help="Sign each callback like Vonage "
              "(default: $VONAGE_SIGNATURE_SECRET).")
@click.option("--seed", type=int, default=None,
              help="Random seed; the same seed gives the same traffic (default: a new one each run).")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 36500),
              help="Spread the workflows over this many past days.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Parallel requests with --url.")
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
    if url and not simulate.is_http_url(url):
        raise click.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="'--url'")
    if url and remove:
        raise click.UsageError("--remove deletes from a database (--db), not from --url")
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


@contextlib.contextmanager
def _pages_bar(label):
    """A progress bar over pages copied: yields the callback that moves it. The bar shows from
    the first page copied on, so a refusal before it is one line alone."""
    with contextlib.ExitStack() as stack:
        bar = None

        def update(done, total):
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(click.progressbar(length=1, label=label, file=sys.stderr))
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        yield update


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
    try:
        with _pages_bar("Backing up") as update:
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
    try:
        with _pages_bar("Restoring") as update:
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
    elif before > datetime.now(timezone.utc).date() + timedelta(days=1):
        raise click.BadParameter(f"{before} is in the future: every row arrived before it",
                                 param_hint="'--before'")
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
