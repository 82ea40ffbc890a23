"""Every setting the receiver reads, read from the environment in this one place."""

import os
from dataclasses import dataclass, fields

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """The receiver's settings; see the README's table for what each one does."""

    db_path: str = "var/events.db"
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


# Setting name -> (environment variable, parser)
ENVIRONMENT = {
    "db_path": ("RECEIVER_DB", str),
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
}

SECRET_SETTINGS = ("signature_secret", "signature_secrets", "datasette_password_hash", "basic_auth")

SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")


def load_settings(environ=None, **overrides):
    """Build Settings from the environment (``os.environ`` by default), then ``overrides``."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, (variable, parse) in ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw not in (None, ""):
            try:
                values[name] = parse(raw)
            except ValueError:
                raise ValueError(f"{variable}={raw!r} is not a valid value") from None
    values.update(overrides)
    settings = Settings(**values)
    if settings.synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(
            f"RECEIVER_SYNCHRONOUS must be one of {', '.join(SYNCHRONOUS_MODES)}, "
            f"not {settings.synchronous!r}"
        )
    if settings.basic_auth and ":" not in settings.basic_auth:
        raise ValueError("RECEIVER_BASIC_AUTH must be user:password")
    if settings.basic_auth and (settings.signature_secret or settings.signature_secrets):
        raise ValueError(
            "RECEIVER_BASIC_AUTH and VONAGE_SIGNATURE_SECRET(S) both need the Authorization "
            "header (Basic credentials vs Vonage's Bearer token): set one of them"
        )
    if settings.max_body_bytes <= 0:
        raise ValueError("RECEIVER_MAX_BODY_BYTES must be positive")
    return settings


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
