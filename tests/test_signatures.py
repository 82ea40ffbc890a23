"""Signed callbacks: ``Authorization: Bearer <JWT>`` (HS256, payload_hash, iat window).

What a user relies on: with a signature secret configured, only callbacks whose token was
signed with the account's secret *for these exact body bytes* and recently enough are stored
(with what the token said about them); everything else is answered 401 and kept verbatim,
with its Authorization header, in ``rejected_callbacks`` so it can be reprocessed once a
misconfigured secret is fixed. Without a secret, nothing is checked and the callbacks row
says so.

Every test builds its own database and app; tokens are made with PyJWT as Vonage makes them.
"""

import base64
import hashlib
import json
import sqlite3
import time
import uuid
from datetime import datetime, timezone

import warnings

import jwt
import pytest
import vonage_jwt
from click.testing import CliRunner

import payloads
from receiver import create_app
from receiver.cli import cli
from receiver.db import init_db
from receiver.signatures import parse_secrets
from testing import signing
from testing.signing import API_KEY, APPLICATION_ID, bearer, claims_for

# 64-byte secrets: long enough for HS256 and for the HS512 token below without PyJWT's
# InsecureKeyLengthWarning (an error under this suite's filterwarnings).
SECRET = hashlib.sha256(b"the account's real signature secret").hexdigest()
WRONG_SECRET = hashlib.sha256(b"a secret the operator mistyped").hexdigest()
ATTACKER_SECRET = hashlib.sha256(b"a secret nobody configured").hexdigest()
SECRET_A = hashlib.sha256(b"secret of api key key1").hexdigest()
SECRET_B = hashlib.sha256(b"secret of api key key2").hexdigest()
SECRET_C = hashlib.sha256(b"a bare rotation secret").hexdigest()

DEFAULT_MAX_AGE_S = 25 * 3600
DEFAULT_MAX_SKEW_S = 300

SIGNATURE_ENV = (
    "VONAGE_SIGNATURE_SECRET",
    "VONAGE_SIGNATURE_SECRETS",
    "VONAGE_SIGNATURE_MAX_AGE_S",
    "VONAGE_SIGNATURE_MAX_SKEW_S",
    "RECEIVER_DB",
)


@pytest.fixture(autouse=True)
def clean_signature_env(monkeypatch):
    """The app reads its settings from the environment: start every test from none set."""
    for name in SIGNATURE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "events.db"
    init_db(str(path))
    return path


def make_client(db_path, **settings):
    app = create_app({"db_path": str(db_path), **settings})
    return app.test_client()


@pytest.fixture
def client(db_path):
    """An app with the one right secret configured."""
    return make_client(db_path, signature_secret=SECRET)


def body_bytes(**changes):
    return payloads.dumps(payloads.status(payloads.new_uuid(), payloads.new_uuid(), **changes))


def make_token(body, secret=SECRET, **kwargs):
    """A Vonage-style token for ``body`` signed with ``secret`` (the one right secret)."""
    return signing.make_token(body, secret, **kwargs)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_token_labelled(alg, claims):
    """A token whose header names ``alg`` (RS256, ES256...) with a signature nobody can check."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{b64url(hashlib.sha512(payload.encode()).digest() * 4)}"


def post(client, body, authorization=None, path="/webhooks/vonage"):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.post(path, data=body, headers=headers, content_type="application/json")
    agree_with_vonages_verifier(client, authorization, response)
    return response


# Our refusals that come before (or instead of) checking the token's signature; any other
# answer means the signature itself verified.
SIGNATURE_REASONS = {"missing_token", "malformed_token", "bad_algorithm", "bad_signature",
                     "unknown_api_key"}


def vonages_verdict(token, secrets):
    """Vonage's Python SDK's verifier with each secret that could apply: True, False, or the
    name of what it raised (it raises on what it will not decide, e.g. an iat in the future)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        api_key = claims.get("api_key") if isinstance(claims, dict) else None
    except jwt.PyJWTError:
        api_key = None
    verdicts = []
    for key, secret in secrets:
        if key is not None and key != api_key:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # short test secrets: InsecureKeyLengthWarning
            try:
                verdicts.append(vonage_jwt.verify_signature(token, secret))
            except vonage_jwt.VonageVerifyJwtError as error:
                verdicts.append(str(error).split("(", 1)[0])
    return True if True in verdicts else (verdicts[0] if verdicts else False)


