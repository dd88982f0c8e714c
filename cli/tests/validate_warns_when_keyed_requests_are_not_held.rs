//! `resetguard validate` on files that enable `idempotency`: it finds the hold (Envoy's buffer
//! filter after resetguard, before the router, for requests with the key header) or says what is
//! wrong with the chain, with the numbers. Warnings and hints only: the exit status stays 0.
//! cli/src/hold.rs; README, "Keeping locally answered requests off the upstream".

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resetguard-hold-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn validate(name: &str, text: &str) -> (String, Run) {
    let path = temp_dir().join(name);
    std::fs::write(&path, text).unwrap();
    let file = path.to_string_lossy().into_owned();
    (file.clone(), validate_path(&file))
}

fn validate_path(file: &str) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_resetguard"))
        .args(["validate", file])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("the binary runs");
    Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

const PLUGIN: &str = r#"{"idempotency": {"path_prefixes": ["/payments/"]}}"#;

fn resetguard(plugin: &str) -> String {
    format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                root_id: resetguard
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: /etc/envoy/resetguard.wasm }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{plugin}'
"#
    )
}

/// The hold as the shipped bootstrap has it: a buffer behind a matcher that skips requests
/// without the key header.
fn hold(max_request_bytes: u64, header: &str) -> String {
    format!(
        r#"          - name: resetguard.hold_keyed_requests
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
              extension_config:
                name: envoy.filters.http.buffer
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
                  max_request_bytes: {max_request_bytes}
              xds_matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      not_matcher:
                        single_predicate:
                          input:
                            name: key
                            typed_config:
                              "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput
                              header_name: {header}
                          value_match: {{ safe_regex: {{ google_re2: {{}}, regex: ".*" }} }}
                    on_match:
                      action:
                        name: skip
                        typed_config:
                          "@type": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter
"#
    )
}

fn plain_buffer(name: &str, max_request_bytes: u64, disabled: bool) -> String {
    format!(
        r#"          - name: {name}
            disabled: {disabled}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: {max_request_bytes}
"#
    )
}

const ROUTER: &str = r#"          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

const DEFAULT_ROUTE: &str = r#"              - name: default
                match: { prefix: "/" }
                route: { cluster: backend }
"#;

/// A static bootstrap: one listener (with `listener_extra` lines), its routes and HTTP filters.
fn bootstrap(listener_extra: &str, routes: &str, filters: &[&str]) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 10000 }} }}
{listener_extra}    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
{routes}          http_filters:
{}  clusters:
  - name: backend
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 8080 }} }} }}
"#,
        filters.concat()
    )
}

const HCM: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

fn assert_ok(file: &str, run: &Run) {
    assert_eq!(
        run.status,
        Some(0),
        "{file}:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout.starts_with(&format!("ok: {file}\n")),
        "{}",
        run.stdout
    );
}

fn assert_says(run: &Run, fragments: &[&str]) {
    for fragment in fragments {
        assert!(
            run.stderr.contains(fragment),
            "no {fragment:?} in\n{}",
            run.stderr
        );
    }
}

#[test]
fn a_hold_between_resetguard_and_the_router_passes_without_a_warning() {
    let rg = resetguard(PLUGIN);
    let held = hold(2097152, "idempotency-key");
    let (file, run) = validate(
        "held.yaml",
        &bootstrap("", DEFAULT_ROUTE, &[&rg, &held, ROUTER]),
    );
    assert_ok(&file, &run);
    assert_eq!(run.stderr, "", "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "hold: {file}:"
        )) && run.stdout.contains(&format!("{HCM}.http_filters[1]: keyed requests are held by `resetguard.hold_keyed_requests` (http_filters[1]) between resetguard (http_filters[0]) and the router: max_request_bytes 2097152 >= 1048576 + 1048576")),
        "{}",
        run.stdout
    );
    // The shipped bootstrap carries the same hold.
    let shipped = validate_path("examples/envoy/bootstrap.yaml");
    assert_eq!(shipped.stderr, "", "{}", shipped.stderr);
    assert!(
        shipped
            .stdout
            .contains("keyed requests are held by `resetguard.hold_keyed_requests`"),
        "{}",
        shipped.stdout
    );
}

