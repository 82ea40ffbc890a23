"""Verify Vonage's signed callbacks: ``Authorization: Bearer <JWT>``, HS256, signature secret.

A callback is genuine only when all of these hold: the token is HS256 (``none``, RS*/ES* and
anything else refused before any key is tried), its signature verifies with the secret of
the account that sent it, its ``payload_hash`` claim equals the hex SHA-256 of the raw body
(compared in constant time), and its ``iat`` is plausible: not in the future beyond a small
skew, not older than the configured age (Vonage retries for 24 hours).
"""

import base64
import binascii
import functools
import hmac
import json
from dataclasses import dataclass

from .callbacks import Rejection

ALGORITHM = "HS256"


@dataclass(frozen=True)
class Signature:
    """What a verified (or unchecked) token said about a callback."""

    status: str  # verified | unsigned (no token, no secret configured) | not_checked
    api_key: str | None = None
    application_id: str | None = None
    jti: str | None = None
    iat: int | None = None
    clock_skew_s: float | None = None


UNSIGNED = Signature("unsigned")


def parse_secrets(single, several):
    """Secrets from VONAGE_SIGNATURE_SECRET and VONAGE_SIGNATURE_SECRETS.

    VONAGE_SIGNATURE_SECRETS is a comma-separated list of ``api_key:secret`` (used for that
    account's tokens) or bare ``secret`` entries (tried for any account, e.g. during rotation).
    Returns a tuple of (api_key or None, secret).
    """
    entries = []
    if single:
        entries.append((None, single))
    for item in (several or "").split(","):
        item = item.strip()
        if not item:
            continue
        api_key, sep, secret = item.partition(":")
        entries.append((api_key, secret) if sep else (None, item))
    if any(not secret for _, secret in entries):
        raise ValueError("VONAGE_SIGNATURE_SECRETS has an entry with an empty secret")
    return tuple(entries)


def _refuse(reason, message):
    return Rejection(401, reason, message, {"Authorization": [message]})


def _b64decode(segment):
    """base64url without padding -> bytes; ValueError when it is not that."""
    if not segment or not segment.isascii():
        raise ValueError("empty or non-ASCII segment")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _claims_object(segment):
    value = json.loads(_b64decode(segment))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


@functools.lru_cache(maxsize=64)
def _algorithm(header_segment):
    """The ``alg`` of a token's header segment. Every token of a sender has the same header:
    it is decoded once (a malformed one raises, and is not remembered)."""
    return _claims_object(header_segment).get("alg")


def keys_of(secrets):
    """(api_key or None, HMAC-SHA256 keyed with the secret) for each of ``secrets``: the key
    schedule done once, each token's check copies it."""
    return tuple((api_key, hmac.new(secret.encode(), digestmod="sha256"))
                 for api_key, secret in secrets)


