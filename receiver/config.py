"""Every setting the receiver reads, read from the environment in this one place
(config/gunicorn.conf.py reads its settings from here too)."""

import os
from dataclasses import dataclass, field, fields

MIB = 1024 * 1024


def default_workers():
    """gunicorn workers: one more than cores, each with GUNICORN_THREADS request threads
    (config/gunicorn.conf.py says why)."""
    return (os.cpu_count() or 1) + 1


@dataclass(frozen=True)
class Settings:
    """The receiver's settings; see the README's table for what each one does."""

    db_path: str = "var/events.db"
    # The webhook receiver (gunicorn) listens here; put TLS in front of it (see README).
    host: str = "0.0.0.0"
    port: int = 8000
    datasette_port: int = 8001
    # Datasette listens on this address only when a password is set; else on 127.0.0.1.
    datasette_host: str = "127.0.0.1"
    # Made with `datasette hash-password`; when set, every Datasette page needs a login.
    datasette_password_hash: str = ""
    max_body_bytes: int = 1 * MIB
    # FULL: every acknowledged callback is synced to disk before the 200. NORMAL trades the
    # last few commits on power loss (not on a process crash) for speed; off by default.
    synchronous: str = "FULL"
    busy_timeout_ms: int = 10_000
    # How long a request waits for its group commit before answering 503.
    commit_timeout_s: float = 10.0
    # Most callbacks one group commit takes at once.
    max_batch: int = 256
    # Number of proxies in front of the receiver whose X-Forwarded-For to trust (0: none).
    proxy_hops: int = 0
    log_level: str = "INFO"
    # Vonage signature secrets; with none set, callbacks are accepted unsigned (logged at start).
    signature_secret: str = ""
    signature_secrets: str = ""
    # A token's iat may be this old (Vonage retries for 24 h) or this far in the future.
    signature_max_age_s: int = 25 * 3600
    signature_max_skew_s: int = 300
    # "user:password" for HTTP Basic auth on the webhook routes (instead of signatures).
    basic_auth: str = ""
    # gunicorn (config/gunicorn.conf.py): worker processes, their class and threads, how much
    # lower their CPU priority is than the writer process's (every request waits for it), when
    # a stuck one is restarted or any one recycled, and the access log ("": none).
    web_concurrency: int = field(default_factory=default_workers)
    worker_class: str = "gthread"
    threads: int = 8
    worker_nice: int = 0
    worker_timeout_s: int = 30
    max_requests: int = 0
    access_log: str = "-"
    # `receiver prune --retention` removes event rows older than this many days (0: off).
    retention_days: int = 0
    # When set, GET /metrics needs "Authorization: Bearer <token>".
    metrics_token: str = ""
    # "text" (for a terminal) or "json" (one object per line, for a log pipeline).
    log_format: str = "text"
    # `receiver vonage-records fetch`: the Reports API, its credentials and the account reported
    # on ("": the API key's own account).
    vonage_api_key: str = ""
    vonage_api_secret: str = ""
    vonage_account_id: str = ""
    vonage_reports_url: str = "https://api.nexmo.com"


# Setting name -> (environment variable, parser)
ENVIRONMENT = {
    "db_path": ("RECEIVER_DB", str),
    "host": ("HOST", str),
    "port": ("PORT", int),
    "datasette_port": ("DATASETTE_PORT", int),
    "datasette_host": ("DATASETTE_HOST", str),
    "datasette_password_hash": ("DATASETTE_PASSWORD_HASH", str),
    "max_body_bytes": ("RECEIVER_MAX_BODY_BYTES", int),
    "synchronous": ("RECEIVER_SYNCHRONOUS", str.upper),
    "busy_timeout_ms": ("RECEIVER_BUSY_TIMEOUT_MS", int),
    "commit_timeout_s": ("RECEIVER_COMMIT_TIMEOUT_S", float),
    "max_batch": ("RECEIVER_MAX_BATCH", int),
    "proxy_hops": ("RECEIVER_PROXY_HOPS", int),
    "log_level": ("RECEIVER_LOG_LEVEL", str.upper),
    "signature_secret": ("VONAGE_SIGNATURE_SECRET", str),
    "signature_secrets": ("VONAGE_SIGNATURE_SECRETS", str),
    "signature_max_age_s": ("VONAGE_SIGNATURE_MAX_AGE_S", int),
    "signature_max_skew_s": ("VONAGE_SIGNATURE_MAX_SKEW_S", int),
    "basic_auth": ("RECEIVER_BASIC_AUTH", str),
    "web_concurrency": ("WEB_CONCURRENCY", int),
    "worker_class": ("GUNICORN_WORKER_CLASS", str),
    "threads": ("GUNICORN_THREADS", int),
    "worker_nice": ("GUNICORN_WORKER_NICE", int),
    "worker_timeout_s": ("GUNICORN_TIMEOUT", int),
    "max_requests": ("GUNICORN_MAX_REQUESTS", int),
    "access_log": ("GUNICORN_ACCESS_LOG", str),
    "retention_days": ("RECEIVER_RETENTION_DAYS", int),
    "metrics_token": ("RECEIVER_METRICS_TOKEN", str),
    "log_format": ("RECEIVER_LOG_FORMAT", str.lower),
    "vonage_api_key": ("VONAGE_API_KEY", str),
    "vonage_api_secret": ("VONAGE_API_SECRET", str),
    "vonage_account_id": ("VONAGE_ACCOUNT_ID", str),
    "vonage_reports_url": ("VONAGE_REPORTS_URL", str),
}

