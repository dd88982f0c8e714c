"""The filter follows Envoy's log level at runtime: an operator who turns the `wasm` logger to
debug through the admin interface sees the filter's debug lines within a few seconds (the root
context re-reads the level on a 2 s tick; requests make no host call for it)."""

import time

from harness import client
from helpers import counters_delta, wait_outcomes

DEBUG_ABORTS = {"client_abort": {"log_level": "debug"}}


def _abort(envoy, upstream, tag):
    upstream.plan(tag, [{"action": "respond", "status": 200, "body": "late", "delay_ms": 600}])
    before = envoy.filter_counters()
    got = client.aborting_request(envoy.port, "GET", f"/{tag}", {"x-scenario-request": tag},
                                  abort_after_ms=100)
    assert got == b""
    delta = counters_delta(before, wait_outcomes(envoy, before, 1))
    assert delta.get("resetguard.outcome.client_abort") == 1, delta


def _abort_lines(envoy, since, tag):
    return [l for l in envoy.wasm_log_lines(since=since, min_level="debug")
            if "client_abort" in l and f"/{tag}" in l]


def test_debug_lines_appear_after_the_admin_raises_the_level(envoy_factory, upstream, dead_port):
    envoy = envoy_factory(plugin_config=DEBUG_ABORTS, upstream_port=upstream.port,
                          dead_port=dead_port)
    mark = envoy.log_mark()
    _abort(envoy, upstream, "quiet")
    time.sleep(0.3)
    assert _abort_lines(envoy, mark, "quiet") == []  # info level: the debug line is not emitted

    envoy.admin_post("/logging?wasm=debug")
    time.sleep(2.5)  # one tick of the root context
    mark = envoy.log_mark()
    _abort(envoy, upstream, "loud")
    lines = envoy.wait_for(lambda: _abort_lines(envoy, mark, "loud"), timeout=3)
    assert len(lines) == 1 and "[debug]" in lines[0], envoy.log_tail()
