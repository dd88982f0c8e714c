"""Per-route tuning in real Envoy.

* Envoy's per-route `FilterConfig {disabled: true}` (typed_per_filter_config) turns the filter off
  for /no-resetguard/ (the README's opt-out).
* Route metadata `metadata.filter_metadata.resetguard` overrides the plugin configuration per
  route: the shipped config has `retry.max_retries: 0` on /per-route/no-retries/ and
  `disabled: true` on /per-route/off/; a test config adds an invalid override and one with a null
  (which Envoy cannot hand over), which fall back to the plugin configuration and are reported
  once each (one warning, one counter), not per request.
"""

from harness import client, paths
from helpers import counters_delta, wait_outcomes

RESET = {"action": "reset_before_headers"}
OK = {"action": "respond", "status": 200, "body": "hello"}
REJECTED = "resetguard.config.route_override_rejected"


def get(envoy, path, tag, headers=None):
    return client.request(envoy.port, "GET", path, {"x-scenario-request": tag, **(headers or {})})


def test_disabled_route_gets_no_retries_and_moves_no_counter(envoy, upstream):
    upstream.plan("off", [RESET, OK])
    before = envoy.filter_counters()
    r = get(envoy, "/no-resetguard/items", "off")
    assert r.status == 503, r
    assert upstream.attempts("off") == 1
    assert counters_delta(before, envoy.filter_counters()) == {}

    # The same failure on a route where the filter runs is saved by a retry.
    upstream.plan("on", [RESET, OK])
    r = get(envoy, "/items", "on")
    assert r.status == 200 and r.body == b"hello", r
    assert upstream.attempts("on") == 2
    delta = counters_delta(before, wait_outcomes(envoy, before, 1))
    assert delta.get("resetguard.retry.armed_full") == 1


def test_route_metadata_gives_each_route_its_effective_policy(envoy, upstream):
    before = envoy.filter_counters()
    # Plugin config (defaults): a reset GET is retried.
    upstream.plan("default", [RESET, OK])
    r = get(envoy, "/items", "default")
    assert (r.status, upstream.attempts("default")) == (200, 2), r
    # retry.max_retries 0 on this route: the filter arms nothing, the reset reaches the client.
    upstream.plan("no-retries", [RESET, OK])
    r = get(envoy, "/per-route/no-retries/items", "no-retries")
    assert (r.status, upstream.attempts("no-retries")) == (503, 1), r
    delta = counters_delta(before, wait_outcomes(envoy, before, 2))
    assert delta.get("resetguard.retry.armed_full") == 1, delta
    assert delta.get("resetguard.requests.idempotent") == 2, delta
    assert delta.get("resetguard.outcome.upstream_reset") == 1, delta

    # disabled: true in metadata: no retry, no header stripping, no counter at all.
    before = envoy.filter_counters()
    upstream.plan("meta-off", [RESET, OK])
    r = get(envoy, "/per-route/off/items", "meta-off")
    assert (r.status, upstream.attempts("meta-off")) == (503, 1), r
    upstream.plan("meta-off-ok", [OK])
    r = get(envoy, "/per-route/off/items", "meta-off-ok")
    assert r.status == 200, r
    assert envoy.wait_for(lambda: len(envoy.access_log()) >= 4)
    assert counters_delta(before, envoy.filter_counters()) == {}
    assert envoy.wasm_log_lines(min_level="warning") == []


def test_an_invalid_override_falls_back_and_is_reported_once(envoy_factory, upstream, dead_port,
                                                            run_dir):
    text = (paths.CONFIG_DIR / "resetguard.yaml").read_text()
    anchor = "              - name: per-route-off\n"
    assert anchor in text
    route = ("              - name: per-route-{name}\n"
             "                match: {{ prefix: \"/per-route/{name}/\" }}\n"
             "                route: {{ cluster: upstream, timeout: 15s }}\n"
             "                metadata:\n"
             "                  filter_metadata:\n"
             "                    resetguard:\n"
             "                      retry: {{ max_retries: {value} }}\n")
    # 11 is out of range; a null makes Envoy refuse to hand the metadata to the filter at all.
    text = text.replace(anchor, route.format(name="invalid", value=11)
                        + route.format(name="null", value="null") + anchor)
    template = run_dir / "invalid-override.yaml"
    template.write_text(text)
    e = envoy_factory(template=str(template), plugin_config={"retry": {"max_retries": 1}},
                      upstream_port=upstream.port, dead_port=dead_port)
    mark = e.log_mark()
    for i in range(5):
        tag = f"invalid-{i}"
        upstream.plan(tag, [RESET, RESET, OK])
        r = get(e, "/per-route/invalid/items", tag)
        # The plugin's max_retries 1: one retry, then the second reset reaches the client.
        assert (r.status, upstream.attempts(tag)) == (503, 2), (i, r)
    for i in range(3):
        tag = f"null-{i}"
        upstream.plan(tag, [RESET, RESET, OK])
        r = get(e, "/per-route/null/items", tag)
        assert (r.status, upstream.attempts(tag)) == (503, 2), (i, r)
    assert e.wait_for(lambda: e.filter_counters().get(REJECTED) == 2)
    warnings = e.wasm_log_lines(mark, "warning")
    invalid = [line for line in warnings if "per-route-invalid" in line]
    assert len(invalid) == 1, warnings
    assert "`retry.max_retries`" in invalid[0] and "from 0 to 10" in invalid[0], invalid[0]
    assert "plugin configuration" in invalid[0], invalid[0]
    null = [line for line in warnings if "per-route-null" in line]
    assert len(null) == 1 and "null" in null[0], warnings
    # The valid overrides of the same config still apply.
    upstream.plan("still-no-retries", [RESET, OK])
    r = get(e, "/per-route/no-retries/items", "still-no-retries")
    assert (r.status, upstream.attempts("still-no-retries")) == (503, 1), r
    assert e.filter_counters().get(REJECTED) == 2
