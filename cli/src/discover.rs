//! Finds resetguard in a loaded document: a plain plugin config, the `envoy.filters.http.wasm`
//! filters of an Envoy bootstrap (or LDS/RDS resource file) that load resetguard, their route
//! overrides, or the plugin config of an Istio `WasmPlugin` / Envoy Gateway
//! `EnvoyExtensionPolicy`.
//!
//! A Wasm filter is resetguard when its `config.root_id` or `config.name` contains "resetguard",
//! or its VM code (`vm_config.code.local.filename`, `.remote.http_uri.uri`) names a file whose
//! name contains "resetguard". The filter itself registers for any root id, so this is the
//! documented convention, not a property of the module.

use crate::document::{child_index, child_key, Document};
use serde_json::Value;

pub const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const STRUCT_TYPE: &str = "type.googleapis.com/google.protobuf.Struct";
/// Where Envoy route metadata for resetguard lives: `metadata.filter_metadata.resetguard`.
pub const METADATA_NAMESPACE: &str = "resetguard";

/// What kind of file a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PluginConfig,
    Envoy,
    Manifest,
}

/// A plugin configuration found in a document, as the filter would receive it.
#[derive(Debug, Clone)]
pub struct FoundConfig {
    /// Human-readable: which filter or manifest this is.
    pub label: String,
    /// Document path of the node holding the plugin config.
    pub path: String,
    /// The bytes `on_configure` would get, or why they cannot be had.
    pub raw: Result<Vec<u8>, String>,
    /// When the config is a YAML/JSON mapping in the document (not a JSON string), its path, so
    /// a config field path maps to a line.
    pub inline_path: Option<String>,
    /// The HTTP filter's name (routes disable it per route by this name).
    pub filter_name: Option<String>,
    /// The connection manager holding the filter, to pair it with its routes.
    pub hcm_path: Option<String>,
}

/// A route carrying `metadata.filter_metadata.resetguard`, or one that disables a filter.
#[derive(Debug, Clone)]
pub struct FoundRoute {
    pub path: String,
    /// The route's `name`, when it has one.
    pub name: Option<String>,
    /// The override object, when the route has one.
    pub override_value: Option<Value>,
    /// Filter names this route turns off with Envoy's per-route `FilterConfig {disabled: true}`.
    pub disabled_filters: Vec<String>,
    pub hcm_path: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Found {
    pub configs: Vec<FoundConfig>,
    pub routes: Vec<FoundRoute>,
    /// Wasm filters that do not look like resetguard: path, description.
    pub skipped: Vec<(String, String)>,
    /// Metadata that resetguard never reads (not on a route): path.
    pub ignored_metadata: Vec<String>,
}

impl FoundRoute {
    /// `"name"`, or where the route is when it has no name.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name:?}"),
            None => "(unnamed)".to_string(),
        }
    }
}

pub fn kind_of(value: &Value) -> Kind {
    if value.get("apiVersion").is_some() && value.get("kind").is_some() {
        return Kind::Manifest;
    }
    let envoy_top = [
        "static_resources",
        "dynamic_resources",
        "resources",
        "admin",
        "node",
    ];
    if envoy_top.iter().any(|k| value.get(k).is_some()) || contains_type_url(value) {
        Kind::Envoy
    } else {
        Kind::PluginConfig
    }
}

fn contains_type_url(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.contains_key("@type") || map.values().any(contains_type_url),
        Value::Array(items) => items.iter().any(contains_type_url),
        _ => false,
    }
}

/// Loads `text` as the filter will receive it: Kubernetes manifests read as YAML 1.1, as their
/// API server reads them (a bare `on` becomes `true`), everything else as JSON or YAML 1.2.
pub fn load(text: &str) -> Result<Vec<Document>, String> {
    let docs = crate::document::load(text)?;
    Ok(docs
        .into_iter()
        .enumerate()
        .map(|(index, doc)| match kind_of(&doc.value) {
            Kind::Manifest => Document::reload_as_yaml11(text, index).unwrap_or(doc),
            _ => doc,
        })
        .collect())
}

pub fn find(doc: &Document, text_if_plugin: &[u8]) -> Found {
    let mut found = Found::default();
    match kind_of(&doc.value) {
        Kind::PluginConfig => found.configs.push(FoundConfig {
            label: "plugin configuration".to_string(),
            path: "$".to_string(),
            // JSON (or nothing) goes to the parser byte for byte, as the proxy would pass it; a
            // YAML plugin config as the JSON it stands for.
            raw: if doc.value.is_null() || serde_json::from_slice::<Value>(text_if_plugin).is_ok() {
                Ok(text_if_plugin.to_vec())
            } else {
                serde_json::to_vec(&doc.value).map_err(|e| e.to_string())
            },
            inline_path: Some("$".to_string()),
            filter_name: None,
            hcm_path: None,
        }),
        Kind::Envoy => walk(&doc.value, "$", Context::default(), &mut found),
        Kind::Manifest => manifest(&doc.value, &mut found),
    }
    found
}