def agree_with_vonages_verifier(client, authorization, response):
    """Every signed post: where our verdict is on the signature, Vonage's verifier agrees."""
    settings = client.application.config["RECEIVER_SETTINGS"]
    secrets = parse_secrets(settings.signature_secret, settings.signature_secrets)
    if not secrets or not authorization or not authorization.startswith("Bearer "):
        return
    token = authorization.removeprefix("Bearer ").strip()
    ours = response.get_json().get("reason") if response.status_code == 401 else "stored"
    theirs = vonages_verdict(token, secrets)
    if ours in SIGNATURE_REASONS:
        assert theirs is not True, f"we refused ({ours}) a token Vonage's verifier accepts"
    elif ours == "stored":
        # PyJWT refuses any iat ahead of its clock; we allow VONAGE_SIGNATURE_MAX_SKEW_S.
        assert theirs in (True, "ImmatureSignatureError"), theirs
    else:
        # The signature verified and we refused a claim (payload_hash, iat, exp, nbf): theirs
        # accepts the signature too, and at most refuses the claims PyJWT checks itself.
        assert theirs in (True, *CLAIM_ERRORS), f"Vonage's verifier says {theirs!r} where ours says {ours}"


# What PyJWT (inside Vonage's verifier) raises about the claims it checks: iat, exp, nbf.
CLAIM_ERRORS = ("ImmatureSignatureError", "ExpiredSignatureError", "InvalidIssuedAtError")


def query(db_path, sql, params=()):
    conn = sqlite3.connect(str(db_path))
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def count(db_path, table):
    return query(db_path, f"SELECT count(*) AS n FROM {table}")[0]["n"]


def callback_row(db_path, callback_id):
    (row,) = query(db_path, "SELECT * FROM callbacks WHERE id = ?", (callback_id,))
    return row


def assert_refused(db_path, response, reason, body, authorization):
    """401 with ``reason``; the body kept verbatim with its header; nothing stored as a callback."""
    assert response.status_code == 401, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["reason"] == reason
    assert answer["code"] == 401
    assert answer["errors"]["json"]["Authorization"], answer
    (row,) = query(db_path, "SELECT * FROM rejected_callbacks WHERE id = ?", (answer["rejected_id"],))
    assert row["reason"] == reason
    assert row["http_status"] == 401
    assert row["body"] == body.decode("utf-8")
    assert row["body_bytes"] == len(body)
    assert row["sha256"] == hashlib.sha256(body).hexdigest()
    assert row["authorization"] == authorization
    assert json.loads(row["error"])["reason"] == reason
    assert row["reprocessed_at"] is None
    assert count(db_path, "callbacks") == 0
    assert count(db_path, "status_events") == 0
    assert count(db_path, "final_reports") == 0
    return row


def epoch(iso):
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


# --- a genuine callback --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["message_status", "final_report"])
@pytest.mark.parametrize("path", ["/webhooks/vonage", "/webhooks/message-status", "/webhooks/final-report"])
def test_genuine_token_is_stored_with_what_it_says(db_path, client, kind, path):
    if kind == "message_status":
        body = body_bytes(price="0.0333")
    else:
        body = payloads.dumps(payloads.final_report(messages=[(payloads.new_uuid(), "sms", "delivered", "0.0333")]))
    iat = int(time.time()) - 3
    jti = str(uuid.uuid4())
    token = make_token(body, iat=iat, jti=jti)

    response = post(client, body, bearer(token), path)

    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["status"] == "stored"
    assert answer["kind"] == kind
    row = callback_row(db_path, answer["callback_id"])
    assert row["signature_status"] == "verified"
    assert row["api_key"] == API_KEY
    assert row["application_id"] == APPLICATION_ID
    assert row["jti"] == jti
    assert row["iat"] == iat
    # Arrival time minus iat, as the receiver saw it.
    assert row["clock_skew_s"] == pytest.approx(epoch(row["received_at"]) - iat, abs=0.002)
    assert 2.5 <= row["clock_skew_s"] < 60
    assert row["body"] == body.decode("utf-8")
    assert count(db_path, "rejected_callbacks") == 0
    table = "status_events" if kind == "message_status" else "final_reports"
    assert query(db_path, f"SELECT count(*) AS n FROM {table} WHERE callback_id = ?",
                 (answer["callback_id"],))[0]["n"] == 1


