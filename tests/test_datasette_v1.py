"""Datasette over a store holding both APIs: Messages API v1 failover beside Dispatch.

The database is filled by posting real bodies to the receiver (Flask test client), then read
through Datasette with config/metadata.yml and config/plugins, as test_datasette.py does.
"""

import pytest

from datasette_data import post_all
from payloads import failover_workflow, messages_failover, v1_status
from test_datasette import DB_NAME, Client, cell, follow, hrefs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A Dispatch workflow, a Messages failover (RCS rejected, then SMS delivered) and a
    plain v1 message: (path, names)."""
    path = tmp_path_factory.mktemp("datasette-v1") / f"{DB_NAME}.db"
    d, _, _, dispatch = failover_workflow()
    workflow_id, (rcs, sms), messages = messages_failover(("rcs", "sms"))
    single = v1_status(channel="whatsapp", status="delivered", price="0.0100")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RECEIVER_SYNCHRONOUS", "RECEIVER_MAX_BATCH", "RECEIVER_DB"):
            mp.delenv(name, raising=False)
        post_all(path, dispatch + messages + [single])
    return path, {"D": d, "W": workflow_id, "W.rcs": rcs, "W.sms": sms, "single": single["message_uuid"]}


@pytest.fixture
def names(store):
    return store[1]


@pytest.fixture
def client(store, monkeypatch):
    monkeypatch.delenv("DATASETTE_PASSWORD_HASH", raising=False)
    c = Client(store[0])
    yield c
    c.close()


def test_a_messages_workflow_links_to_its_row_legs_and_events(client, names):
    page = client.get(f"/{DB_NAME}/messages/{names['W.sms']}").text
    links = hrefs(cell(page, "workflow_id"))
    w = names["W"]
    assert links == [
        f"/{DB_NAME}/workflows/{w}",
        f"/{DB_NAME}/messages?workflow_id={w}&_sort=workflow_position",
        f"/{DB_NAME}/status_events?workflow_id={w}&_sort=timestamp",
    ]
    assert w in client.get(links[0]).text
    assert [r["message_uuid"] for r in follow(client, links[1])] == [names["W.rcs"], names["W.sms"]]
    assert len(follow(client, links[2])) == 4


def test_a_dispatch_in_workflows_links_as_a_dispatch(client, names):
    page = client.get(f"/{DB_NAME}/workflows/{names['D']}").text
    assert f"/{DB_NAME}/dispatch_timeline?dispatch_uuid={names['D']}" in hrefs(cell(page, "workflow_id"))


def test_workflows_facet_by_api_and_outcome(client, names):
    data = client.json(f"/{DB_NAME}/workflows.json", _facet="api")
    counts = {f["value"]: f["count"] for f in data["facet_results"]["api"]["results"]}
    assert counts == {"dispatch": 1, "messages": 1}
