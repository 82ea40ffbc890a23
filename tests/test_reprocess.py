"""`receiver reprocess` never stores a forged callback, and refuses filters that match nothing.

The server ran with a signature secret (or Basic credentials) set in its environment; the shell
that runs `receiver reprocess` normally has none. A body the server refused for its signature
or credentials must then stay rejected, saying why, unless the operator asks for it to be
stored unverified with --accept-unverified, which the stored row records.
"""

import hashlib
import json
import time

import jwt
import pytest

from conftest import post_to
from payloads import dumps, new_uuid, status
from receiver import create_app

SECRET = hashlib.sha256(b"the server's signature secret").hexdigest()


def forged_body():
    """An unsigned status claiming a charge of 999.00: what an attacker would post."""
    return dumps(status(new_uuid(), new_uuid(), "submitted", channel="sms", price="999.00",
                        timestamp="2026-11-03T09:00:00Z"))


def signed(body, secret=SECRET, iat=None):
    claims = {"iat": int(time.time()) if iat is None else iat, "jti": new_uuid(),
              "iss": "Vonage", "payload_hash": hashlib.sha256(body).hexdigest(),
              "api_key": "acc-1"}
    return "Bearer " + jwt.encode(claims, secret, algorithm="HS256")


@pytest.fixture
def server(db_path):
    """The receiver as it runs in production: with the secret in its environment."""
    return create_app({"db_path": str(db_path), "signature_secret": SECRET}).test_client()


def refused(server, body, reason, authorization=None):
    headers = {"Authorization": authorization} if authorization else {}
    response = post_to(server, body, headers=headers)
    assert (response.status_code, response.get_json()["reason"]) == (401, reason)
    return response.get_json()["rejected_id"]


def billed(rows, db_path):
    return [r["price"] for r in rows(db_path, "SELECT price FROM billing_lines")]


def test_a_forged_body_refused_by_the_server_is_not_stored_by_a_shell_without_the_secret(
        server, runner, db_path, rows):
    rejected_id = refused(server, forged_body(), "missing_token")

    result = runner.invoke(["reprocess", "--db", str(db_path)])  # no secret in this shell

    assert result.exit_code == 0, result.output
    assert billed(rows, db_path) == []
    assert rows(db_path, "SELECT count(*) AS n FROM callbacks") == [{"n": 0}]
    [row] = rows(db_path, "SELECT * FROM rejected_callbacks WHERE id = ?", rejected_id)
    assert (row["reprocessed_at"], row["callback_id"]) == (None, None)
    outcome = json.loads(row["reprocess_result"])
    assert outcome["reason"] == "cannot_verify"
    assert "cannot verify: VONAGE_SIGNATURE_SECRET not set in this shell" in outcome["message"]
    assert "1 not verifiable here" in result.stderr
    assert "VONAGE_SIGNATURE_SECRET not set in this shell" in result.stderr


def test_with_the_servers_secret_reprocess_refuses_the_forgery_and_stores_the_genuine(
        server, runner, db_path, rows, monkeypatch):
    forged_id = refused(server, forged_body(), "missing_token")
    # Genuine, refused because the server's clock was far ahead at the time (stale iat),
    # but signed when it came: checked as of its original arrival, it verifies.
    genuine = dumps(status(new_uuid(), new_uuid(), "submitted", channel="sms", price="0.05",
                           timestamp="2026-11-03T09:00:00Z"))
    genuine_id = refused(server, genuine, "stale_iat", signed(genuine, iat=int(time.time()) - 30 * 3600))
    rows_conn = __import__("sqlite3").connect(str(db_path))
    with rows_conn:  # it arrived 30 h ago, a second after its token was issued
        rows_conn.execute("UPDATE rejected_callbacks SET received_at = "
                          "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 hours', '+1 second') WHERE id = ?",
                          (genuine_id,))
    rows_conn.close()

    monkeypatch.setenv("VONAGE_SIGNATURE_SECRET", SECRET)
    result = runner.invoke(["reprocess", "--db", str(db_path)])

    assert result.exit_code == 0, result.output
    assert billed(rows, db_path) == ["0.05"]
    assert rows(db_path, "SELECT signature_status FROM callbacks") == [{"signature_status": "verified"}]
    [forged] = rows(db_path, "SELECT * FROM rejected_callbacks WHERE id = ?", forged_id)
    assert forged["reprocessed_at"] is None
    assert json.loads(forged["reprocess_result"])["reason"] == "missing_token"