fn str_at<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .try_fold(value, |v, k| v.get(k))
        .and_then(Value::as_str)
}

fn names_resetguard(s: &str) -> bool {
    s.to_ascii_lowercase().contains("resetguard")
}

/// Why a Wasm `PluginConfig` is resetguard, or `None`.
fn recognise(config: &Value) -> Option<String> {
    for key in ["root_id", "name"] {
        if let Some(v) = str_at(config, &[key]).filter(|v| names_resetguard(v)) {
            return Some(format!("{key} {v:?}"));
        }
    }
    let code = [
        &["vm_config", "code", "local", "filename"][..],
        &["vm_config", "code", "remote", "http_uri", "uri"][..],
    ];
    for keys in code {
        if let Some(v) = str_at(config, keys) {
            let file = v.rsplit('/').next().unwrap_or(v);
            if names_resetguard(file) {
                return Some(format!("code {v:?}"));
            }
        }
    }
    None
}

/// The plugin JSON in `config.configuration` (an `Any`; Envoy hands a `StringValue`'s text to the
/// filter). Absent means empty: all defaults.
fn configuration_bytes(config: &Value) -> Result<Vec<u8>, String> {
    let Some(any) = config.get("configuration") else {
        return Ok(Vec::new());
    };
    match any.get("@type").and_then(Value::as_str) {
        Some(STRING_VALUE_TYPE) => match any.get("value") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
            Some(_) => Err("`value` of a StringValue must be a string".to_string()),
        },
        // Envoy serialises a Struct to JSON for the plugin.
        Some(STRUCT_TYPE) => match any.get("value") {
            None | Some(Value::Null) => Ok(b"{}".to_vec()),
            Some(v) => serde_json::to_vec(v).map_err(|e| e.to_string()),
        },
        Some(other) => Err(format!(
            "configuration of type {other}: resetguard reads its JSON from a {STRING_VALUE_TYPE} \
             (or a {STRUCT_TYPE})"
        )),
        None => Err(format!(
            "configuration without \"@type\": write {{\"@type\": \"{STRING_VALUE_TYPE}\", \"value\": \"<plugin JSON>\"}}"
        )),
    }
}

fn is_route(map: &serde_json::Map<String, Value>) -> bool {
    map.contains_key("match")
        && [
            "route",
            "redirect",
            "direct_response",
            "non_forwarding_action",
        ]
        .iter()
        .any(|k| map.contains_key(*k))
}

/// Where the walk is: the connection manager it is inside, and the name of the filter whose
/// `typed_config` it is in.
#[derive(Clone, Copy, Default)]
struct Context<'a> {
    hcm: Option<&'a str>,
    filter_name: Option<&'a str>,
}

fn walk(value: &Value, path: &str, ctx: Context<'_>, found: &mut Found) {
    match value {
        Value::Object(map) => {
            let hcm_here = if map.get("http_filters").is_some_and(Value::is_array) {
                Some(path.to_string())
            } else {
                None
            };
            let hcm = hcm_here.as_deref().or(ctx.hcm);
            if map.get("@type").and_then(Value::as_str) == Some(WASM_FILTER_TYPE) {
                wasm_filter(value, path, hcm, ctx.filter_name, found);
            }
            let metadata = value
                .get("metadata")
                .and_then(|m| m.get("filter_metadata"))
                .and_then(|m| m.get(METADATA_NAMESPACE));
            if is_route(map) {
                route(value, path, hcm, metadata, found);
            } else if metadata.is_some() {
                let at = child_key(
                    &child_key(&child_key(path, "metadata"), "filter_metadata"),
                    METADATA_NAMESPACE,
                );
                found.ignored_metadata.push(at);
            }
            for (k, v) in map {
                let filter_name = match k.as_str() {
                    "typed_config" => map.get("name").and_then(Value::as_str),
                    _ => None,
                };
                walk(v, &child_key(path, k), Context { hcm, filter_name }, found);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(
                    v,
                    &child_index(path, i),
                    Context {
                        hcm: ctx.hcm,
                        filter_name: None,
                    },
                    found,
                );
            }
        }
        _ => {}
    }
}