def test_token_without_application_id_is_verified(db_path, client):
    body = body_bytes()
    response = post(client, body, bearer(make_token(body, application_id=None)))
    assert response.status_code == 200, response.get_data(as_text=True)
    row = callback_row(db_path, response.get_json()["callback_id"])
    assert row["signature_status"] == "verified"
    assert row["application_id"] is None
    assert row["api_key"] == API_KEY


def test_replayed_signed_callback_adds_no_event(db_path, client):
    """A captured genuine callback sent again is only counted as a repeat delivery."""
    body = body_bytes()
    authorization = bearer(make_token(body))
    first = post(client, body, authorization)
    again = post(client, body, authorization)
    assert first.status_code == again.status_code == 200
    assert again.get_json()["status"] == "duplicate"
    assert again.get_json()["callback_id"] == first.get_json()["callback_id"]
    assert count(db_path, "callbacks") == 1
    assert count(db_path, "status_events") == 1
    assert callback_row(db_path, first.get_json()["callback_id"])["delivery_count"] == 2


def test_retry_with_fresh_token_keeps_first_delivery_signature(db_path, client):
    body = body_bytes()
    first_jti, retry_jti = str(uuid.uuid4()), str(uuid.uuid4())
    first = post(client, body, bearer(make_token(body, jti=first_jti, iat=int(time.time()) - 30)))
    retry = post(client, body, bearer(make_token(body, jti=retry_jti)))
    assert first.status_code == retry.status_code == 200
    assert retry.get_json()["status"] == "duplicate"
    row = callback_row(db_path, first.get_json()["callback_id"])
    assert row["jti"] == first_jti
    assert row["delivery_count"] == 2


# --- the body must be the one that was signed ---------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda b: b + b" ", id="trailing-space"),
        pytest.param(lambda b: b + b"\n", id="trailing-newline"),
        pytest.param(lambda b: b" " + b, id="leading-space"),
        pytest.param(lambda b: b.replace(b'": ', b'":', 1), id="one-space-less"),
        pytest.param(lambda b: json.dumps(json.loads(b), indent=2).encode(), id="same-json-reformatted"),
        pytest.param(lambda b: b.replace(b"447700900001", b"447700900002"), id="one-digit-changed"),
        pytest.param(lambda b: b.replace(b"delivered", b"rejected"), id="status-changed"),
    ],
)
def test_body_changed_after_signing_is_refused(db_path, client, change):
    signed = body_bytes()
    sent = change(signed)
    assert sent != signed
    authorization = bearer(make_token(signed))
    response = post(client, sent, authorization)
    assert_refused(db_path, response, "payload_hash_mismatch", sent, authorization)


def test_token_without_payload_hash_is_refused(db_path, client):
    body = body_bytes()
    authorization = bearer(make_token(body, drop=("payload_hash",)))
    assert_refused(db_path, post(client, body, authorization), "payload_hash_mismatch", body, authorization)


def test_token_of_another_genuine_callback_is_refused(db_path, client):
    """A real token lifted from one callback does not carry another body."""
    genuine = body_bytes()
    forged = body_bytes(status="rejected")
    authorization = bearer(make_token(genuine))
    assert post(client, genuine, authorization).status_code == 200
    response = post(client, forged, authorization)
    assert response.status_code == 401
    assert response.get_json()["reason"] == "payload_hash_mismatch"
    assert count(db_path, "callbacks") == 1
    assert count(db_path, "status_events") == 1


