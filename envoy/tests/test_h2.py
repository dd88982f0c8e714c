"""HTTP/2 against the real Envoy: an h2c upstream that refuses or resets individual streams, and an
h2c downstream client that aborts.

Envoy 1.40 facts these tests pin down (access log `%RESPONSE_FLAGS%` / `%RESPONSE_CODE_DETAILS%`):
  * upstream RST_STREAM(REFUSED_STREAM), not retried: 503 `UR`,
    `upstream_reset_before_response_started{remote_refused_stream_reset}`;
  * upstream RST_STREAM(INTERNAL_ERROR or CANCEL) after the request was sent: 503 `UR`,
    `upstream_reset_before_response_started{remote_reset}` (Envoy's `reset` retry condition
    covers it; `reset-before-request` does not, because the request was sent);
  * downstream h2c client closes its connection: response code 0, flag `DC`,
    `downstream_remote_disconnect`; downstream RST_STREAM(CANCEL) on the stream: code 0, flag
    `DR` (DownstreamRemoteReset), details `http2.remote_reset` — not `DC`.
"""

import time

import pytest

from harness import client
from harness.h2 import ChaosH2Upstream, H2Client, h2_aborting_request, h2_request
from harness.results import record
from helpers import counters_delta, wait_access_log, wait_outcomes

REFUSE = {"action": "refuse_stream"}
OK = {"action": "respond", "status": 200, "body": "hello"}
BODY = b'{"order":1}'


@pytest.fixture
def h2_upstream():
    up = ChaosH2Upstream().start()
    yield up
    up.stop()


def _retries(envoy) -> int:
    return envoy.stats("cluster.upstream.upstream_rq_retry$").get("cluster.upstream.upstream_rq_retry", 0)


def test_h2_post_refused_stream_is_retried_by_the_filter(envoy_factory, h2_upstream, dead_port):
    envoy = envoy_factory(template="resetguard-h2.yaml", plugin_config={},
                          upstream_port=h2_upstream.port, dead_port=dead_port)
    h2_upstream.plan("post-refused", [REFUSE, OK])
    before, retries_before = envoy.filter_counters(), _retries(envoy)
    r = client.request(envoy.port, "POST", "/orders", {"x-scenario-request": "post-refused"},
                       body=BODY)
    assert r.error is None and r.status == 200 and r.body == b"hello", r
    assert h2_upstream.attempts("post-refused") == 2
    assert h2_upstream.resets_sent == [("post-refused", "REFUSED_STREAM")]
    # The refused attempt never got the body; the retry re-sent it in full, once.
    assert h2_upstream.requests_for("post-refused")[1].body == BODY
    assert _retries(envoy) - retries_before == 1
    delta = counters_delta(before, wait_outcomes(envoy, before, 1))
    assert delta.get("resetguard.requests.non_idempotent") == 1
    assert delta.get("resetguard.retry.armed_unsent_only") == 1
    assert delta.get("resetguard.outcome.completed") == 1
    line = wait_access_log(envoy, 1)[-1]
    assert line.startswith("200 - - method=POST") and "attempts=2" in line, line
    record("h2.post_refused_stream.with_filter", {"status": r.status, "attempts": 2})


@pytest.mark.parametrize("variant", ["no-filter", "max_retries-0"])
def test_h2_post_refused_stream_without_the_filter_fails(envoy_factory, h2_upstream, dead_port,
                                                        variant):
    if variant == "no-filter":
        envoy = envoy_factory(template="no-filter-h2.yaml", upstream_port=h2_upstream.port,
                              dead_port=dead_port, name="bare")
    else:
        envoy = envoy_factory(template="resetguard-h2.yaml",
                              plugin_config={"retry": {"max_retries": 0}},
                              upstream_port=h2_upstream.port, dead_port=dead_port)
    h2_upstream.plan("post-refused", [REFUSE, OK])
    r = client.request(envoy.port, "POST", "/orders", {"x-scenario-request": "post-refused"},
                       body=BODY)
    assert r.status == 503, r
    assert h2_upstream.attempts("post-refused") == 1
    assert _retries(envoy) == 0
    line = wait_access_log(envoy, 1)[-1]
    assert line.startswith("503 UR "), line
    assert "details=upstream_reset_before_response_started{remote_refused_stream_reset}" in line, line
    record(f"h2.post_refused_stream.{variant}", {"status": r.status, "attempts": 1})