/// The `typed_config` of a Wasm HTTP filter at `path`; its name sits one level up.
fn wasm_filter(
    typed: &Value,
    path: &str,
    hcm: Option<&str>,
    filter_name: Option<&str>,
    found: &mut Found,
) {
    let config = typed.get("config").unwrap_or(&Value::Null);
    let filter_path = path.strip_suffix(".typed_config").unwrap_or(path);
    let Some(reason) = recognise(config) else {
        let describe = format!(
            "a Wasm filter that does not look like resetguard (name {:?}, root_id {:?})",
            str_at(config, &["name"]).unwrap_or(""),
            str_at(config, &["root_id"]).unwrap_or("")
        );
        found.skipped.push((filter_path.to_string(), describe));
        return;
    };
    let at = child_key(&child_key(path, "config"), "configuration");
    // A Struct is part of the document: errors can point at the field's own line.
    let is_struct = config
        .pointer("/configuration/@type")
        .and_then(Value::as_str)
        == Some(STRUCT_TYPE);
    found.configs.push(FoundConfig {
        label: format!("resetguard filter (recognised by {reason})"),
        inline_path: is_struct.then(|| child_key(&at, "value")),
        path: at,
        raw: configuration_bytes(config),
        filter_name: filter_name.map(str::to_string),
        hcm_path: hcm.map(str::to_string),
    });
}

fn route(
    route: &Value,
    path: &str,
    hcm: Option<&str>,
    metadata: Option<&Value>,
    found: &mut Found,
) {
    let disabled_filters: Vec<String> = route
        .get("typed_per_filter_config")
        .and_then(Value::as_object)
        .map(|per_filter| {
            per_filter
                .iter()
                .filter(|(_, c)| c.get("disabled") == Some(&Value::Bool(true)))
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default();
    if metadata.is_none() && disabled_filters.is_empty() {
        return;
    }
    let name = str_at(route, &["name"]).map(str::to_string);
    found.routes.push(FoundRoute {
        path: path.to_string(),
        name,
        override_value: metadata.cloned(),
        disabled_filters,
        hcm_path: hcm.map(str::to_string),
    });
}

/// Istio `WasmPlugin` (`spec.pluginConfig`) and Envoy Gateway `EnvoyExtensionPolicy`
/// (`spec.wasm[].config`); Kubernetes hands the filter the mapping serialised as JSON.
fn manifest(value: &Value, found: &mut Found) {
    let kind = str_at(value, &["kind"]).unwrap_or("");
    let name = str_at(value, &["metadata", "name"]).unwrap_or("");
    let mut push = |label: String, path: String, config: Option<&Value>| {
        let raw = match config {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::to_vec(v).map_err(|e| e.to_string()),
        };
        found.configs.push(FoundConfig {
            label,
            path: path.clone(),
            raw,
            inline_path: Some(path),
            filter_name: None,
            hcm_path: None,
        });
    };
    match kind {
        "WasmPlugin" => {
            let spec = value.get("spec").unwrap_or(&Value::Null);
            let ident = ["pluginName", "url"].iter().find_map(|k| {
                str_at(spec, &[k])
                    .filter(|v| names_resetguard(v))
                    .map(|v| format!("{k} {v:?}"))
            });
            match ident {
                Some(why) => push(
                    format!("Istio WasmPlugin {name:?} (recognised by {why})"),
                    "spec.pluginConfig".to_string(),
                    spec.get("pluginConfig"),
                ),
                None => found.skipped.push((
                    "spec".to_string(),
                    format!("WasmPlugin {name:?} does not load resetguard"),
                )),
            }
        }
        "EnvoyExtensionPolicy" => {
            let wasms = value.pointer("/spec/wasm").and_then(Value::as_array);
            for (i, wasm) in wasms.into_iter().flatten().enumerate() {
                let ident = [
                    &["name"][..],
                    &["rootID"],
                    &["code", "image", "url"],
                    &["code", "http", "url"],
                ]
                .iter()
                .find_map(|k| {
                    str_at(wasm, k)
                        .filter(|v| names_resetguard(v))
                        .map(|v| format!("{} {v:?}", k.join(".")))
                });
                let at = format!("spec.wasm[{i}]");
                match ident {
                    Some(why) => push(
                        format!("Envoy Gateway EnvoyExtensionPolicy {name:?} wasm[{i}] (recognised by {why})"),
                        format!("{at}.config"),
                        wasm.get("config"),
                    ),
                    None => found.skipped.push((at, "a Wasm extension that does not load resetguard".to_string())),
                }
            }
        }
        _ => {}
    }
}