#[test]
fn a_chain_without_a_hold_is_warned_about_with_the_positions_and_the_size_needed() {
    let rg = resetguard(PLUGIN);
    let text = bootstrap("", DEFAULT_ROUTE, &[&rg, ROUTER]);
    let (file, run) = validate("no-hold.yaml", &text);
    assert_ok(&file, &run);
    let line = line_of(&text, "- name: envoy.filters.http.wasm");
    assert_says(
        &run,
        &[&format!(
            "warning: {file}:{line}: {HCM}.http_filters[0]: idempotency is enabled, but no buffer \
             filter holds keyed requests between resetguard (http_filters[0]) and the router \
             (http_filters[1]): a replay, 422 or mid-body 413 that resetguard answers from the \
             request body reaches the upstream as request line and headers, then a cut \
             connection (measured on Envoy 1.40: 53-71 % of re-sends of completed keys); add \
             envoy.filters.http.buffer there for requests with an `idempotency-key` header, \
             max_request_bytes >= 1048576 + 1048576 = 2097152"
        )],
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    // Without `idempotency` there is nothing to hold.
    let plain = resetguard(r#"{"retry": {"max_retries": 1}}"#);
    let (file, run) = validate(
        "retries-only.yaml",
        &bootstrap("", DEFAULT_ROUTE, &[&plain, ROUTER]),
    );
    assert_ok(&file, &run);
    assert_eq!(run.stderr, "");
    assert!(!run.stdout.contains("\nhold: "), "{}", run.stdout);
}

#[test]
fn a_buffer_filter_ahead_of_resetguard_is_the_failing_order() {
    let rg = resetguard(PLUGIN);
    let ahead = plain_buffer("envoy.filters.http.buffer", 2097152, false);
    let text = bootstrap("", DEFAULT_ROUTE, &[&ahead, &rg, ROUTER]);
    let (file, run) = validate("ahead.yaml", &text);
    assert_ok(&file, &run);
    let buffer_line = line_of(&text, "- name: envoy.filters.http.buffer");
    assert_says(
        &run,
        &[
            "http_filters[1]: idempotency is enabled, but no buffer filter holds keyed requests \
             between resetguard (http_filters[1]) and the router (http_filters[2])",
            &format!(
                "warning: {file}:{buffer_line}: {HCM}.http_filters[0]: the buffer filter \
                 `envoy.filters.http.buffer` (http_filters[0]) is ahead of resetguard \
                 (http_filters[1]), which does not help: resetguard still passes a keyed \
                 request's headers on before it reads the body"
            ),
            "a client that declares an oversized body and waits for the answer hangs; move it \
             after resetguard, before the router",
        ],
    );
}

#[test]
fn a_hold_smaller_than_the_keyed_body_limit_is_named_with_both_numbers() {
    let rg = resetguard(PLUGIN);
    let small = hold(524288, "idempotency-key");
    let text = bootstrap("", DEFAULT_ROUTE, &[&rg, &small, ROUTER]);
    let (file, run) = validate("small.yaml", &text);
    assert_ok(&file, &run);
    let line = line_of(&text, "max_request_bytes: 524288");
    assert_says(
        &run,
        &[&format!(
            "warning: {file}:{line}: {HCM}.http_filters[1].typed_config.extension_config.\
             typed_config.max_request_bytes: the hold's max_request_bytes 524288 is below \
             idempotency.max_request_body_bytes 1048576 (the plugin configuration): keyed bodies \
             of 524289 to 1048576 bytes, which resetguard accepts, get Envoy's plain-text 413; \
             set it to at least 1048576 + 1048576 (per_connection_buffer_limit_bytes) = 2097152"
        )],
    );
    // Above the body limit but below it plus one read of the listener's buffer limit.
    let tight = hold(1048576 + 65536, "idempotency-key");
    let (_, run) = validate(
        "tight.yaml",
        &bootstrap("", DEFAULT_ROUTE, &[&rg, &tight, ROUTER]),
    );
    assert_eq!(run.status, Some(0));
    assert_says(
        &run,
        &[
            "the hold's max_request_bytes 1114112 is below idempotency.max_request_body_bytes \
           1048576 (the plugin configuration) + 1048576 (per_connection_buffer_limit_bytes) = \
           2097152: a keyed body over 1048576 bytes sent in chunks can get Envoy's plain-text 413 \
           instead of resetguard's problem+json one; set it to at least 2097152",
        ],
    );
    // The listener's own buffer limit counts: 1 MiB + 32 KiB is enough for a 32 KiB listener.
    let fits = hold(1048576 + 32768, "idempotency-key");
    let (file, run) = validate(
        "fits.yaml",
        &bootstrap(
            "    per_connection_buffer_limit_bytes: 32768\n",
            DEFAULT_ROUTE,
            &[&rg, &fits, ROUTER],
        ),
    );
    assert_ok(&file, &run);
    assert_eq!(run.stderr, "", "{}", run.stderr);
    // A body limit raised by the plugin: the hold must follow it.
    let big = resetguard(r#"{"idempotency": {"max_request_body_bytes": 4194304}}"#);
    let held = hold(2097152, "idempotency-key");
    let (_, run) = validate(
        "big-bodies.yaml",
        &bootstrap("", DEFAULT_ROUTE, &[&big, &held, ROUTER]),
    );
    assert_says(
        &run,
        &["max_request_bytes 2097152 is below idempotency.max_request_body_bytes 4194304"],
    );
}

#[test]
fn route_overrides_and_per_route_settings_are_checked_per_route() {
    let rg = resetguard(PLUGIN);
    let held = hold(2097152, "idempotency-key");
    // A route's override raises the body limit; another turns the hold off on a keyed path.
    let routes = r#"              - name: uploads
                match: { prefix: "/payments/uploads/" }
                route: { cluster: backend }
                metadata:
                  filter_metadata:
                    resetguard: { idempotency: { max_request_body_bytes: 3145728 } }
              - name: refunds
                match: { prefix: "/payments/refunds/" }
                route: { cluster: backend }
                typed_per_filter_config:
                  resetguard.hold_keyed_requests:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - name: static
                match: { prefix: "/static/" }
                route: { cluster: backend }
                typed_per_filter_config:
                  resetguard.hold_keyed_requests:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
"#;
    let text = bootstrap(
        "",
        &format!("{routes}{DEFAULT_ROUTE}"),
        &[&rg, &held, ROUTER],
    );
    let (file, run) = validate("routes.yaml", &text);
    assert_ok(&file, &run);
    let refunds = line_of(&text, "- name: refunds");
    assert_says(
        &run,
        &[
            "max_request_bytes 2097152 is below idempotency.max_request_body_bytes 3145728 \
             (route \"uploads\"'s override)",
            &format!(
                "warning: {file}:{refunds}: {HCM}.route_config.virtual_hosts[0].routes[1]: route \
                 \"refunds\" turns the hold `resetguard.hold_keyed_requests` off \
                 (typed_per_filter_config), but resetguard enforces idempotency keys there"
            ),
        ],
    );
    // /static/ is outside idempotency.path_prefixes: turning the hold off there is fine.
    assert!(!run.stderr.contains("\"static\""), "{}", run.stderr);

    // The hold disabled in the chain and enabled per route (BufferPerRoute), as Envoy Gateway
    // emits a requestBuffer: the keyed route without it is named.
    let off = plain_buffer("envoy.filters.http.buffer", 2097152, true);
    let routes = r#"              - name: payments
                match: { prefix: "/payments/" }
                route: { cluster: backend }
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                    buffer: { max_request_bytes: 2097152 }
              - name: legacy
                match: { prefix: "/payments-v1/" }
                route: { cluster: backend }
"#;
    let rg_all = resetguard(r#"{"idempotency": {}}"#);
    let (file, run) = validate(
        "per-route.yaml",
        &bootstrap("", routes, &[&rg_all, &off, ROUTER]),
    );
    assert_ok(&file, &run);
    assert_says(
        &run,
        &[
            "routes[1]: the hold `envoy.filters.http.buffer` (http_filters[1]) is disabled in the \
           chain and route \"legacy\" does not enable it",
        ],
    );
    assert!(!run.stderr.contains("route \"payments\""), "{}", run.stderr);
}

#[test]
fn a_hold_on_another_header_and_report_mode_are_told_apart() {
    let rg = resetguard(r#"{"idempotency": {"header": "X-Request-Key"}}"#);
    let held = hold(2097152, "idempotency-key");
    let (file, run) = validate(
        "header.yaml",
        &bootstrap("", DEFAULT_ROUTE, &[&rg, &held, ROUTER]),
    );
    assert_ok(&file, &run);
    assert_says(
        &run,
        &["the hold `resetguard.hold_keyed_requests` matches on the header `idempotency-key`, but \
           idempotency.header is `x-request-key` (the plugin configuration): keyed requests are \
           not held; use header_name: x-request-key"],
    );
    // Report mode answers nothing yet: a hint, not a warning.
    let report = resetguard(r#"{"idempotency": {"mode": "report"}}"#);
    let (file, run) = validate(
        "report.yaml",
        &bootstrap("", DEFAULT_ROUTE, &[&report, ROUTER]),
    );
    assert_ok(&file, &run);
    assert!(run.stderr.starts_with("hint: "), "{}", run.stderr);
    assert_says(
        &run,
        &["(report mode: resetguard answers nothing yet; needed once it enforces)"],
    );
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
}

#[test]
fn a_plugin_json_alone_gets_a_one_line_hint() {
    let (file, run) = validate("plugin.json", PLUGIN);
    assert_ok(&file, &run);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "hint: {file}:1: idempotency: idempotency is enabled: in Envoy, add the hold after \
             resetguard, before the router"
        )),
        "{}",
        run.stderr
    );
    let (_, run) = validate("retries.json", r#"{"retry": {"max_retries": 1}}"#);
    assert_eq!(run.stderr, "");
}

const WASM_PLUGIN: &str = r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: resetguard, namespace: istio-system }
spec:
  selector: { matchLabels: { istio: ingressgateway } }
  url: oci://ghcr.io/example/resetguard:0.1.0
  match:
  - ports:
    - number: 8443
  pluginConfig:
    idempotency:
      path_prefixes: ["/payments/"]
"#;

#[test]
fn kubernetes_manifests_point_at_the_example_or_check_the_hold_next_to_them() {
    // Istio: a WasmPlugin alone cannot show the gateway's chain.
    let (file, run) = validate("istio.yaml", WASM_PLUGIN);
    assert_ok(&file, &run);
    assert_says(
        &run,
        &[
            "hint: ",
            "spec.pluginConfig.idempotency: idempotency is enabled: the gateway also needs the \
             hold, an EnvoyFilter that inserts envoy.filters.http.buffer",
            "see examples/istio/wasmplugin.yaml",
        ],
    );
    // An EnvoyFilter in the same file that puts the buffer first: ahead of resetguard.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/istio/wasmplugin.yaml"),
    )
    .unwrap();
    let envoy_filter = &shipped[shipped.find("\n---\n").expect("two documents")..];
    let first = envoy_filter.replacen("operation: INSERT_BEFORE", "operation: INSERT_FIRST", 1);
    let (file, run) = validate("istio-first.yaml", &format!("{WASM_PLUGIN}{first}"));
    assert_ok(&file, &run);
    assert_says(
        &run,
        &[
            "spec.configPatches[0]: this EnvoyFilter puts the buffer filter \
           `resetguard.hold_keyed_requests` ahead of resetguard (INSERT_FIRST)",
        ],
    );
    let small = envoy_filter.replacen(
        "max_request_bytes: 2097152",
        "max_request_bytes: 1048576",
        1,
    );
    let (_, run) = validate("istio-small.yaml", &format!("{WASM_PLUGIN}{small}"));
    assert_says(
        &run,
        &[
            "the hold's max_request_bytes 1048576 is below idempotency.max_request_body_bytes \
           1048576 (the WasmPlugin's pluginConfig) + 1048576",
        ],
    );
    let (file, run) = validate("istio-held.yaml", &format!("{WASM_PLUGIN}{envoy_filter}"));
    assert_ok(&file, &run);
    assert_eq!(run.stderr, "", "{}", run.stderr);

    // Envoy Gateway: a requestBuffer without the EnvoyProxy filterOrder is the failing order.
    let gateway = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/envoy-gateway/envoyextensionpolicy.yaml"),
    )
    .unwrap();
    let without_order = &gateway[..gateway.rfind("\n---\n").expect("the EnvoyProxy")];
    let (file, run) = validate("gateway-no-order.yaml", without_order);
    assert_ok(&file, &run);
    assert_says(
        &run,
        &["spec.requestBuffer: Envoy Gateway orders its buffer filter ahead of Wasm by default"],
    );
    let policy_only = &gateway[..gateway.find("\n---\n").expect("documents")];
    let (file, run) = validate("gateway-alone.yaml", policy_only);
    assert_ok(&file, &run);
    assert_says(
        &run,
        &[
            "hint: ",
            "a BackendTrafficPolicy requestBuffer (limit >= 1081344)",
            "examples/envoy-gateway/envoyextensionpolicy.yaml",
        ],
    );
}

#[test]
fn the_shipped_examples_have_their_holds() {
    for example in [
        "examples/envoy/bootstrap.yaml",
        "examples/istio/wasmplugin.yaml",
        "examples/envoy-gateway/envoyextensionpolicy.yaml",
    ] {
        let run = validate_path(example);
        assert_ok(example, &run);
        assert_eq!(run.stderr, "", "{example}: {}", run.stderr);
        assert!(
            run.stdout.contains("keyed requests are held by"),
            "{}",
            run.stdout
        );
    }
    // A plugin JSON with idempotency only gets the hint.
    let run = validate_path("examples/config/idempotency.json");
    assert_ok("examples/config/idempotency.json", &run);
    assert!(run.stderr.starts_with("hint: "), "{}", run.stderr);
}
