"""Made tests/data/schema1.db (run from a checkout of that commit: python make_schema1_fixture.py PATH).

Made with the receiver at commit c14003f (schema version 1, before Messages API v1 support)."""
import json, os, sys
sys.path.insert(0, "tests")
from receiver import create_app
from receiver.db import init_db
import payloads

path = sys.argv[1]
if os.path.exists(path):
    os.remove(path)
init_db(path)
client = create_app({"db_path": path}).test_client()
post = lambda body: client.post("/webhooks/vonage", data=json.dumps(body), content_type="application/json")
d = "11111111-2222-4333-8444-555555555555"
m1, m2 = "11111111-2222-4333-8444-000000000001", "11111111-2222-4333-8444-000000000002"
answers = []
answers.append(post(payloads.status(m1, d, "submitted", channel="whatsapp", timestamp="2026-11-01T10:00:00.000Z")).status_code)
answers.append(post(payloads.status(m1, d, "rejected", channel="whatsapp", timestamp="2026-11-01T10:00:30.000Z")).status_code)
answers.append(post(payloads.status(m2, d, "submitted", channel="sms", price="0.0333", timestamp="2026-11-01T10:01:00.000Z")).status_code)
answers.append(post(payloads.status(m2, d, "delivered", channel="sms", timestamp="2026-11-01T10:01:05.000Z")).status_code)
report = payloads.final_report(d, [(m1, "whatsapp", "rejected", "0.0000"), (m2, "sms", "delivered", "0.0333")],
                                price="0.0333", timestamp="2026-11-01T10:02:00.000Z")
answers.append(post(report).status_code)
v1 = {"message_uuid": "30af1182-e2c9-4986-bf60-0129a14bbc79", "to": "972532208231", "from": "972523083947",
      "timestamp": "2023-06-19T10:23:16Z", "status": "submitted", "channel": "sms",
      "destination": {"network_code": "42507"}, "sms": {"count_total": "1"},
      "usage": {"currency": "EUR", "price": "0.093"},
      "workflow": {"workflow_id": "3TcNjguHxr2vcCZ9Ddsnq6tw8yQUpZ9rMHv9QXSxLan5ibMxqSzLdx9", "items_number": "1", "items_total": "2"}}
r = post(v1); answers.append((r.status_code, r.get_json().get("reason")))
print(answers)
client.application.extensions["receiver.writer"].close()
import sqlite3
conn = sqlite3.connect(path)
conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
conn.execute("PRAGMA journal_mode = DELETE")
conn.close()