# --- every reason a token is refused ------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("", id="empty-header"),
        pytest.param("Basic dXNlcjpwYXNzd29yZA==", id="basic-auth"),
        pytest.param("Bearer", id="bearer-without-token"),
        pytest.param("Bearer    ", id="bearer-blank-token"),
        pytest.param("Token abc.def.ghi", id="other-scheme"),
    ],
)
def test_missing_token(db_path, client, authorization):
    body = body_bytes()
    response = post(client, body, authorization)
    # The header is kept exactly as sent (none at all stays NULL).
    assert_refused(db_path, response, "missing_token", body, authorization)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not-a-jwt", id="no-dots"),
        pytest.param("a.b.c", id="not-base64-json"),
        pytest.param(b64url(b'{"alg":"HS256"}') + ".e30", id="two-segments"),
        pytest.param(b64url(b"[1,2]") + "." + b64url(b"{}") + ".sig", id="header-not-object"),
        pytest.param(b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(b"not json") + ".c2ln",
                     id="claims-not-json"),
    ],
)
def test_malformed_token(db_path, client, token):
    body = body_bytes()
    authorization = bearer(token)
    assert_refused(db_path, post(client, body, authorization), "malformed_token", body, authorization)


def test_truncated_token_is_refused(db_path, client):
    body = body_bytes()
    good = make_token(body)
    authorization = bearer(good[: good.rindex(".")])
    assert_refused(db_path, post(client, body, authorization), "malformed_token", body, authorization)


def _alg_none(body):
    return jwt.encode(claims_for(body), None, algorithm="none")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_alg_none, id="alg-none"),
        pytest.param(lambda body: unsigned_token_labelled("RS256", claims_for(body)), id="RS256"),
        pytest.param(lambda body: unsigned_token_labelled("ES256", claims_for(body)), id="ES256"),
        pytest.param(lambda body: unsigned_token_labelled("none", claims_for(body)), id="alg-none-with-signature"),
        pytest.param(lambda body: unsigned_token_labelled("hs256", claims_for(body)), id="hs256-lowercase"),
        # Signed with the right secret and the right body: HS512 is still not what Vonage uses.
        pytest.param(lambda body: make_token(body, algorithm="HS512"), id="HS512-right-secret"),
        pytest.param(lambda body: make_token(body, algorithm="HS384"), id="HS384-right-secret"),
    ],
)
def test_bad_algorithm(db_path, client, make):
    body = body_bytes()
    authorization = bearer(make(body))
    assert_refused(db_path, post(client, body, authorization), "bad_algorithm", body, authorization)


def test_wrong_secret_is_bad_signature(db_path, client):
    body = body_bytes()
    authorization = bearer(make_token(body, ATTACKER_SECRET))
    assert_refused(db_path, post(client, body, authorization), "bad_signature", body, authorization)


def test_claims_swapped_under_a_genuine_signature_are_refused(db_path, client):
    """Re-pointing payload_hash at a forged body while keeping Vonage's signature fails."""
    genuine = body_bytes()
    forged = body_bytes(status="rejected")
    header, _, signature = make_token(genuine).split(".")
    payload = b64url(json.dumps(claims_for(forged)).encode())
    authorization = bearer(f"{header}.{payload}.{signature}")
    assert_refused(db_path, post(client, forged, authorization), "bad_signature", forged, authorization)


def test_stale_iat_is_refused(db_path, client):
    body = body_bytes()
    authorization = bearer(make_token(body, iat=int(time.time()) - DEFAULT_MAX_AGE_S - 120))
    assert_refused(db_path, post(client, body, authorization), "stale_iat", body, authorization)


def test_token_of_a_retry_a_day_later_is_accepted(db_path, client):
    """Vonage retries for 24 h; whether a retry carries a fresh token is undocumented."""
    body = body_bytes()
    iat = int(time.time()) - 24 * 3600
    response = post(client, body, bearer(make_token(body, iat=iat)))
    assert response.status_code == 200, response.get_data(as_text=True)
    row = callback_row(db_path, response.get_json()["callback_id"])
    assert row["iat"] == iat
    assert 24 * 3600 <= row["clock_skew_s"] < 24 * 3600 + 60


