"""Verify Vonage's signed callbacks: ``Authorization: Bearer <JWT>``, HS256, signature secret.

A callback is genuine only when all of these hold: the token is HS256 (``none``, RS*/ES* and
anything else refused before any key is tried), its signature verifies with the secret of
the account that sent it, its ``payload_hash`` claim equals the hex SHA-256 of the raw body
(compared in constant time), and its ``iat`` is plausible: not in the future beyond a small
skew, not older than the configured age (Vonage retries for 24 hours).
"""

import hashlib
import hmac
import warnings
from dataclasses import dataclass

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from .callbacks import Rejection

# The secret's length is the account's choice, not ours to refuse; start-up logs a warning
# once instead of PyJWT warning on every request.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning, module="jwt")

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


def verify(authorization, body, secrets, *, now, max_age_s, max_skew_s):
    """Check one callback's token against ``body``; return a Signature or raise Rejection(401).

    ``now`` is the Unix time the callback arrived (for reprocessing, its original arrival).
    """
    if not authorization:
        raise _refuse("missing_token", "Missing Authorization: Bearer <JWT> header.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _refuse("missing_token", "The Authorization header is not 'Bearer <JWT>'.")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _refuse("malformed_token", "The bearer token is not a well-formed JWT.") from None
    if header.get("alg") != ALGORITHM:
        raise _refuse("bad_algorithm", f"Token algorithm {header.get('alg')!r} refused; only HS256.")
    api_key = unverified.get("api_key")
    candidates = [s for key, s in secrets if key is None or key == api_key]
    if not candidates:
        raise _refuse("unknown_api_key", f"No signature secret configured for api_key {api_key!r}.")
    claims = None
    for secret in candidates:
        try:
            claims = jwt.decode(
                token, secret, algorithms=[ALGORITHM],
                options={"require": ["iat"], "verify_exp": True, "verify_iat": False,
                         "verify_nbf": True, "verify_aud": False, "verify_iss": False},
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.MissingRequiredClaimError:
            raise _refuse("missing_iat", "The token has no iat claim.") from None
        except jwt.PyJWTError as error:
            raise _refuse("bad_token", f"The token was refused: {error}.") from None
    if claims is None:
        raise _refuse("bad_signature", "The token's signature does not verify with the secret.")
    expected = hashlib.sha256(body).hexdigest()
    claimed = claims.get("payload_hash")
    if not isinstance(claimed, str) or not hmac.compare_digest(claimed.lower().encode(), expected.encode()):
        raise _refuse("payload_hash_mismatch",
                      "The token's payload_hash does not match the SHA-256 of the body.")
    iat = claims["iat"]
    if isinstance(iat, bool) or not isinstance(iat, (int, float)):
        raise _refuse("bad_iat", "The token's iat is not a number.")
    skew = now - iat
    if skew < -max_skew_s:
        raise _refuse("future_iat", f"The token was issued {-skew:.0f} s in the future.")
    if skew > max_age_s:
        raise _refuse("stale_iat", f"The token was issued {skew:.0f} s ago, more than {max_age_s} s.")
    return Signature(
        "verified", api_key=_text(api_key), application_id=_text(claims.get("application_id")),
        jti=_text(claims.get("jti")), iat=int(iat), clock_skew_s=round(skew, 3),
    )


def _text(value):
    return None if value is None else str(value)[:200]


class Verifier:
    """The receiver's signature policy, built once from the settings."""

    def __init__(self, settings):
        self.secrets = parse_secrets(settings.signature_secret, settings.signature_secrets)
        self.max_age_s = settings.signature_max_age_s
        self.max_skew_s = settings.signature_max_skew_s

    @property
    def enabled(self):
        return bool(self.secrets)

    def check(self, authorization, body, now):
        """Signature of a callback that arrived at Unix time ``now``; Rejection(401) if forged.

        With no secret configured nothing is checked: the result says so (``unsigned``, or
        ``not_checked`` when a token came that could not be checked).
        """
        if not self.enabled:
            return Signature("not_checked") if authorization else UNSIGNED
        return verify(authorization, body, self.secrets, now=now,
                      max_age_s=self.max_age_s, max_skew_s=self.max_skew_s)

    def describe(self):
        """A start-up log line saying what is checked."""
        if not self.enabled:
            return ("signatures NOT checked: no VONAGE_SIGNATURE_SECRET set; anyone who knows "
                    "the URL can post callbacks, each stored as unsigned")
        short = [s for _, s in self.secrets if len(s.encode()) < 32]
        note = f" ({len(short)} secret(s) shorter than 32 bytes)" if short else ""
        return (f"signatures checked: HS256 with {len(self.secrets)} secret(s){note}, "
                f"iat at most {self.max_age_s} s old and {self.max_skew_s} s ahead")