# Settings for which an empty variable is a value, not "unset" (GUNICORN_ACCESS_LOG="": none).
EMPTY_IS_A_VALUE = ("access_log",)
EXPECTED = {int: "a whole number", float: "a number"}

SECRET_SETTINGS = ("signature_secret", "signature_secrets", "datasette_password_hash", "basic_auth",
                   "metrics_token", "vonage_api_secret")

SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")

LOG_FORMATS = ("text", "json")


def load_settings(environ=None, **overrides):
    """Build Settings from the environment (``os.environ`` by default), then ``overrides``."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, (variable, parse) in ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw is not None and (raw != "" or name in EMPTY_IS_A_VALUE):
            try:
                values[name] = parse(raw)
            except ValueError:
                expected = EXPECTED.get(parse)
                raise ValueError(f"{variable}={raw!r} is not a valid value"
                                 + (f": expected {expected}" if expected else "")) from None
    values.update(overrides)
    settings = Settings(**values)
    check(settings)
    return settings


# Setting name -> (lowest, highest) value the server can use (None: no bound).
RANGES = {
    "port": (0, 65535),  # 0: any free port
    "datasette_port": (0, 65535),
    "max_body_bytes": (1, None),
    "busy_timeout_ms": (0, None),
    "commit_timeout_s": (0.001, None),
    "max_batch": (1, None),
    "proxy_hops": (0, None),
    "signature_max_age_s": (1, None),
    "signature_max_skew_s": (0, None),
    "web_concurrency": (1, None),
    "threads": (1, None),
    "worker_nice": (0, 19),  # a worker may lower its priority, never raise it
    "worker_timeout_s": (0, None),  # 0: never restart a stuck worker
    "max_requests": (0, None),  # 0: never recycle
    "retention_days": (0, None),  # 0: off
}

# Setting name -> the values it may take.
CHOICES = {
    "synchronous": SYNCHRONOUS_MODES,
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    "log_format": LOG_FORMATS,
    # What the receiver runs on and is tested with; gevent or eventlet would need their
    # packages and a cooperative writer connection, which it does not have.
    "worker_class": ("sync", "gthread"),
}


def check(settings):
    """Refuse, with one ValueError naming the variable, any value the server could not use:
    `receiver config`, gunicorn and Datasette all load settings through here."""
    for name, (low, high) in RANGES.items():
        value = getattr(settings, name)
        if not (low is None or value >= low) or not (high is None or value <= high):
            bounds = (f"from {low} to {high}" if high is not None else f"at least {low}")
            raise ValueError(f"{ENVIRONMENT[name][0]} must be {bounds}, not {value}")
    for name, choices in CHOICES.items():
        if getattr(settings, name) not in choices:
            raise ValueError(f"{ENVIRONMENT[name][0]} must be one of {', '.join(choices)}, "
                             f"not {getattr(settings, name)!r}")
    if settings.basic_auth and ":" not in settings.basic_auth:
        raise ValueError("RECEIVER_BASIC_AUTH must be user:password")
    if settings.basic_auth and (settings.signature_secret or settings.signature_secrets):
        raise ValueError(
            "RECEIVER_BASIC_AUTH and VONAGE_SIGNATURE_SECRET(S) both need the Authorization "
            "header (Basic credentials vs Vonage's Bearer token): set one of them"
        )
    from .signatures import parse_secrets

    if settings.signature_secrets and not parse_secrets("", settings.signature_secrets):
        raise ValueError(f"VONAGE_SIGNATURE_SECRETS={settings.signature_secrets!r} holds no secret "
                         "(a comma-separated list of secret or api_key:secret); unset it to "
                         "accept unsigned callbacks")
    if settings.access_log not in ("", "-") and not os.path.isdir(
            os.path.dirname(os.path.abspath(settings.access_log))):
        raise ValueError(f"GUNICORN_ACCESS_LOG={settings.access_log}: its directory does not exist")
    from .db import DatabaseError, check_directory

    try:
        check_directory(settings.db_path)
    except DatabaseError as error:
        raise ValueError(str(error)) from None


def describe(settings):
    """One line per setting, for the start-up log and ``receiver config``."""
    names = {f.name for f in fields(settings)}
    lines = []
    for name in ENVIRONMENT:
        if name in names:
            value = getattr(settings, name)
            if name in SECRET_SETTINGS and value:
                value = "(set, hidden)"
            lines.append(f"{ENVIRONMENT[name][0]}={value}")
    return lines
