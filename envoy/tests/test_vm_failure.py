"""What Envoy 1.40 does to traffic when a proxy-wasm VM traps, per `failure_policy` (SECURITY.md).

resetguard itself never traps (its fuzzing and hostile-input tests prove that much), so these tests
load a stand-in: a minimal proxy-wasm module, assembled here byte by byte, that configures fine
and executes `unreachable` in `proxy_on_request_headers`, the same fate any panic in a Rust filter
built with `panic = "abort"` would meet. What Envoy does next is the operator's fail-open or
fail-closed choice, measured rather than assumed.
"""

from __future__ import annotations

import pytest

from harness import client
from harness.envoy import EnvoyError

# --- a trapping proxy-wasm module ----------------------------------------------------------------


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _vec(items) -> bytes:
    items = list(items)
    return _leb(len(items)) + b"".join(items)


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + _leb(len(payload)) + payload


def _name(s: str) -> bytes:
    return _leb(len(s)) + s.encode()


I32 = 0x7F
UNREACHABLE, I32_CONST, END = 0x00, 0x41, 0x0B


def _functype(params, results) -> bytes:
    return b"\x60" + _vec(bytes([p]) for p in params) + _vec(bytes([r]) for r in results)


def trapping_module(configure: bool = True) -> bytes:
    """Exports the ABI 0.2.1 marker, an allocator, and callbacks that accept the VM, its
    configuration (or refuse it: `configure=False`) and every context, then trap on the first
    request's headers."""
    types = [_functype([], []), _functype([I32], [I32]), _functype([I32, I32], []),
             _functype([I32, I32], [I32]), _functype([I32, I32, I32], [I32])]
    funcs = [  # (export name, type index, body instructions)
        ("proxy_abi_version_0_2_1", 0, bytes([END])),
        ("proxy_on_memory_allocate", 1, bytes([I32_CONST]) + _leb(1024) + bytes([END])),
        ("proxy_on_context_create", 2, bytes([END])),
        ("proxy_on_vm_start", 3, bytes([I32_CONST, 1, END])),
        ("proxy_on_configure", 3, bytes([I32_CONST, int(configure), END])),
        ("proxy_on_request_headers", 4, bytes([UNREACHABLE, END])),
    ]
    exports = [_name("memory") + b"\x02\x00"] + [
        _name(name) + b"\x00" + _leb(i) for i, (name, _, _) in enumerate(funcs)]
    bodies = [_leb(len(b"\x00" + body)) + b"\x00" + body for _, _, body in funcs]
    return (b"\x00asm\x01\x00\x00\x00"
            + _section(1, _vec(types))
            + _section(3, _vec(_leb(t) for _, t, _ in funcs))
            + _section(5, _vec([b"\x00\x01"]))  # one memory, at least one page
            + _section(7, _vec(exports))
            + _section(10, _vec(bodies)))


CONFIG = """
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: ${ADMIN_PORT} } }
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: ${LISTENER_PORT} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: ${ACCESS_LOG_PATH}
              log_format:
                text_format_source:
                  inline_string: "%RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\\n"
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream, timeout: 15s }
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: trap
                root_id: trap
                failure_policy: ${FAILURE_POLICY}
                vm_config:
                  vm_id: trap
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: ${WASM_PATH} } }
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: { socket_address: { address: 127.0.0.1, port_value: ${UPSTREAM_PORT} } }
"""


@pytest.fixture
def trap_envoy(envoy_factory, upstream, run_dir):
    template = run_dir / "trap.yaml"
    template.write_text(CONFIG)

    def start(policy: str, configure: bool = True):
        wasm = run_dir / f"trap-{int(configure)}.wasm"
        wasm.write_bytes(trapping_module(configure))
        return envoy_factory(template=str(template), upstream_port=upstream.port,
                             template_values={"WASM_PATH": wasm, "FAILURE_POLICY": policy})
    return start


def _three_requests(e):
    return [client.request(e.port, "GET", f"/after-trap/{i}", timeout=10) for i in range(3)]


def test_fail_closed_a_trapped_vm_fails_every_later_request(trap_envoy, upstream):
    """FAIL_CLOSED (the default): the trapping request and every later one on that worker get a
    503 from Envoy; nothing reaches the upstream; Envoy itself stays up."""
    e = trap_envoy("FAIL_CLOSED")
    responses = _three_requests(e)
    assert [r.status for r in responses] == [503, 503, 503], responses
    assert upstream.total_attempts == 0
    assert e.alive()
    e.wait_for(lambda: len(e.access_log()) >= 3)  # the access log is flushed every 50 ms
    details = [line.split()[1] for line in e.access_log() if line.strip()]
    print(f"\n[vm failure] FAIL_CLOSED: statuses 503x3, details {details}")
    assert details == ["wasm_fail_stream"] * 3, details


def test_fail_open_a_trapped_vm_lets_requests_pass_unfiltered(trap_envoy, upstream):
    """FAIL_OPEN: the request whose callback trapped still fails (503), every later one reaches
    the upstream as if the filter were absent (asserted here by statuses and attempt counts; for
    resetguard that also means no retries armed, no client headers stripped, no key enforced)."""
    e = trap_envoy("FAIL_OPEN")
    responses = _three_requests(e)
    statuses = [r.status for r in responses]
    print(f"\n[vm failure] FAIL_OPEN: statuses {statuses}, upstream attempts "
          f"{upstream.total_attempts}")
    assert statuses == [503, 200, 200], responses
    assert upstream.total_attempts == 2  # the two later requests, once each: no retry
    assert e.alive()


def test_fail_reload_a_trapped_vm_fails_closed_until_reloaded(trap_envoy, upstream):
    """FAIL_RELOAD: Envoy replaces the trapped VM, but not at once: within its reload backoff
    (counted in wasm.<name>.vm_reload_backoff) requests fail closed, and a module that traps
    again fails its request again. Reloading cures a one-off, not a deterministic bug."""
    e = trap_envoy("FAIL_RELOAD")
    responses = _three_requests(e)
    statuses = [r.status for r in responses]
    reloads = {k: v for k, v in e.stats("wasm").items() if "reload" in k}
    print(f"\n[vm failure] FAIL_RELOAD: statuses {statuses}, reload stats {reloads}")
    assert statuses == [503, 503, 503], responses
    assert upstream.total_attempts == 0
    assert reloads.get("wasm.trap.vm_reload_backoff", 0) \
        + reloads.get("wasm.trap.vm_reload_success", 0) >= 1, reloads


def test_a_refused_configuration_stops_envoy_even_with_fail_open(trap_envoy):
    """A plugin whose on_configure fails at start-up keeps Envoy from starting under every
    failure_policy, FAIL_OPEN included: a configuration resetguard rejects is never skipped."""
    for policy in ("FAIL_OPEN", "FAIL_CLOSED"):
        with pytest.raises(EnvoyError, match="exited"):
            trap_envoy(policy, configure=False)