def test_future_iat_is_refused(db_path, client):
    body = body_bytes()
    authorization = bearer(make_token(body, iat=int(time.time()) + DEFAULT_MAX_SKEW_S + 120))
    assert_refused(db_path, post(client, body, authorization), "future_iat", body, authorization)


def test_iat_slightly_ahead_is_accepted_with_negative_skew(db_path, client):
    body = body_bytes()
    iat = int(time.time()) + 120
    response = post(client, body, bearer(make_token(body, iat=iat)))
    assert response.status_code == 200, response.get_data(as_text=True)
    row = callback_row(db_path, response.get_json()["callback_id"])
    assert -121 <= row["clock_skew_s"] <= -60


def test_missing_iat_is_refused(db_path, client):
    body = body_bytes()
    authorization = bearer(make_token(body, drop=("iat",)))
    assert_refused(db_path, post(client, body, authorization), "missing_iat", body, authorization)


@pytest.mark.parametrize("iat", ["yesterday", "1700000000", True, [1700000000]], ids=repr)
def test_iat_that_is_not_a_number_is_refused(db_path, client, iat):
    body = body_bytes()
    authorization = bearer(make_token(body, iat=iat))
    response = post(client, body, authorization)
    assert_refused(db_path, response, response.get_json().get("reason"), body, authorization)
    assert response.get_json()["reason"] in {"bad_iat", "bad_token"}


@pytest.mark.parametrize(
    "claim, offset, reason",
    [("exp", -60, "expired_token"), ("nbf", +60, "token_not_yet_valid")],
)
def test_exp_and_nbf_are_honoured_when_present(db_path, client, claim, offset, reason):
    """Vonage sends neither; a token that carries one is held to it."""
    body = body_bytes()
    authorization = bearer(make_token(body, **{claim: int(time.time()) + offset}))
    assert_refused(db_path, post(client, body, authorization), reason, body, authorization)


@pytest.mark.parametrize("claim, offset", [("exp", +3600), ("nbf", -60)])
def test_exp_and_nbf_that_allow_now_are_accepted(db_path, client, claim, offset):
    body = body_bytes()
    response = post(client, body, bearer(make_token(body, **{claim: int(time.time()) + offset})))
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("signature", ["", "not*base64", "x"], ids=["empty", "not-base64", "one-char"])
def test_signature_segment_that_is_not_a_signature_is_refused(db_path, client, signature):
    body = body_bytes()
    header, payload, _ = make_token(body).split(".")
    authorization = bearer(f"{header}.{payload}.{signature}")
    response = post(client, body, authorization)
    assert response.status_code == 401
    assert response.get_json()["reason"] in {"bad_signature", "malformed_token"}
    assert count(db_path, "callbacks") == 0


def test_freshness_window_is_configurable(db_path, monkeypatch):
    monkeypatch.setenv("VONAGE_SIGNATURE_SECRET", SECRET)
    monkeypatch.setenv("VONAGE_SIGNATURE_MAX_AGE_S", "60")
    monkeypatch.setenv("VONAGE_SIGNATURE_MAX_SKEW_S", "10")
    client = make_client(db_path)
    now = int(time.time())

    old = body_bytes()
    old_auth = bearer(make_token(old, iat=now - 180))
    assert post(client, old, old_auth).get_json()["reason"] == "stale_iat"
    ahead = body_bytes()
    ahead_auth = bearer(make_token(ahead, iat=now + 70))
    assert post(client, ahead, ahead_auth).get_json()["reason"] == "future_iat"
    recent = body_bytes()
    assert post(client, recent, bearer(make_token(recent, iat=now - 20))).status_code == 200
    assert count(db_path, "callbacks") == 1
    assert count(db_path, "rejected_callbacks") == 2


# --- several accounts and key rotation ----------------------------------------------------


