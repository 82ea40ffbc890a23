"""Vonage-style signature tokens for tests and benchmarks: an HS256 JWT whose claims carry
the body's SHA-256 (``payload_hash``), as Vonage signs a callback.

Made with PyJWT, so the tests check the receiver's own verifier (receiver/signatures.py)
against another implementation.
"""

import hashlib
import time
import uuid

import jwt

API_KEY = "abcd1234"
APPLICATION_ID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"


def claims_for(body, *, iat=None, api_key=API_KEY, application_id=APPLICATION_ID, jti=None,
               **extra):
    """The claims Vonage puts in a callback's token; a claim given as None is left out."""
    claims = {
        "iat": int(time.time()) if iat is None else iat,
        "jti": jti or str(uuid.uuid4()),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": api_key,
        "application_id": application_id,
    }
    claims.update(extra)
    return {key: value for key, value in claims.items() if value is not None}


def make_token(body, secret, *, algorithm="HS256", drop=(), **claim_args):
    """A signed JWT for ``body`` (bytes); ``drop`` names claims to leave out."""
    claims = claims_for(body, **claim_args)
    for name in drop:
        claims.pop(name, None)
    return jwt.encode(claims, secret, algorithm=algorithm)


def bearer(token):
    return f"Bearer {token}"


def authorization(body, secret, **claim_args):
    """The ``Authorization`` header value Vonage would send with ``body``."""
    return bearer(make_token(body, secret, **claim_args))