@pytest.mark.parametrize("code", ["INTERNAL_ERROR", "CANCEL"])
def test_h2_stream_reset_after_the_request_was_sent(envoy_factory, h2_upstream, dead_port, code):
    """The upstream reads the whole request, then resets the stream: the POST may have been
    applied, so it is not retried (1 attempt, 503); the same reset on a GET is retried (200)."""
    envoy = envoy_factory(template="resetguard-h2.yaml", plugin_config={},
                          upstream_port=h2_upstream.port, dead_port=dead_port)
    reset = {"action": "reset_stream", "error_code": code}
    before = envoy.filter_counters()

    h2_upstream.plan("post-reset", [reset, OK])
    r = client.request(envoy.port, "POST", "/orders", {"x-scenario-request": "post-reset"},
                       body=BODY)
    assert r.status == 503, r
    assert h2_upstream.attempts("post-reset") == 1
    assert h2_upstream.requests_for("post-reset")[0].body == BODY  # it was sent in full

    # The GET goes over h2c end to end (downstream and upstream).
    h2_upstream.plan("get-reset", [reset, OK])
    g = h2_request(envoy.port, "GET", "/items/1", {"x-scenario-request": "get-reset"})
    assert g.error is None and g.status == 200 and g.body == b"hello", g
    assert h2_upstream.attempts("get-reset") == 2
    assert h2_upstream.resets_sent == [("post-reset", code), ("get-reset", code)]

    delta = counters_delta(before, wait_outcomes(envoy, before, 2))
    assert delta.get("resetguard.outcome.upstream_reset") == 1
    assert delta.get("resetguard.outcome.completed") == 1
    lines = wait_access_log(envoy, 2)
    post_line = next(l for l in lines if "tag=post-reset" in l)
    get_line = next(l for l in lines if "tag=get-reset" in l)
    assert post_line.startswith("503 UR upstream_reset ") and "attempts=1" in post_line, post_line
    assert "details=upstream_reset_before_response_started{remote_reset}" in post_line, post_line
    assert get_line.startswith("200 - - ") and "attempts=2" in get_line, get_line
    record(f"h2.reset_after_sent.{code}", {"post": [r.status, 1], "get": [g.status, 2]})


@pytest.mark.parametrize("how", ["close", "rst_stream"])
def test_h2_client_abort(envoy_factory, h2_upstream, dead_port, how):
    """An h2c client gives up after 200 ms while the upstream answers at 1 s, by closing the
    connection or by RST_STREAM(CANCEL) on a connection it keeps using."""
    envoy = envoy_factory(template="resetguard-h2.yaml", plugin_config={},
                          upstream_port=h2_upstream.port, dead_port=dead_port)
    h2_upstream.plan("slow", [{"action": "respond", "status": 200, "body": "late",
                               "delay_ms": 1000}])
    h2_upstream.plan("next", [OK])
    before, mark = envoy.filter_counters(), envoy.log_mark()
    t0 = time.monotonic()
    if how == "close":
        got = h2_aborting_request(envoy.port, "GET", "/slow", {"x-scenario-request": "slow"},
                                  abort_after_ms=200, how="close")
        assert got.status is None, got
        aborted_at = time.monotonic()
        after_abort = h2_request(envoy.port, "GET", "/next", {"x-scenario-request": "next"})
    else:
        with H2Client(envoy.port) as c:
            sid = c.send("GET", "/slow", {"x-scenario-request": "slow"})
            c.pump(t0 + 0.2)
            assert c.peek(sid).status is None, c.peek(sid)
            c.cancel(sid)
            aborted_at = time.monotonic()
            # The same connection goes on serving.
            after_abort = c.request("GET", "/next", {"x-scenario-request": "next"})
    assert after_abort.error is None and after_abort.status == 200, after_abort
    assert h2_upstream.attempts("slow") == 1

    # Let the upstream's 1 s pass: no further attempt may start after the abort.
    time.sleep(max(0.0, t0 + 1.3 - time.monotonic()))
    assert h2_upstream.attempts_after("slow", aborted_at) == 0
    assert h2_upstream.attempts("slow") == 1
    # Envoy cancelled the upstream stream rather than waiting for the answer.
    assert [t for t, _ in h2_upstream.resets_received] == ["slow"], h2_upstream.resets_received
    assert envoy.alive()
    assert envoy.wasm_lines_above("info", since=mark) == []

    after = wait_outcomes(envoy, before, 2)
    delta = counters_delta(before, after)
    lines = wait_access_log(envoy, 2)
    slow_line = next(l for l in lines if "tag=slow" in l)
    record(f"h2.client_abort.{how}", {"access_log": slow_line.split(" details=")[0],
                                      "outcome_delta": delta})
    assert delta.get("resetguard.outcome.upstream_reset", 0) == 0, delta
    assert delta.get("resetguard.outcome.completed") == 1, delta  # the /next request
    # Closing the connection is DC; cancelling the stream is DR (`http2.remote_reset`), no DC.
    # Both are the client leaving: a client abort, never an upstream failure.
    flag = "DC" if how == "close" else "DR"
    assert slow_line.startswith(f"0 {flag} client_abort "), slow_line
    assert delta.get("resetguard.outcome.client_abort") == 1, delta
    assert delta.get("resetguard.outcome.incomplete", 0) == 0, delta