def test_per_api_key_secrets(db_path, monkeypatch):
    monkeypatch.setenv("VONAGE_SIGNATURE_SECRETS", f"key1:{SECRET_A},key2:{SECRET_B}")
    client = make_client(db_path)

    body = body_bytes()
    response = post(client, body, bearer(make_token(body, SECRET_B, api_key="key2")))
    assert response.status_code == 200, response.get_data(as_text=True)
    row = callback_row(db_path, response.get_json()["callback_id"])
    assert (row["signature_status"], row["api_key"]) == ("verified", "key2")

    body = body_bytes()
    response = post(client, body, bearer(make_token(body, SECRET_A, api_key="key1")))
    assert response.status_code == 200
    assert callback_row(db_path, response.get_json()["callback_id"])["api_key"] == "key1"

    # key2's tokens verify with key2's secret only, not with another account's.
    body = body_bytes()
    authorization = bearer(make_token(body, SECRET_A, api_key="key2"))
    response = post(client, body, authorization)
    assert response.status_code == 401
    assert response.get_json()["reason"] == "bad_signature"

    for api_key in ("key3", None):
        body = body_bytes()
        authorization = bearer(make_token(body, SECRET_A, api_key=api_key))
        response = post(client, body, authorization)
        assert response.status_code == 401
        assert response.get_json()["reason"] == "unknown_api_key"
        (row,) = query(db_path, "SELECT * FROM rejected_callbacks WHERE id = ?",
                       (response.get_json()["rejected_id"],))
        assert row["reason"] == "unknown_api_key"
        assert row["authorization"] == authorization
        assert row["body"] == body.decode()
    assert count(db_path, "callbacks") == 2


def test_bare_secrets_are_tried_for_any_api_key(db_path, monkeypatch):
    monkeypatch.setenv("VONAGE_SIGNATURE_SECRETS", f"key1:{SECRET_A}, {SECRET_C}")
    client = make_client(db_path)

    for api_key, secret in [("key9", SECRET_C), ("key1", SECRET_C), ("key1", SECRET_A), (None, SECRET_C)]:
        body = body_bytes()
        response = post(client, body, bearer(make_token(body, secret, api_key=api_key)))
        assert response.status_code == 200, (api_key, response.get_data(as_text=True))
        row = callback_row(db_path, response.get_json()["callback_id"])
        assert (row["signature_status"], row["api_key"]) == ("verified", api_key)

    # key1's secret is not a bare one: another account cannot use it.
    body = body_bytes()
    response = post(client, body, bearer(make_token(body, SECRET_A, api_key="key9")))
    assert response.status_code == 401
    assert response.get_json()["reason"] == "bad_signature"


def test_single_secret_and_list_combine(db_path, monkeypatch):
    """VONAGE_SIGNATURE_SECRET stays valid for any key while VONAGE_SIGNATURE_SECRETS is added."""
    monkeypatch.setenv("VONAGE_SIGNATURE_SECRET", SECRET)
    monkeypatch.setenv("VONAGE_SIGNATURE_SECRETS", f"key2:{SECRET_B}")
    client = make_client(db_path)
    for api_key, secret in [("key2", SECRET), ("key2", SECRET_B), ("other", SECRET)]:
        body = body_bytes()
        response = post(client, body, bearer(make_token(body, secret, api_key=api_key)))
        assert response.status_code == 200, (api_key, response.get_data(as_text=True))
    body = body_bytes()
    response = post(client, body, bearer(make_token(body, SECRET_B, api_key="other")))
    assert response.get_json()["reason"] == "bad_signature"


@pytest.mark.parametrize("value", ["key1:", f"key1:{SECRET_A},key2:"])
def test_secret_list_with_empty_secret_fails_at_start(db_path, monkeypatch, value):
    monkeypatch.setenv("VONAGE_SIGNATURE_SECRETS", value)
    with pytest.raises(ValueError, match="empty secret"):
        create_app({"db_path": str(db_path)})


# --- no secret configured -----------------------------------------------------------------