def test_accept_unverified_stores_it_and_says_so_on_the_row(server, runner, db_path, rows):
    rejected_id = refused(server, forged_body(), "missing_token")

    result = runner.invoke(["reprocess", "--db", str(db_path), "--accept-unverified"])

    assert result.exit_code == 0, result.output
    assert billed(rows, db_path) == ["999.00"]
    assert rows(db_path, "SELECT signature_status FROM callbacks") == [
        {"signature_status": "accepted_unverified"}]
    [row] = rows(db_path, "SELECT * FROM rejected_callbacks WHERE id = ?", rejected_id)
    assert row["reprocess_result"] == "stored (accepted unverified)"
    assert "1 were stored unverified (--accept-unverified)" in result.stderr


def test_basic_auth_refusals_stay_rejected_without_the_credentials(db_path, runner, rows):
    server = create_app({"db_path": str(db_path), "basic_auth": "vonage:pw"}).test_client()
    rejected_id = refused(server, forged_body(), "missing_basic_auth")

    result = runner.invoke(["reprocess", "--db", str(db_path)])

    assert result.exit_code == 0, result.output
    assert billed(rows, db_path) == []
    [row] = rows(db_path, "SELECT reprocess_result FROM rejected_callbacks WHERE id = ?", rejected_id)
    assert "cannot verify: RECEIVER_BASIC_AUTH not set in this shell" in row["reprocess_result"]


def test_a_signed_body_refused_for_its_content_is_verified_again(server, runner, db_path, rows):
    """The server checked the token before the body (signed, then a schema error): a run that
    cannot check it stores nothing; the server's rule applies to every refusal."""
    body = dumps(status(new_uuid(), new_uuid(), "bogus", channel="sms", price="1.00"))
    response = post_to(server, body, headers={"Authorization": signed(body)})
    assert response.status_code == 422
    rejected_id = response.get_json()["rejected_id"]
    # Were the schema error fixed, this shell still could not check the signature.
    conn = __import__("sqlite3").connect(str(db_path))
    with conn:
        conn.execute("UPDATE rejected_callbacks SET body = replace(body, 'bogus', 'submitted')")
    conn.close()
    result = runner.invoke(["reprocess", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert billed(rows, db_path) == []
    [row] = rows(db_path, "SELECT reprocess_result FROM rejected_callbacks WHERE id = ?", rejected_id)
    assert json.loads(row["reprocess_result"])["reason"] == "cannot_verify"


def test_a_server_with_a_secret_checks_the_signature_before_the_body(server):
    """What reprocess relies on: a body refused for anything but its signature either came to
    a server without a secret or had passed the signature check."""
    response = post_to(server, dumps(status(new_uuid(), new_uuid(), "bogus")))
    assert (response.status_code, response.get_json()["reason"]) == (401, "missing_token")


def test_an_unsigned_body_a_server_without_secret_refused_is_stored_unsigned(db_path, runner, rows, monkeypatch):
    """No secret on the server: it would have stored the body unsigned; reprocess does the same
    even from a shell that has a secret today."""
    server = create_app({"db_path": str(db_path)}).test_client()
    body = dumps(status(new_uuid(), new_uuid(), "submitted", channel="sms", price="0.05",
                        timestamp="2026-11-03T09:00:00Z"))
    bad = body.replace(b'"submitted"', b'"Submitted"')
    assert post_to(server, bad).status_code == 422
    conn = __import__("sqlite3").connect(str(db_path))
    with conn:
        conn.execute("UPDATE rejected_callbacks SET body = replace(body, 'Submitted', 'submitted')")
    conn.close()
    monkeypatch.setenv("VONAGE_SIGNATURE_SECRET", SECRET)
    result = runner.invoke(["reprocess", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert rows(db_path, "SELECT signature_status FROM callbacks") == [{"signature_status": "unsigned"}]


@pytest.mark.parametrize("args, message", [
    (["--id", "42"], "no rejected callback with id 42"),
    (["--reason", "nonsense"], "unknown reason 'nonsense'"),
])
def test_filters_that_match_nothing_are_errors(server, runner, db_path, args, message):
    refused(server, forged_body(), "missing_token")
    result = runner.invoke(["reprocess", "--db", str(db_path), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_every_reason_the_code_gives_is_a_reason_reprocess_takes():
    """callbacks.REASONS lists every typed reason a Rejection is made with in receiver/."""
    import re
    from pathlib import Path

    from receiver.callbacks import REASONS

    source = "\n".join(p.read_text() for p in Path(__file__).resolve().parent.parent.joinpath("receiver").glob("*.py"))
    given = set(re.findall(r'(?:Rejection\(\s*\d+,\s*|_refuse\(\s*)"([a-z_]+)"', source))
    given |= set(re.findall(r'raise _refuse\(\s*"([a-z_]+)"', source))
    assert given and given <= set(REASONS), given - set(REASONS)
