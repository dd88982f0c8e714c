"""A route can turn the filter off with Envoy's per-route `FilterConfig {disabled: true}` (the
README documents it as the opt-out); the shipped config has such a route under /no-resetguard/."""

from harness import client
from helpers import counters_delta, wait_outcomes

RESET = {"action": "reset_before_headers"}
OK = {"action": "respond", "status": 200, "body": "hello"}


def test_disabled_route_gets_no_retries_and_moves_no_counter(envoy, upstream):
    upstream.plan("off", [RESET, OK])
    before = envoy.filter_counters()
    r = client.request(envoy.port, "GET", "/no-resetguard/items", {"x-scenario-request": "off"})
    assert r.status == 503, r
    assert upstream.attempts("off") == 1
    assert counters_delta(before, envoy.filter_counters()) == {}

    # The same failure on a route where the filter runs is saved by a retry.
    upstream.plan("on", [RESET, OK])
    r = client.request(envoy.port, "GET", "/items", {"x-scenario-request": "on"})
    assert r.status == 200 and r.body == b"hello", r
    assert upstream.attempts("on") == 2
    delta = counters_delta(before, wait_outcomes(envoy, before, 1))
    assert delta.get("resetguard.retry.armed_full") == 1