def test_without_secret_unsigned_callbacks_are_stored_as_unsigned(db_path):
    client = make_client(db_path)
    body = body_bytes()
    response = post(client, body)
    assert response.status_code == 200
    row = callback_row(db_path, response.get_json()["callback_id"])
    assert row["signature_status"] == "unsigned"
    assert (row["api_key"], row["jti"], row["iat"], row["clock_skew_s"]) == (None, None, None, None)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("genuine", id="genuine-token"),
        pytest.param("forged", id="forged-token"),
        pytest.param("Bearer garbage", id="garbage"),
        pytest.param("Basic dXNlcjpwYXNzd29yZA==", id="basic"),
    ],
)
def test_without_secret_tokens_are_not_checked_and_their_claims_not_recorded(db_path, authorization):
    client = make_client(db_path)
    body = body_bytes()
    if authorization == "genuine":
        authorization = bearer(make_token(body))
    elif authorization == "forged":
        authorization = bearer(make_token(b"another body", ATTACKER_SECRET, api_key="victim"))
    response = post(client, body, authorization)
    assert response.status_code == 200, response.get_data(as_text=True)
    row = callback_row(db_path, response.get_json()["callback_id"])
    assert row["signature_status"] == "not_checked"
    # Nothing was verified, so nothing the token claims is recorded as if it were.
    assert (row["api_key"], row["application_id"], row["jti"], row["iat"]) == (None, None, None, None)
    assert count(db_path, "rejected_callbacks") == 0


def test_signed_with_secret_configured_no_longer_accepts_unsigned(db_path, client):
    body = body_bytes()
    assert post(client, body).status_code == 401
    assert count(db_path, "callbacks") == 0


# --- reprocessing once the secret is fixed ------------------------------------------------


def _iso(epoch_s):
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_reprocess_with_fixed_secret_stores_genuine_and_keeps_refusing_the_rest(db_path):
    """The app ran with a mistyped secret, refusing genuine callbacks as bad_signature.

    ``receiver reprocess`` with the right secret stores them, each checked as of its
    original arrival (a token two days old at reprocessing time was fresh when it came),
    while a token whose payload_hash does not match its body, and a token signed with
    nobody's secret, stay rejected.
    """
    client = make_client(db_path, signature_secret=WRONG_SECRET)
    now = int(time.time())

    fresh = body_bytes(price="0.0333")
    fresh_jti = str(uuid.uuid4())
    fresh_auth = bearer(make_token(fresh, iat=now - 2, jti=fresh_jti))

    two_days_ago = now - 2 * 24 * 3600
    old = body_bytes(status="submitted")
    old_jti = str(uuid.uuid4())
    old_auth = bearer(make_token(old, iat=two_days_ago, jti=old_jti, api_key="acc-old"))

    mismatched = body_bytes(status="read")
    mismatched_auth = bearer(make_token(body_bytes(status="read")))

    forged = body_bytes(status="rejected")
    forged_auth = bearer(make_token(forged, ATTACKER_SECRET))

    ids = {}
    for name, body, authorization in [("fresh", fresh, fresh_auth), ("old", old, old_auth),
                                      ("mismatched", mismatched, mismatched_auth),
                                      ("forged", forged, forged_auth)]:
        response = post(client, body, authorization, "/webhooks/message-status")
        assert_refused(db_path, response, "bad_signature", body, authorization)
        ids[name] = response.get_json()["rejected_id"]

    # The old callback arrived two days ago, seven seconds after its token was issued.
    conn = sqlite3.connect(str(db_path))
    with conn:
        conn.execute("UPDATE rejected_callbacks SET received_at = ? WHERE id = ?",
                     (_iso(two_days_ago + 7), ids["old"]))
    conn.close()
    arrival = {row["id"]: row["received_at"]
               for row in query(db_path, "SELECT id, received_at FROM rejected_callbacks")}

    result = CliRunner().invoke(
        cli, ["reprocess"],
        env={"VONAGE_SIGNATURE_SECRET": SECRET, "VONAGE_SIGNATURE_SECRETS": None,
             "RECEIVER_DB": str(db_path)},
    )
    assert result.exit_code == 0, result.output
    assert "4 pending: 2 were stored, 0 were already stored, 2 still rejected." in result.output

    rejected = {row["id"]: row for row in query(db_path, "SELECT * FROM rejected_callbacks")}
    for name, jti, iat, skew in [("fresh", fresh_jti, now - 2, None), ("old", old_jti, two_days_ago, 7.0)]:
        row = rejected[ids[name]]
        assert row["reprocess_result"] == "stored"
        assert row["reprocessed_at"] is not None
        callback = callback_row(db_path, row["callback_id"])
        assert callback["signature_status"] == "verified"
        assert callback["jti"] == jti
        assert callback["iat"] == iat
        assert callback["received_at"] == arrival[ids[name]]
        assert callback["endpoint"] == "/webhooks/message-status"
        if skew is not None:
            assert callback["clock_skew_s"] == pytest.approx(skew, abs=0.001)
        assert query(db_path, "SELECT count(*) AS n FROM status_events WHERE callback_id = ?",
                     (callback["id"],))[0]["n"] == 1
    assert callback_row(db_path, rejected[ids["old"]]["callback_id"])["api_key"] == "acc-old"

    for name, reason in [("mismatched", "payload_hash_mismatch"), ("forged", "bad_signature")]:
        row = rejected[ids[name]]
        assert row["reprocessed_at"] is None
        assert row["callback_id"] is None
        assert json.loads(row["reprocess_result"])["reason"] == reason
    assert count(db_path, "callbacks") == 2
    assert count(db_path, "status_events") == 2


