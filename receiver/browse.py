"""``receiver datasette``: serve the event store read-only in Datasette.

Datasette listens on DATASETTE_HOST only when DATASETTE_PASSWORD_HASH is set (then every page
needs a login, see config/plugins/receiver_metadata.py); without a password it listens on
127.0.0.1 whatever was asked. Datasette never writes: it opens the live file read-only (no
--immutable, the receiver keeps writing to it), no write plugin is installed and no canned
query writes.
"""

import ipaddress
import os
import re
import shlex
import sys
from pathlib import Path

import click

from . import db
from .config import load_settings

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
METADATA = CONFIG_DIR / "metadata.yml"
PLUGINS_DIR = CONFIG_DIR / "plugins"
# How the pages read (data first, long values shortened, money alike): see
# config/plugins/receiver_pages.py, which links static/receiver.css from STATIC_MOUNT.
TEMPLATES_DIR = CONFIG_DIR / "templates"
STATIC_DIR = CONFIG_DIR / "static"
STATIC_MOUNT = "receiver-static"

LOCAL_HOST = "127.0.0.1"

# `datasette hash-password` output: pbkdf2_sha256$<iterations>$<salt>$<base64 hash>
PASSWORD_HASH = re.compile(r"^pbkdf2_sha256\$[1-9][0-9]*\$[^$]+\$[A-Za-z0-9+/=]+$")

SETTINGS = (
    ("sql_time_limit_ms", "5000"),
    ("max_returned_rows", "1000"),
    # Lists show the first 120 characters of a long value (and link to the whole, see
    # config/templates/_table.html); row pages show it whole.
    ("truncate_cells_html", "120"),
    # The metadata names each table's facets; suggestions above the rows are noise.
    ("suggest_facets", "off"),
    # Nobody downloads the live file through Datasette.
    ("allow_download", "off"),
    # Full CSV exports: .csv?_stream=on returns every row, past max_returned_rows.
    ("allow_csv_stream", "on"),
    ("max_csv_mb", "0"),
    ("template_debug", "off"),
    ("trace_debug", "off"),
)


def is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_host(settings, warn):
    """The address Datasette may listen on: the asked one only behind a password."""
    if settings.datasette_password_hash or is_loopback(settings.datasette_host):
        return settings.datasette_host
    warn(
        f"DATASETTE_HOST={settings.datasette_host} ignored: without DATASETTE_PASSWORD_HASH "
        f"Datasette listens on {LOCAL_HOST} only. Set a password (datasette hash-password) "
        f"to serve other addresses."
    )
    return LOCAL_HOST


def datasette_argv(settings, host):
    """The `datasette serve` command line for these settings."""
    argv = [
        sys.executable, "-m", "datasette", "serve", settings.db_path,
        "--host", host, "--port", str(settings.datasette_port),
        "--metadata", str(METADATA), "--plugins-dir", str(PLUGINS_DIR),
        "--template-dir", str(TEMPLATES_DIR), "--static", f"{STATIC_MOUNT}:{STATIC_DIR}",
    ]
    for name, value in SETTINGS:
        argv += ["--setting", name, value]
    return argv


def check_password_hash(password_hash):
    """Refuse a hash datasette-auth-passwords could not check (nobody could log in)."""
    if not PASSWORD_HASH.match(password_hash):
        raise click.UsageError(
            "DATASETTE_PASSWORD_HASH is not a `datasette hash-password` hash "
            "(pbkdf2_sha256$<iterations>$<salt>$<hash>)."
        )
    try:
        import datasette_auth_passwords  # noqa: F401
    except ImportError:
        raise click.UsageError(
            "DATASETTE_PASSWORD_HASH is set but datasette-auth-passwords is not installed."
        ) from None


@click.command("datasette")
@click.option("--db", "database", type=click.Path(dir_okay=False), default=None,
              help="SQLite file (default: $RECEIVER_DB, else var/events.db).")
@click.option("--host", default=None,
              help="Address to listen on (default: $DATASETTE_HOST); anything but loopback "
                   "needs DATASETTE_PASSWORD_HASH.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port (default: $DATASETTE_PORT, else 8001).")
@click.option("--dry-run", is_flag=True, help="Print the datasette command; do not run it.")
def datasette_command(database, host, port, dry_run):
    """Browse the event store in Datasette, read-only, with its metadata, queries and dashboard.

    Creates or migrates the schema first (as `receiver init-db` does), then runs
    `datasette serve`. Without DATASETTE_PASSWORD_HASH it listens on 127.0.0.1 only; with it,
    on DATASETTE_HOST, and every page needs a login as `root`.

    \b
    Example: receiver datasette --port 8001
    Example: DATASETTE_PASSWORD_HASH="$(datasette hash-password)" \\
             DATASETTE_HOST=0.0.0.0 receiver datasette
    """
    overrides = {}
    if database:
        overrides["db_path"] = database
    if host:
        overrides["datasette_host"] = host
    if port is not None:
        overrides["datasette_port"] = port
    settings = load_settings(**overrides)
    if settings.datasette_password_hash:
        check_password_hash(settings.datasette_password_hash)
    listen = listen_host(settings, lambda message: click.echo(f"warning: {message}", err=True))
    argv = datasette_argv(settings, listen)
    if dry_run:
        click.echo(shlex.join(argv))
        return
    before = db.init_db(settings.db_path, synchronous=settings.synchronous,
                        busy_timeout_ms=settings.busy_timeout_ms)
    action = "created" if before == 0 else "checked"
    login = "login required" if settings.datasette_password_hash else "no login"
    click.echo(
        f"{settings.db_path}: schema {action}; Datasette on http://{listen}:{settings.datasette_port} "
        f"({login})",
        err=True,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
