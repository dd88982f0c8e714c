//! The `resetguard` binary on every shipped example (must pass) and on broken variants of them
//! (must fail, naming file, line and path).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resetguard"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every JSON/YAML file under examples/.
fn shipped_examples() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path
                .extension()
                .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
            {
                let rel = path.strip_prefix(repo()).unwrap_or(&path);
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join("examples"), &mut out);
    out.sort();
    out
}

/// A broken copy of a shipped example: each `from` must occur in it and is replaced once.
fn broken(name: &str, example: &str, edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(repo().join(example)).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{example} no longer contains {from:?}");
        text = text.replacen(from, to, 1);
    }
    let dir = std::env::temp_dir().join(format!("resetguard-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn line_of(file: &str, needle: &str) -> usize {
    let text = std::fs::read_to_string(repo().join(file)).unwrap_or_default();
    let text = if text.is_empty() {
        std::fs::read_to_string(file).unwrap()
    } else {
        text
    };
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

/// Runs `validate FILE`, expects status 1 and every fragment on stderr; returns stderr.
fn rejected(file: &str, fragments: &[&str]) -> String {
    let out = run(&["validate", file]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
    for fragment in fragments {
        assert!(
            stderr.contains(fragment),
            "{file}: no {fragment:?} in\n{stderr}"
        );
    }
    stderr
}

#[test]
fn every_shipped_example_validates() {
    let examples = shipped_examples();
    assert!(examples.len() >= 6, "{examples:?}");
    for example in &examples {
        let out = run(&["validate", example]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{example}:\n{stdout}\n{stderr}");
        assert!(stdout.starts_with(&format!("ok: {example}\n")), "{stdout}");
        assert!(stdout.contains("effective policy:"), "{stdout}");
        assert!(!stderr.contains("error"), "{stderr}");
    }
}

#[test]
fn the_bootstrap_shows_each_routes_effective_policy() {
    let out = run(&["validate", "examples/envoy/bootstrap.yaml"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("recognised by root_id \"resetguard\""),
        "{stdout}"
    );
    let uploads = stdout.split("route \"uploads\"").nth(1).expect(&stdout);
    assert!(
        uploads.contains(
            "x-envoy-retry-on: reset,connect-failure,refused-stream; x-envoy-max-retries: 1"
        ),
        "{stdout}"
    );
    let events = stdout.split("route \"events\"").nth(1).expect(&stdout);
    assert!(
        events.contains("resetguard disabled on this route"),
        "{stdout}"
    );
}

#[test]
fn a_plugin_json_reports_every_error_with_line_and_path() {
    let file = broken(
        "three-errors.json",
        "examples/config/strict.json",
        &[
            (
                "\"max_retries\": 2,",
                "\"max_retries\": 11, \"maxretries\": 1,",
            ),
            ("\"debug\"", "\"loud\""),
        ],
    );
    let line = line_of(&file, "max_retries");
    rejected(
        &file,
        &[
            &format!("{file}:{line}: retry.max_retries: invalid plugin configuration: an integer from 0 to 10, got 11"),
            "retry.maxretries: invalid plugin configuration: no such setting",
            "client_abort.log_level: invalid plugin configuration: one of",
            "3 error(s)",
        ],
    );
}

#[test]
fn a_bootstrap_error_names_the_filter_and_the_field() {
    let file = broken(
        "bad-plugin.yaml",
        "examples/envoy/bootstrap.yaml",
        &[(
            "\"connect-failure\", \"refused-stream\"]},",
            "\"connect-failure\", \"refused-strem\"]},",
        )],
    );
    let line = line_of(&file, "value: |");
    rejected(&file, &[&format!("{file}:{line}: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.config.configuration.value: invalid plugin configuration at `retry.on[2]`: one of")]);
}

#[test]
fn a_bad_route_override_names_the_route_and_the_field() {
    let file = broken(
        "bad-override.yaml",
        "examples/envoy/bootstrap.yaml",
        &[(
            "retry: { max_retries: 1 }",
            "retry: { max_retries: 99 }\n                      idempotency: { shards: 4 }",
        )],
    );
    let line = line_of(&file, "shards: 4");
    rejected(&file, &[&format!("{file}:{line}: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].metadata.filter_metadata.resetguard.idempotency.shards: invalid route override: a setting that cannot vary per route")]);
    let file = broken(
        "bad-override-2.yaml",
        "examples/envoy/bootstrap.yaml",
        &[("retry: { max_retries: 1 }", "retry: { max_retries: 99 }")],
    );
    rejected(&file, &["routes[0].metadata.filter_metadata.resetguard.retry.max_retries: invalid route override (merged onto the plugin configuration): an integer from 0 to 10, got 99"]);
}

#[test]
fn a_bare_on_in_a_kubernetes_manifest_is_caught_with_a_hint() {
    for (name, example) in [
        ("istio.yaml", "examples/istio/wasmplugin.yaml"),
        (
            "gateway.yaml",
            "examples/envoy-gateway/envoyextensionpolicy.yaml",
        ),
    ] {
        let file = broken(name, example, &[("\"on\": [", "on: [")]);
        let line = line_of(&file, " on: [");
        rejected(
            &file,
            &[
                &format!("{file}:{line}: "),
                "retry.true: invalid plugin configuration: no such setting",
                "hint:",
                "quote it: \"on\"",
            ],
        );
    }
}

#[test]
fn unusable_input_exits_2() {
    let garbage = broken(
        "garbage.yaml",
        "examples/envoy/bootstrap.yaml",
        &[("static_resources:", "static_resources: [")],
    );
    let no_filter = broken(
        "no-filter.yaml",
        "examples/envoy/bootstrap.yaml",
        &[
            ("root_id: resetguard", "root_id: other"),
            ("name: resetguard", "name: other"),
            (
                "filename: /etc/envoy/resetguard.wasm",
                "filename: /etc/envoy/other.wasm",
            ),
        ],
    );
    for (file, says) in [
        (garbage.as_str(), "cannot parse"),
        (no_filter.as_str(), "no resetguard configuration found"),
        ("does/not/exist.json", "cannot read"),
    ] {
        let out = run(&["validate", file]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains(says), "{file}: {stderr}");
        if file == no_filter {
            assert!(
                stdout.contains("skipped a Wasm filter that does not look like resetguard"),
                "{stdout}"
            );
        }
    }
    assert_eq!(run(&["validate"]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
}

/// Runs `explain ARGS`, expects success and every fragment in its output.
fn explain_says(args: &[&str], fragments: &[&str]) {
    let out = run(&[&["explain"], args].concat());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    for fragment in fragments {
        assert!(
            stdout.contains(fragment),
            "{args:?}: no {fragment:?} in\n{stdout}"
        );
    }
}

#[test]
fn explain_a_reset_safe_get_and_keyed_posts() {
    let bootstrap = ["--config", "examples/envoy/bootstrap.yaml"];
    let idempotency = ["--config", "examples/config/idempotency.json"];
    explain_says(
        &[&bootstrap[..], &["GET", "/items", "-H", "x-envoy-retry-on: 5xx"]].concat(),
        &[
            "\n  x-envoy-retry-on: reset,connect-failure,refused-stream\n  x-envoy-max-retries: 2\n",
            "client retry headers stripped: x-envoy-retry-on",
        ],
    );
    explain_says(
        &[&idempotency[..], &["POST", "/payments", "-H", "authorization: Bearer t", "-H", "content-length: 2"]].concat(),
        &[
            "router headers set: none used (the filter answers",
            "idempotency key: required, idempotency-key missing",
            "local reply: 400 application/problem+json, type urn:resetguard:problem:idempotency-key-missing",
        ],
    );
    explain_says(
        &[
            &idempotency[..],
            &[
                "POST",
                "/payments",
                "-H",
                "Idempotency-Key: \"k1\"",
                "-H",
                "content-length: 2",
            ],
        ]
        .concat(),
        &[
            "x-envoy-retry-on: reset-before-request,connect-failure,refused-stream",
            "idempotency key: required and valid (idempotency-key: k1)",
            "key scope: a keyed hash of authorization (0 values)",
            "the anonymous scope",
        ],
    );
}

#[test]
fn explain_applies_route_overrides() {
    let bootstrap = ["--config", "examples/envoy/bootstrap.yaml"];
    let strict = ["--config", "examples/config/strict.json"];
    explain_says(
        &[&bootstrap[..], &["--route", "uploads", "PUT", "/uploads/a"]].concat(),
        &["x-envoy-max-retries: 1\n"],
    );
    explain_says(
        &[&bootstrap[..], &["--route", "events", "GET", "/events/a"]].concat(),
        &["resetguard is disabled on this route"],
    );
    explain_says(
        &[
            &strict[..],
            &[
                "--route-override",
                r#"{"retry": {"per_try_timeout_ms": 250}}"#,
                "GET",
                "/",
            ],
        ]
        .concat(),
        &["x-envoy-upstream-rq-per-try-timeout-ms: 250\n"],
    );
    let out = run(&[
        &["explain"],
        &strict[..],
        &[
            "--route-override",
            r#"{"retry": {"max_retries": "x"}}"#,
            "GET",
            "/",
        ],
    ]
    .concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("retry.max_retries"),
        "{:?}",
        text(&out)
    );
    assert_eq!(run(&["explain", "GET", "/"]).status.code(), Some(2));
}

#[test]
fn schema_prints_the_shipped_schema() {
    let out = run(&["schema"]);
    let shipped = std::fs::read_to_string(repo().join("schema/resetguard.schema.json")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), shipped);
}

#[test]
fn a_struct_configuration_is_read_as_envoy_passes_it() {
    let file = broken("struct.yaml", "examples/envoy/bootstrap.yaml", &[("\"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: |\n                    {\"retry\": {\"max_retries\": 2, \"on\": [\"reset\", \"connect-failure\", \"refused-stream\"]},\n                     \"idempotency\": {\"path_prefixes\": [\"/payments/\"]}}", "\"@type\": type.googleapis.com/google.protobuf.Struct\n                  value:\n                    retry: { max_retries: 3, per_try_timeout_ms: -1 }")]);
    let line = line_of(&file, "per_try_timeout_ms: -1");
    rejected(&file, &[&format!("{file}:{line}: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.config.configuration.value.retry.per_try_timeout_ms: invalid plugin configuration: an integer from 0 to 3600000, got -1")]);
}

#[test]
fn an_empty_file_is_all_defaults_and_a_yaml_plugin_config_is_read_as_json() {
    let dir = std::env::temp_dir().join(format!("resetguard-cli-plain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.json");
    std::fs::write(&empty, "\n").unwrap();
    let out = run(&["validate", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(text(&out).0.contains("x-envoy-max-retries: 2"));
    let yaml = dir.join("plugin.yaml");
    std::fs::write(&yaml, "retry:\n  max_retries: 4\n  \"on\": [reset]\n").unwrap();
    let out = run(&["validate", yaml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(text(&out)
        .0
        .contains("x-envoy-retry-on: reset; x-envoy-max-retries: 4"));
    std::fs::write(&yaml, "retry:\n  max_retries: 40\n").unwrap();
    rejected(yaml.to_str().unwrap(), &["plugin.yaml:2: retry.max_retries: invalid plugin configuration: an integer from 0 to 10, got 40"]);
}

#[test]
fn a_route_that_turns_the_filter_off_in_envoy_is_shown() {
    let file = broken(
        "filterconfig.yaml",
        "examples/envoy/bootstrap.yaml",
        &[(
            "metadata:\n                  filter_metadata:\n                    resetguard: { disabled: true }",
            "typed_per_filter_config:\n                  envoy.filters.http.wasm:\n                    \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig\n                    disabled: true",
        )],
    );
    let out = run(&["validate", &file]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let events = stdout.split("route \"events\"").nth(1).expect(&stdout);
    assert!(
        events.contains("resetguard turned off on this route (Envoy's per-route FilterConfig"),
        "{stdout}"
    );
}

#[test]
fn an_etcd_store_cluster_must_be_one_of_the_bootstraps() {
    // The filter cannot tell an unknown cluster from one not usable yet: validate checks the name.
    let unknown = broken(
        "etcd-unknown.yaml",
        "examples/envoy/bootstrap.yaml",
        &[(
            r#""idempotency": {"path_prefixes": ["/payments/"]}}"#,
            r#""idempotency": {"path_prefixes": ["/payments/"], "store": {"backend": "etcd", "cluster": "etcd-mebers"}}}"#,
        )],
    );
    rejected(
        &unknown,
        &["invalid plugin configuration at `idempotency.store.cluster`: a cluster of this bootstrap (static_resources.clusters), got \"etcd-mebers\""],
    );
    let known = broken(
        "etcd-known.yaml",
        "examples/envoy/bootstrap.yaml",
        &[(
            r#""idempotency": {"path_prefixes": ["/payments/"]}}"#,
            r#""idempotency": {"path_prefixes": ["/payments/"], "store": {"backend": "etcd", "cluster": "backend"}}}"#,
        )],
    );
    let out = run(&["validate", &known]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
}