# --- HTTP Basic auth (RECEIVER_BASIC_AUTH), for deployments that use it instead -------------

def basic(credentials):
    import base64 as b64

    return "Basic " + b64.b64encode(credentials.encode()).decode()


@pytest.mark.parametrize("authorization, reason", [
    (None, "missing_basic_auth"),
    ("Bearer x.y.z", "missing_basic_auth"),
    (basic("vonage:wrong"), "bad_basic_auth"),
    (basic("vonage:s3cret:"), "bad_basic_auth"),
    ("Basic !!!not-base64", "bad_basic_auth"),
])
def test_basic_auth_refuses_missing_or_wrong_credentials(tmp_path, authorization, reason):
    from receiver.db import init_db as make_db

    path = tmp_path / "events.db"
    make_db(str(path))
    client = create_app({"db_path": str(path), "basic_auth": "vonage:s3cret"}).test_client()
    headers = {"Authorization": authorization} if authorization else {}
    response = client.post("/webhooks/vonage", data=payloads.dumps(payloads.status()), headers=headers,
                           content_type="application/json")
    assert response.status_code == 401
    assert response.get_json()["reason"] == reason
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT reason FROM rejected_callbacks").fetchall() == [(reason,)]
        assert conn.execute("SELECT count(*) FROM callbacks").fetchone() == (0,)


def test_basic_auth_accepts_the_right_credentials(tmp_path):
    from receiver.db import init_db as make_db

    path = tmp_path / "events.db"
    make_db(str(path))
    client = create_app({"db_path": str(path), "basic_auth": "vonage:s3cret"}).test_client()
    response = client.post("/webhooks/vonage", data=payloads.dumps(payloads.status()),
                           headers={"Authorization": basic("vonage:s3cret")},
                           content_type="application/json")
    assert response.status_code == 200
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT signature_status FROM callbacks").fetchall() == [("basic_auth",)]


def test_basic_auth_and_signatures_cannot_both_be_set():
    from receiver.config import load_settings as settings_from

    with pytest.raises(ValueError, match="Authorization"):
        settings_from(basic_auth="a:b", signature_secret="x" * 32)


def test_ours_refuses_what_vonages_verifier_does_not_check(db_path, client):
    """A genuine token replayed with another body, and one issued two days ago: Vonage's SDK
    verifier says True to both (it checks the signature only); ours refuses them."""
    body, other = body_bytes(), body_bytes(status="read")
    replayed = make_token(other)
    response = post(client, body, bearer(replayed))
    assert response.get_json()["reason"] == "payload_hash_mismatch"
    assert vonage_jwt.verify_signature(replayed, SECRET) is True
    old = make_token(body, iat=int(time.time()) - 2 * 86400)
    response = post(client, body, bearer(old))
    assert response.get_json()["reason"] == "stale_iat"
    assert vonage_jwt.verify_signature(old, SECRET) is True

