"""The product takes both of Vonage's APIs, and says so: the Datasette index title, the
dashboard's name and address, `receiver --help` and the OpenAPI title name no single API. One
channel has one colour in every dashboard chart.

Before: "Vonage Dispatch callbacks", a "Dispatch callbacks" dashboard at /-/dashboards/dispatch,
"store Vonage Dispatch callbacks" in --help, "dispatch-receiver" as the OpenAPI title; and SMS
was the first colour of the error chart but "sms (EUR)" took whatever colour its place in the
cost chart gave it.
"""

import pytest
import requests
import yaml
from click.testing import CliRunner

import datasette_data
from testing.processes import ROOT
from test_dashboard_browser import browser, needs_chromium, open_dashboard  # noqa: F401

from receiver import openapi
from receiver.cli import cli

DB = "names"
BOTH_APIS = "Dispatch and Messages APIs"
CHANNELS = ["sms", "mms", "whatsapp", "messenger", "viber_service_msg", "rcs", "email"]
METADATA = yaml.safe_load((ROOT / "config" / "metadata.yml").read_text())
DASHBOARDS = METADATA["plugins"]["datasette-dashboards"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with datasette_data.served(tmp_path_factory.mktemp("names"), DB) as (process, uuids):
        yield process


def test_the_index_and_the_dashboard_name_both_apis(server):
    index = requests.get(f"{server.url}/", timeout=30).text
    assert f"<title>Vonage callbacks ({BOTH_APIS}): {DB}</title>" in index
    assert "Vonage Dispatch" not in index
    dashboard = requests.get(f"{server.url}/-/dashboards/callbacks", timeout=30)
    assert dashboard.status_code == 200 and f"Vonage callbacks ({BOTH_APIS})" in dashboard.text
    assert "Dispatch callbacks" not in dashboard.text
    assert 'href="/-/dashboards/callbacks"' in index


@pytest.mark.parametrize("old, new", [
    ("/-/dashboards/dispatch", "/-/dashboards/callbacks"),
    ("/-/dashboards/dispatch?from=2025-03-01&channel=sms", "/-/dashboards/callbacks?from=2025-03-01&channel=sms"),
    ("/-/dashboards/dispatch/cost-per-day", "/-/dashboards/callbacks/cost-per-day"),
    ("/-/dashboards/dispatch/cost-per-day/embed", "/-/dashboards/callbacks/cost-per-day/embed"),
])
def test_the_old_dashboard_address_redirects(server, old, new):
    response = requests.get(f"{server.url}{old}", allow_redirects=False, timeout=30)
    assert response.status_code == 302 and response.headers["location"] == new
    assert requests.get(f"{server.url}{old}", timeout=30).status_code == 200


def test_help_and_openapi_name_both_apis():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert f"store Vonage's callbacks ({BOTH_APIS})" in " ".join(result.output.split())
    assert "Vonage Dispatch callbacks" not in result.output
    info = openapi.document()["info"]
    assert BOTH_APIS in info["title"] and "Messages API" in info["description"]


def channel_scales():
    """{chart: (domain, range)} of every dashboard chart that colours by channel."""
    scales = {}
    for dashboard in DASHBOARDS.values():
        for name, chart in dashboard["charts"].items():
            display = chart.get("display")
            if not isinstance(display, dict):  # a markdown or table card draws no colours
                continue
            color = (display.get("encoding") or {}).get("color") or {}
            if color.get("field") == "channel":
                scale = color.get("scale") or {}
                scales[name] = (scale.get("domain"), scale.get("range"))
    return scales


def test_every_chart_colouring_by_channel_gives_each_channel_its_colour():
    scales = channel_scales()
    assert {"cost-per-day", "top-error-codes"} <= set(scales)
    for name, (domain, colours) in scales.items():
        assert domain == CHANNELS and len(set(colours)) == len(CHANNELS), name
    assert len({tuple(map(tuple, scale)) for scale in scales.values()}) == 1
    for dashboard in DASHBOARDS.values():
        assert set(dashboard["filters"]["channel"]["options"]) <= set(CHANNELS)


# Each chart's colour for every channel, as vega draws it.
CHANNEL_COLOURS = """
async (channels) => {
  const out = {};
  for (const {id, view} of await Promise.all(window.__charts)) {
    let legend = null;
    try { legend = view.scale('color'); } catch (error) { continue; }  // no colour scale
    if (legend && legend.domain().includes('sms')) {
      out[id.replace('chart-', '')] = Object.fromEntries(channels.map(c => [c, legend(c)]));
    }
  }
  return out;
}
"""


@needs_chromium
def test_the_dashboard_draws_one_channel_in_one_colour(server, browser):  # noqa: F811
    page, _, problems = open_dashboard(browser, f"{server.url}/-/dashboards/callbacks")
    try:
        assert problems == []
        drawn = page.evaluate(CHANNEL_COLOURS, CHANNELS)
        domain, colours = channel_scales()["cost-per-day"]
        expected = dict(zip(domain, colours))
        assert {"cost-per-day", "top-error-codes"} <= set(drawn)
        for chart, colour_of in drawn.items():
            assert colour_of == expected, chart
    finally:
        page.close()