def verify(authorization, body_sha256, keys, *, now, max_age_s, max_skew_s):
    """Check one callback's token against its body's hex SHA-256; return a Signature or raise
    Rejection(401). ``keys`` are ``keys_of(secrets)``.

    ``now`` is the Unix time the callback arrived (for reprocessing, its original arrival).
    A JWS compact token is verified directly: the header must say HS256 before any key is
    tried, and the HMAC-SHA256 of ``header.payload`` must equal the signature, compared in
    constant time.
    """
    if not authorization:
        raise _refuse("missing_token", "Missing Authorization: Bearer <JWT> header.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _refuse("missing_token", "The Authorization header is not 'Bearer <JWT>'.")
    try:
        header_segment, payload_segment, signature_segment = token.split(".")
        algorithm = _algorithm(header_segment)
        claims = _claims_object(payload_segment)
    except (ValueError, binascii.Error, RecursionError):
        raise _refuse("malformed_token", "The bearer token is not a well-formed JWT.") from None
    if algorithm != ALGORITHM:
        raise _refuse("bad_algorithm", f"Token algorithm {algorithm!r} refused; only HS256.")
    try:
        signature = _b64decode(signature_segment)
    except (ValueError, binascii.Error):
        raise _refuse("bad_signature", "The token's signature is missing or not base64url.") from None
    api_key = claims.get("api_key")
    candidates = [mac for key, mac in keys if key is None or key == api_key]
    if not candidates:
        raise _refuse("unknown_api_key", f"No signature secret configured for api_key {api_key!r}.")
    signed = f"{header_segment}.{payload_segment}".encode("ascii")
    if not any(hmac.compare_digest(_digest(mac, signed), signature) for mac in candidates):
        raise _refuse("bad_signature", "The token's signature does not verify with the secret.")
    claimed = claims.get("payload_hash")
    if not isinstance(claimed, str) or not hmac.compare_digest(
        claimed.lower().encode("utf-8", "replace"), body_sha256.encode()
    ):
        raise _refuse("payload_hash_mismatch",
                      "The token's payload_hash does not match the SHA-256 of the body.")
    iat = claims.get("iat")
    if iat is None:
        raise _refuse("missing_iat", "The token has no iat claim.")
    if isinstance(iat, bool) or not isinstance(iat, (int, float)) or iat != iat:
        raise _refuse("bad_iat", "The token's iat is not a number.")
    for claim, reason in (("exp", "expired_token"), ("nbf", "token_not_yet_valid")):
        if claim in claims and not _number_between(claims[claim], now, claim):
            raise _refuse(reason, f"The token's {claim} claim rules out this time.")
    skew = now - iat
    if skew < -max_skew_s:
        raise _refuse("future_iat", f"The token was issued {-skew:.0f} s in the future.")
    if skew > max_age_s:
        raise _refuse("stale_iat", f"The token was issued {skew:.0f} s ago, more than {max_age_s} s.")
    return Signature(
        "verified", api_key=_text(api_key), application_id=_text(claims.get("application_id")),
        jti=_text(claims.get("jti")), iat=int(iat), clock_skew_s=round(skew, 3),
    )


def _digest(mac, message):
    mac = mac.copy()
    mac.update(message)
    return mac.digest()


def _number_between(value, now, claim):
    """exp must be after ``now``, nbf at or before it (Vonage sends neither today)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value > now if claim == "exp" else value <= now


BASIC_REASONS = ("missing_basic_auth", "bad_basic_auth")


def check_basic(authorization, expected):
    """HTTP Basic credentials against ``expected`` (b"user:password"), in constant time."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise Rejection(401, "missing_basic_auth", "HTTP Basic credentials are required.",
                        {"Authorization": ["Missing 'Basic <credentials>'."]})
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (ValueError, binascii.Error):
        given = b""
    if not hmac.compare_digest(given, expected):
        raise Rejection(401, "bad_basic_auth", "The HTTP Basic credentials are wrong.",
                        {"Authorization": ["Wrong user or password."]})
    return Signature("basic_auth")


def _text(value):
    return None if value is None else str(value)[:200]


class Verifier:
    """The receiver's signature policy, built once from the settings."""

    def __init__(self, settings):
        self.basic = settings.basic_auth.encode("utf-8") if settings.basic_auth else b""
        self.secrets = parse_secrets(settings.signature_secret, settings.signature_secrets)
        self.keys = keys_of(self.secrets)
        self.max_age_s = settings.signature_max_age_s
        self.max_skew_s = settings.signature_max_skew_s

    @property
    def enabled(self):
        return bool(self.secrets)

    def check(self, delivery):
        """Signature of a callback's delivery (store.Delivery: its Authorization, its body's
        hash, its arrival time); Rejection(401) if forged.

        With no secret configured nothing is checked: the result says so (``unsigned``, or
        ``not_checked`` when a token came that could not be checked).
        """
        authorization = delivery.authorization
        if self.basic:
            return check_basic(authorization, self.basic)
        if not self.enabled:
            return Signature("not_checked") if authorization else UNSIGNED
        return verify(authorization, delivery.sha256, self.keys, now=delivery.received_epoch,
                      max_age_s=self.max_age_s, max_skew_s=self.max_skew_s)

    def describe(self):
        """A start-up log line saying what is checked."""
        if self.basic:
            return ("HTTP Basic auth required on the webhook routes (RECEIVER_BASIC_AUTH); "
                    "Vonage signatures are not checked")
        if not self.enabled:
            return ("signatures NOT checked: no VONAGE_SIGNATURE_SECRET set; anyone who knows "
                    "the URL can post callbacks, each stored as unsigned")
        short = [s for _, s in self.secrets if len(s.encode()) < 32]
        note = f" ({len(short)} secret(s) shorter than 32 bytes)" if short else ""
        return (f"signatures checked: HS256 with {len(self.secrets)} secret(s){note}, "
                f"iat at most {self.max_age_s} s old and {self.max_skew_s} s ahead")
