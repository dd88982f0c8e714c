//! Whether a file that enables `idempotency` also has "the hold": Envoy's buffer filter after
//! resetguard and before the router, for requests that carry the key header.
//!
//! resetguard lets a keyed request's headers go on while it buffers and fingerprints the body
//! (under proxy-wasm ABI 0.2.1 a pause at the headers stops the body from reaching the filter
//! too), so without a hold the router opens the upstream request as soon as the headers pass,
//! and an answer resetguard gives from the body (a replay, a 422, a mid-body 413, a 409 that lost
//! the claim race) cuts it: the upstream sees the request line and headers, then a closed
//! connection. README, "Keeping locally answered requests off the upstream".
//!
//! What is checked, per resetguard filter whose effective configuration (the plugin's, or a
//! route's override merged onto it) enables `idempotency`:
//! * Envoy bootstrap / xDS files: a buffer filter (`Buffer`, or one inside an
//!   `ExtensionWithMatcher` or a composite) between resetguard and the router of the same
//!   connection manager; one ahead of resetguard instead (the failing order); the hold disabled in
//!   the chain and not enabled per route, or disabled on a keyed route; a matcher on another header
//!   than `idempotency.header`; `max_request_bytes` below `max_request_body_bytes` (+ the
//!   listener's `per_connection_buffer_limit_bytes`).
//! * Istio `WasmPlugin`: an `EnvoyFilter` in the same file that inserts the hold before the
//!   router (or after resetguard). Envoy Gateway `EnvoyExtensionPolicy`: a `BackendTrafficPolicy`
//!   `requestBuffer` with an `EnvoyProxy` `filterOrder` that moves the buffer filter after Wasm, or
//!   an `EnvoyPatchPolicy` that adds one. The control plane's own chain cannot be seen, so a
//!   missing hold is a hint pointing at the example.
//! * A plugin JSON alone: a one-line hint.
//!
//! Everything here is a warning or a hint, never an error: the exit status does not change.

use crate::discover::{self, Found, FoundConfig, Kind};
use crate::document::{child_index, child_key, Document};
use resetguard_core::config::route_override::RouteOverride;
use resetguard_core::config::{Config, IdempotencyMode};
use serde_json::Value;

const BUFFER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer";
const MATCHER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher";
const HEADER_INPUT_TYPE: &str =
    "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput";
const ROUTER_NAME: &str = "envoy.filters.http.router";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const BUFFER_NAME: &str = "envoy.filters.http.buffer";
const WASM_NAME: &str = "envoy.filters.http.wasm";
/// Envoy's default `per_connection_buffer_limit_bytes` (also Istio's, outside its EDGE profile).
const ENVOY_CONNECTION_BUFFER: u64 = 1024 * 1024;
/// Envoy Gateway's default listener buffer limit (`ClientTrafficPolicy` `connection.bufferLimit`).
const GATEWAY_CONNECTION_BUFFER: u64 = 32 * 1024;
const SEE: &str = "README, \"Keeping locally answered requests off the upstream\"";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The hold is there and fits (printed with the policy).
    Info,
    Hint,
    Warning,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Info => "hold",
            Level::Hint => "hint",
            Level::Warning => "warning",
        }
    }
}

/// One finding, placed at a node of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub doc: usize,
    pub path: String,
    pub level: Level,
    pub message: String,
}

/// The findings for a file: its documents and what `discover::find` found in each.
pub fn check(docs: &[Document], found: &[Found]) -> Vec<Note> {
    let mut notes = Notes::default();
    let mut istio = Vec::new();
    let mut gateway = Vec::new();
    for (doc, (document, found)) in docs.iter().zip(found).enumerate() {
        let kind = str_at(&document.value, &["kind"]).unwrap_or("");
        for config in &found.configs {
            let Some(plugin) = Plugin::of(config) else {
                continue; // invalid: already reported as an error
            };
            match discover::kind_of(&document.value) {
                Kind::PluginConfig => plugin_hint(&mut notes, doc, &plugin),
                Kind::Envoy => envoy(&mut notes, doc, document, config, &plugin),
                Kind::Manifest if kind == "WasmPlugin" => istio.push((doc, config, plugin)),
                Kind::Manifest => gateway.push((doc, config, plugin)),
            }
        }
    }
    for (doc, config, plugin) in &istio {
        istio_plugin(&mut notes, docs, *doc, config, plugin);
    }
    for (doc, config, plugin) in &gateway {
        gateway_policy(&mut notes, docs, *doc, config, plugin);
    }
    notes.0
}

#[derive(Default)]
struct Notes(Vec<Note>);

impl Notes {
    fn add(&mut self, doc: usize, path: &str, level: Level, message: String) {
        let note = Note {
            doc,
            path: path.to_string(),
            level,
            message,
        };
        if !self.0.contains(&note) {
            self.0.push(note);
        }
    }
}

/// A plugin configuration that parsed: the config, and its JSON (what route overrides merge onto).
struct Plugin {
    config: Config,
    value: Value,
}

impl Plugin {
    fn of(found: &FoundConfig) -> Option<Plugin> {
        let raw = found.raw.as_ref().ok()?;
        let config = Config::parse(raw).ok()?;
        let value = if raw.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(raw).ok()?
        };
        Some(Plugin { config, value })
    }
}

/// What keyed requests need from the hold, for one effective configuration.
#[derive(Clone)]
struct Keyed {
    /// "the plugin configuration" or `route "name"`.
    whose: String,
    header: String,
    body_limit: u64,
    enforce: bool,
    prefixes: Vec<String>,
}

impl Keyed {
    fn of(config: &Config, whose: String) -> Option<Keyed> {
        let idem = &config.idempotency;
        idem.enabled.then(|| Keyed {
            whose,
            header: idem.header.clone(),
            body_limit: idem.max_request_body_bytes as u64,
            enforce: idem.mode == IdempotencyMode::Enforce,
            prefixes: idem.path_prefixes.clone(),
        })
    }
}

/// Warnings in enforce mode; hints in report mode, where resetguard answers nothing yet.
fn level_for<'a>(keyed: impl IntoIterator<Item = &'a Keyed>) -> (Level, &'static str) {
    if keyed.into_iter().any(|k| k.enforce) {
        (Level::Warning, "")
    } else {
        (
            Level::Hint,
            " (report mode: resetguard answers nothing yet; needed once it enforces)",
        )
    }
}

fn plugin_hint(notes: &mut Notes, doc: usize, plugin: &Plugin) {
    let Some(keyed) = Keyed::of(&plugin.config, String::new()) else {
        return;
    };
    notes.add(
        doc,
        "idempotency",
        Level::Hint,
        format!(
            "idempotency is enabled: in Envoy, add the hold after resetguard, before the router (a \
             buffer filter for requests with an `{}` header, max_request_bytes >= {} + the \
             listener's per_connection_buffer_limit_bytes), or replays and 422s reach the upstream \
             as request headers; see examples/envoy/bootstrap.yaml (resetguard validate checks it \
             in a bootstrap)",
            keyed.header, keyed.body_limit
        ),
    );
}

// ---- reading Envoy's JSON ----------------------------------------------------------------------

fn str_at<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .try_fold(value, |v, k| v.get(k))
        .and_then(Value::as_str)
}

/// `snake_case` -> `camelCase` (Envoy reads proto JSON under either name).
fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A field under its proto name or its JSON (camelCase) name: (the key used, the value).
fn field<'a>(value: &'a Value, snake: &str) -> Option<(String, &'a Value)> {
    let map = value.as_object()?;
    if let Some(v) = map.get(snake) {
        return Some((snake.to_string(), v));
    }
    let camel = camel(snake);
    map.get(&camel).map(|v| (camel, v))
}

fn get<'a>(value: &'a Value, snake: &str) -> Option<&'a Value> {
    field(value, snake).map(|(_, v)| v)
}

/// A proto integer: a JSON number or a numeric string (how proto JSON may write 64-bit ones).
fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn type_of(value: &Value) -> Option<&str> {
    value.get("@type").and_then(Value::as_str)
}

fn is_true(value: Option<&Value>) -> bool {
    value.and_then(Value::as_bool) == Some(true)
}

/// The first object with `@type` `ty` inside `value` (itself included), with its path.
fn find_typed<'a>(value: &'a Value, path: &str, ty: &str) -> Option<(&'a Value, String)> {
    match value {
        Value::Object(map) => {
            if type_of(value) == Some(ty) {
                return Some((value, path.to_string()));
            }
            map.iter()
                .find_map(|(k, v)| find_typed(v, &child_key(path, k), ty))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_typed(v, &child_index(path, i), ty)),
        _ => None,
    }
}

/// Every header a matcher inside `value` reads (`HttpRequestHeaderMatchInput.header_name`).
fn matched_headers(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if type_of(value) == Some(HEADER_INPUT_TYPE) {
                if let Some(name) = get(value, "header_name").and_then(Value::as_str) {
                    out.push(name.to_ascii_lowercase());
                }
            }
            map.values().for_each(|v| matched_headers(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| matched_headers(v, out)),
        _ => {}
    }
}

/// A buffer filter found in a filter chain (or in a control plane's patch of one).
struct Hold {
    name: String,
    path: String,
    /// `max_request_bytes` and where it is.
    limit: Option<(u64, String)>,
    /// The headers its matcher reads; empty for a plain buffer filter (every request).
    headers: Vec<String>,
    disabled: bool,
}

impl Hold {
    /// The filter at `path` when it is a buffer filter, plain or behind a matcher.
    fn of(filter: &Value, path: &str) -> Option<Hold> {
        let (key, typed) = field(filter, "typed_config")?;
        let typed_path = child_key(path, &key);
        let (buffer, buffer_path, headers) = match type_of(typed) {
            Some(BUFFER_TYPE) => (typed, typed_path, Vec::new()),
            Some(MATCHER_TYPE) => {
                let (buffer, at) = find_typed(typed, &typed_path, BUFFER_TYPE)?;
                let mut headers = Vec::new();
                matched_headers(typed, &mut headers);
                (buffer, at, headers)
            }
            _ => return None,
        };
        let limit = field(buffer, "max_request_bytes")
            .and_then(|(k, v)| Some((as_u64(v)?, child_key(&buffer_path, &k))));
        Some(Hold {
            name: str_at(filter, &["name"]).unwrap_or(BUFFER_NAME).to_string(),
            path: path.to_string(),
            limit,
            headers,
            disabled: is_true(get(filter, "disabled")),
        })
    }

    fn describe(&self) -> String {
        format!("`{}`", self.name)
    }
}

/// Compares a hold's limit with what keyed bodies need; returns whether it fits.
fn check_limit(
    notes: &mut Notes,
    doc: usize,
    limit: &(u64, String),
    keyed: &Keyed,
    connection: (u64, &str),
) -> bool {
    let (have, at) = limit;
    let (conn, conn_name) = connection;
    let body = keyed.body_limit;
    let need = body.saturating_add(conn);
    let whose = &keyed.whose;
    if *have < body {
        notes.add(
            doc,
            at,
            Level::Warning,
            format!(
                "the hold's max_request_bytes {have} is below idempotency.max_request_body_bytes \
                 {body} ({whose}): keyed bodies of {} to {body} bytes, which resetguard accepts, \
                 get Envoy's plain-text 413; set it to at least {body} + {conn} ({conn_name}) = \
                 {need}",
                have + 1
            ),
        );
        false
    } else if *have < need {
        notes.add(
            doc,
            at,
            Level::Warning,
            format!(
                "the hold's max_request_bytes {have} is below idempotency.max_request_body_bytes \
                 {body} ({whose}) + {conn} ({conn_name}) = {need}: a keyed body over {body} bytes \
                 sent in chunks can get Envoy's plain-text 413 instead of resetguard's \
                 problem+json one; set it to at least {need}"
            ),
        );
        false
    } else {
        true
    }
}

/// A hold that matches on another header than the key's: keyed requests skip it.
fn check_header(notes: &mut Notes, doc: usize, hold: &Hold, keyed: &Keyed) -> bool {
    if hold.headers.is_empty() || hold.headers.contains(&keyed.header) {
        return true;
    }
    notes.add(
        doc,
        &hold.path,
        Level::Warning,
        format!(
            "the hold {} matches on the header {}, but idempotency.header is `{}` ({}): keyed \
             requests are not held; use header_name: {}",
            hold.describe(),
            hold.headers
                .iter()
                .map(|h| format!("`{h}`"))
                .collect::<Vec<_>>()
                .join(", "),
            keyed.header,
            keyed.whose,
            keyed.header
        ),
    );
    false
}

// ---- Envoy bootstrap / xDS ---------------------------------------------------------------------

/// A connection manager: its path, filters, the listener's connection buffer limit, its routes.
struct Chain<'a> {
    path: String,
    filters: &'a [Value],
    connection: u64,
    routes: Vec<(String, &'a Value)>,
    inline_routes: bool,
}

/// Every connection manager (an object with `http_filters`) in `value`.
fn chains<'a>(value: &'a Value, path: &str, connection: u64, out: &mut Vec<Chain<'a>>) {
    match value {
        Value::Object(map) => {
            let is_listener = ["filter_chains", "default_filter_chain"]
                .iter()
                .any(|k| get(value, k).is_some());
            let connection = if is_listener {
                get(value, "per_connection_buffer_limit_bytes")
                    .and_then(as_u64)
                    .unwrap_or(ENVOY_CONNECTION_BUFFER)
            } else {
                connection
            };
            if let Some(filters) = map.get("http_filters").and_then(Value::as_array) {
                let mut routes = Vec::new();
                let route_config = field(value, "route_config");
                if let Some((key, rc)) = &route_config {
                    collect_routes(rc, &child_key(path, key), &mut routes);
                }
                out.push(Chain {
                    path: path.to_string(),
                    filters,
                    connection,
                    routes,
                    inline_routes: route_config.is_some(),
                });
            }
            for (k, v) in map {
                chains(v, &child_key(path, k), connection, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                chains(v, &child_index(path, i), connection, out);
            }
        }
        _ => {}
    }
}

/// Routes that forward to an upstream (`match` + `route`).
fn collect_routes<'a>(value: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("match") && map.contains_key("route") {
                out.push((path.to_string(), value));
                return;
            }
            for (k, v) in map {
                collect_routes(v, &child_key(path, k), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_routes(v, &child_index(path, i), out);
            }
        }
        _ => {}
    }
}

fn is_router(filter: &Value) -> bool {
    str_at(filter, &["name"]) == Some(ROUTER_NAME)
        || get(filter, "typed_config").and_then(type_of) == Some(ROUTER_TYPE)
}

/// Whether requests under `prefixes` (all when empty) can take this route.
fn may_carry_keys(route: &Value, prefixes: &[String]) -> bool {
    if prefixes.is_empty() {
        return true;
    }
    let m = route.get("match").unwrap_or(&Value::Null);
    let overlaps = |p: &str| {
        prefixes
            .iter()
            .any(|q| p.starts_with(q.as_str()) || q.starts_with(p))
    };
    if let Some(p) = get(m, "prefix").and_then(Value::as_str) {
        overlaps(p)
    } else if let Some(p) = get(m, "path_separated_prefix").and_then(Value::as_str) {
        overlaps(p)
    } else if let Some(p) = get(m, "path").and_then(Value::as_str) {
        prefixes.iter().any(|q| p.starts_with(q.as_str()))
    } else {
        true // a regex or a matcher: cannot tell
    }
}

/// A route's `typed_per_filter_config` entry for the filter `name`.
fn per_filter<'a>(route: &'a Value, name: &str) -> Option<&'a Value> {
    get(route, "typed_per_filter_config").and_then(|m| m.get(name))
}

/// How a route sets the hold: not at all, off, or on (with its own limit, if it has one).
enum RouteHold {
    Inherit,
    Off,
    On(Option<(u64, String)>),
}

fn route_hold(route: &Value, route_path: &str, hold: &str) -> RouteHold {
    let Some(config) = per_filter(route, hold) else {
        return RouteHold::Inherit;
    };
    if is_true(config.get("disabled")) {
        return RouteHold::Off;
    }
    let at = child_key(&child_key(route_path, "typed_per_filter_config"), hold);
    RouteHold::On(find_limit(config, &at))
}

/// The first `max_request_bytes` inside `value`.
fn find_limit(value: &Value, path: &str) -> Option<(u64, String)> {
    match value {
        Value::Object(map) => {
            if let Some((k, v)) = field(value, "max_request_bytes") {
                return as_u64(v).map(|n| (n, child_key(path, &k)));
            }
            map.iter()
                .find_map(|(k, v)| find_limit(v, &child_key(path, k)))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_limit(v, &child_index(path, i))),
        _ => None,
    }
}

fn route_label(route: &Value) -> String {
    match str_at(route, &["name"]) {
        Some(name) => format!("route {name:?}"),
        None => "an unnamed route".to_string(),
    }
}

/// The keyed configurations a resetguard filter applies in a chain, with the route they apply
/// on (none when the routes are not in the file).
fn keyed_routes<'a>(
    chain: &Chain<'a>,
    filter_name: Option<&str>,
    plugin: &Plugin,
) -> Vec<(Option<(String, &'a Value)>, Keyed)> {
    if !chain.inline_routes {
        return Keyed::of(&plugin.config, "the plugin configuration".to_string())
            .map(|k| (None, k))
            .into_iter()
            .collect();
    }
    let mut out = Vec::new();
    for (path, route) in &chain.routes {
        let off_in_envoy = filter_name
            .and_then(|n| per_filter(route, n))
            .is_some_and(|c| is_true(c.get("disabled")));
        if off_in_envoy {
            continue;
        }
        let meta = route
            .get("metadata")
            .and_then(|m| get(m, "filter_metadata"))
            .and_then(|m| m.get(discover::METADATA_NAMESPACE));
        let (config, whose) = match meta {
            None => (
                plugin.config.clone(),
                "the plugin configuration".to_string(),
            ),
            Some(v) => match RouteOverride::from_value(v).and_then(|o| o.apply(&plugin.value)) {
                Ok(Some(config)) => (config, format!("{}'s override", route_label(route))),
                _ => continue, // turned off here, or invalid (reported as an error)
            },
        };
        if let Some(keyed) = Keyed::of(&config, whose) {
            if may_carry_keys(route, &keyed.prefixes) {
                out.push((Some((path.clone(), *route)), keyed));
            }
        }
    }
    out
}

/// One resetguard filter in one chain, and what its keyed configurations need.
struct Site<'a, 'c> {
    doc: usize,
    chain: &'c Chain<'a>,
    filters_path: String,
    /// resetguard's and the router's index in `http_filters`.
    rg: usize,
    router: usize,
    keyed: Vec<(Option<(String, &'a Value)>, Keyed)>,
    level: Level,
    mode_note: &'static str,
}

impl Site<'_, '_> {
    fn filter_path(&self, i: usize) -> String {
        child_index(&self.filters_path, i)
    }

    /// The largest keyed body, and what a hold must take for it (one read more).
    fn need(&self) -> (u64, u64) {
        let body = self
            .keyed
            .iter()
            .map(|(_, k)| k.body_limit)
            .max()
            .unwrap_or(0);
        (body, body.saturating_add(self.chain.connection))
    }
}

fn envoy(notes: &mut Notes, doc: usize, document: &Document, found: &FoundConfig, plugin: &Plugin) {
    if Keyed::of(&plugin.config, String::new()).is_none() {
        return; // a route cannot turn idempotency on when the plugin leaves it off
    }
    let mut all = Vec::new();
    chains(&document.value, "$", ENVOY_CONNECTION_BUFFER, &mut all);
    let Some(chain) = found
        .hcm_path
        .as_ref()
        .and_then(|p| all.iter().find(|c| &c.path == p))
    else {
        notes.add(
            doc,
            &found.path,
            Level::Hint,
            format!(
                "idempotency is enabled and this file does not hold the filter chain: put the \
                 hold (a buffer filter for keyed requests) after resetguard and before the router \
                 where this filter is used; see examples/envoy/bootstrap.yaml, {SEE}"
            ),
        );
        return;
    };
    let filters_path = child_key(&chain.path, "http_filters");
    let Some(rg) = found
        .path
        .strip_prefix(&format!("{filters_path}["))
        .and_then(|rest| rest.split(']').next())
        .and_then(|i| i.parse::<usize>().ok())
    else {
        return;
    };
    let keyed = keyed_routes(chain, found.filter_name.as_deref(), plugin);
    if keyed.is_empty() {
        return;
    }
    let (level, mode_note) = level_for(keyed.iter().map(|(_, k)| k));
    let site = Site {
        doc,
        chain,
        rg,
        router: chain
            .filters
            .iter()
            .position(is_router)
            .unwrap_or(chain.filters.len()),
        filters_path,
        keyed,
        level,
        mode_note,
    };
    let holds: Vec<(usize, Hold)> = chain
        .filters
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != rg)
        .filter_map(|(i, f)| Hold::of(f, &site.filter_path(i)).map(|h| (i, h)))
        .collect();
    for (i, ahead) in holds.iter().filter(|(i, _)| *i < rg) {
        notes.add(
            doc,
            &ahead.path,
            level,
            format!(
                "the buffer filter {} (http_filters[{i}]) is ahead of resetguard \
                 (http_filters[{rg}]), which does not help: resetguard still passes a keyed \
                 request's headers on before it reads the body, so the router still opens the \
                 upstream request; and the answers resetguard gives at the headers (400, 409, a \
                 declared-size 413, store 503) wait in it for the whole body, so a client that \
                 declares an oversized body and waits for the answer hangs; move it after \
                 resetguard, before the router{mode_note}",
                ahead.describe()
            ),
        );
    }
    match holds.iter().find(|(i, _)| *i > rg && *i < site.router) {
        Some((at, hold)) => held(notes, &site, *at, hold),
        None => not_held(notes, &site),
    }
}

fn not_held(notes: &mut Notes, site: &Site<'_, '_>) {
    let (rg, router) = (site.rg, site.router);
    let router_text = if router < site.chain.filters.len() {
        format!("the router (http_filters[{router}])")
    } else {
        "the router".to_string()
    };
    let header = site
        .keyed
        .first()
        .map(|(_, k)| k.header.as_str())
        .unwrap_or_default();
    let (body, need) = site.need();
    notes.add(
        site.doc,
        &site.filter_path(rg),
        site.level,
        format!(
            "idempotency is enabled, but no buffer filter holds keyed requests between resetguard \
             (http_filters[{rg}]) and {router_text}: a replay, 422 or mid-body 413 that resetguard \
             answers from the request body reaches the upstream as request line and headers, \
             then a cut connection (measured on Envoy 1.40: 53-71 % of re-sends of completed \
             keys); add envoy.filters.http.buffer there for requests with an `{header}` header, \
             max_request_bytes >= {body} + {} = {need} (examples/envoy/bootstrap.yaml, {SEE}){}",
            site.chain.connection, site.mode_note
        ),
    );
    let stop_iteration = site
        .chain
        .filters
        .get(rg)
        .and_then(|f| get(f, "typed_config"))
        .and_then(|t| get(t, "config"))
        .and_then(|c| get(c, "allow_on_headers_stop_iteration"));
    if is_true(stop_iteration) {
        notes.add(
            site.doc,
            &site.filter_path(rg),
            Level::Hint,
            "allow_on_headers_stop_iteration: true alone does not hold keyed requests: this \
             resetguard never pauses at a keyed request's headers, so the hold is still needed"
                .to_string(),
        );
    }
}

/// The hold at `http_filters[at]`, checked for every keyed configuration and the route it runs
/// on: the header it matches, whether it is on there, and its limit.
fn held(notes: &mut Notes, site: &Site<'_, '_>, at: usize, hold: &Hold) {
    let (doc, level, mode_note) = (site.doc, site.level, site.mode_note);
    let connection = (site.chain.connection, "per_connection_buffer_limit_bytes");
    let mut fits = true;
    for (route, keyed) in &site.keyed {
        fits &= check_header(notes, doc, hold, keyed);
        let Some((path, route)) = route else {
            if hold.disabled {
                notes.add(
                    doc,
                    &hold.path,
                    Level::Hint,
                    format!(
                        "the hold {} is disabled in the chain: enable it (BufferPerRoute) on every \
                         route resetguard enforces keys on; the routes are not in this file",
                        hold.describe()
                    ),
                );
            } else if let Some(limit) = &hold.limit {
                fits &= check_limit(notes, doc, limit, keyed, connection);
            }
            continue;
        };
        let label = route_label(route);
        let limit = match route_hold(route, path, &hold.name) {
            RouteHold::Off => {
                fits = false;
                notes.add(
                    doc,
                    path,
                    level,
                    format!(
                        "{label} turns the hold {} off (typed_per_filter_config), but resetguard \
                         enforces idempotency keys there: answered keyed requests reach the \
                         upstream as headers{mode_note}",
                        hold.describe()
                    ),
                );
                continue;
            }
            RouteHold::Inherit if hold.disabled => {
                fits = false;
                notes.add(
                    doc,
                    path,
                    level,
                    format!(
                        "the hold {} (http_filters[{at}]) is disabled in the chain and {label} \
                         does not enable it (typed_per_filter_config {}: BufferPerRoute), but \
                         resetguard enforces idempotency keys there{mode_note}",
                        hold.describe(),
                        hold.name
                    ),
                );
                continue;
            }
            RouteHold::On(Some(limit)) => Some(limit),
            RouteHold::On(None) | RouteHold::Inherit => hold.limit.clone(),
        };
        if let Some(limit) = &limit {
            fits &= check_limit(notes, doc, limit, keyed, connection);
        }
    }
    if fits {
        let (body, _) = site.need();
        let limit = hold
            .limit
            .as_ref()
            .filter(|_| !hold.disabled)
            .map(|(n, _)| {
                format!(
                    ": max_request_bytes {n} >= {body} + {}",
                    site.chain.connection
                )
            })
            .unwrap_or_default();
        notes.add(
            doc,
            &hold.path,
            Level::Info,
            format!(
                "keyed requests are held by {} (http_filters[{at}]) between resetguard \
                 (http_filters[{}]) and the router{limit}",
                hold.describe(),
                site.rg
            ),
        );
    }
}

// ---- Kubernetes manifests ----------------------------------------------------------------------

/// `2Mi`, `2097152`, `2M`: a Kubernetes quantity in bytes (integers only, as the APIs here take).
fn quantity(value: &Value) -> Option<u64> {
    if let Some(n) = as_u64(value) {
        return Some(n);
    }
    let s = value.as_str()?.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, suffix) = s.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

fn kind(document: &Document) -> &str {
    str_at(&document.value, &["kind"]).unwrap_or("")
}

fn idempotency_path(found: &FoundConfig) -> String {
    child_key(&found.path, "idempotency")
}

/// Where an Istio `EnvoyFilter` patch puts an HTTP filter, relative to resetguard.
enum Position {
    AfterResetguard,
    Ahead,
    Unknown,
}

/// WasmPlugins are in the chain before EnvoyFilter patches apply, so "before the router" is after
/// them; a `subFilter` naming resetguard is the WasmPlugin's own filter.
fn istio_position(operation: &str, sub_filter: &str) -> Position {
    let resetguard = sub_filter.to_ascii_lowercase().contains("resetguard");
    match operation {
        "INSERT_BEFORE" if sub_filter == ROUTER_NAME => Position::AfterResetguard,
        "INSERT_AFTER" if resetguard => Position::AfterResetguard,
        "INSERT_FIRST" => Position::Ahead,
        "INSERT_BEFORE" if resetguard => Position::Ahead,
        _ => Position::Unknown,
    }
}

/// An Istio `WasmPlugin` that enables idempotency: an `EnvoyFilter` in the same file must insert
/// the hold after it.
fn istio_plugin(
    notes: &mut Notes,
    docs: &[Document],
    doc: usize,
    found: &FoundConfig,
    plugin: &Plugin,
) {
    let Some(keyed) = Keyed::of(&plugin.config, "the WasmPlugin's pluginConfig".to_string()) else {
        return;
    };
    let (level, mode_note) = level_for([&keyed]);
    let need = keyed.body_limit.saturating_add(ENVOY_CONNECTION_BUFFER);
    let ports: Vec<u64> = docs[doc]
        .value
        .pointer("/spec/match")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("ports").and_then(Value::as_array))
        .flatten()
        .filter_map(|p| p.get("number").and_then(as_u64))
        .collect();
    let mut placed = false;
    for (d, document) in docs.iter().enumerate() {
        if kind(document) != "EnvoyFilter" {
            continue;
        }
        let patches = document.value.pointer("/spec/configPatches");
        for (i, patch) in patches
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = format!("spec.configPatches[{i}]");
            let value_path = format!("{path}.patch.value");
            let Some(hold) = patch
                .pointer("/patch/value")
                .and_then(|v| Hold::of(v, &value_path))
            else {
                continue;
            };
            let operation = str_at(patch, &["patch", "operation"]).unwrap_or("");
            let sub = patch
                .pointer("/match/listener/filterChain/filter/subFilter/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            placed = true;
            match istio_position(operation, sub) {
                Position::AfterResetguard => {}
                Position::Ahead => {
                    notes.add(
                        d,
                        &path,
                        level,
                        format!(
                            "this EnvoyFilter puts the buffer filter {} ahead of resetguard \
                             ({operation}), which does not keep answered keyed requests off the \
                             upstream and can hang requests resetguard refuses at the headers: \
                             insert it before {ROUTER_NAME} \
                             (examples/istio/wasmplugin.yaml){mode_note}",
                            hold.describe()
                        ),
                    );
                    continue;
                }
                Position::Unknown => {
                    notes.add(
                        d,
                        &path,
                        Level::Hint,
                        format!(
                            "this EnvoyFilter adds the buffer filter {} with {operation:?} \
                             relative to {sub:?}: make sure it lands after resetguard and before \
                             {ROUTER_NAME} (INSERT_BEFORE the router does)",
                            hold.describe()
                        ),
                    );
                }
            }
            let port = patch.pointer("/match/listener/portNumber").and_then(as_u64);
            if let Some(port) = port.filter(|p| !ports.is_empty() && !ports.contains(p)) {
                notes.add(
                    d,
                    &format!("{path}.match.listener.portNumber"),
                    level,
                    format!(
                        "the hold is inserted on port {port}, but the WasmPlugin runs on port(s) \
                         {ports:?}: keyed requests there are not held{mode_note}"
                    ),
                );
            }
            let mut fits = check_header(notes, d, &hold, &keyed);
            if let Some(limit) = &hold.limit {
                fits &= check_limit(
                    notes,
                    d,
                    limit,
                    &keyed,
                    (
                        ENVOY_CONNECTION_BUFFER,
                        "the gateway listener's per_connection_buffer_limit_bytes, Envoy's default",
                    ),
                );
            }
            if fits {
                notes.add(
                    d,
                    &path,
                    Level::Info,
                    format!(
                        "keyed requests are held by {} ({operation} {sub}), for the WasmPlugin \
                         in document {}",
                        hold.describe(),
                        doc + 1
                    ),
                );
            }
        }
    }
    if !placed {
        notes.add(
            doc,
            &idempotency_path(found),
            Level::Hint,
            format!(
                "idempotency is enabled: the gateway also needs the hold, an EnvoyFilter that \
                 inserts envoy.filters.http.buffer for requests with an `{}` header before the \
                 router (max_request_bytes >= {need}), or replays and 422s reach the upstream as \
                 request headers; see examples/istio/wasmplugin.yaml (apply it with the \
                 WasmPlugin, in one file, and resetguard validate checks it){mode_note}",
                keyed.header
            ),
        );
    }
}

/// An Envoy Gateway `EnvoyExtensionPolicy` that enables idempotency: a `requestBuffer` moved
/// after Wasm by an `EnvoyProxy` `filterOrder`, or an `EnvoyPatchPolicy` adding a buffer filter.
fn gateway_policy(
    notes: &mut Notes,
    docs: &[Document],
    doc: usize,
    found: &FoundConfig,
    plugin: &Plugin,
) {
    let Some(keyed) = Keyed::of(
        &plugin.config,
        "the EnvoyExtensionPolicy's config".to_string(),
    ) else {
        return;
    };
    let (level, mode_note) = level_for([&keyed]);
    // The listener's buffer limit: a ClientTrafficPolicy's, or Envoy Gateway's default.
    let connection = docs
        .iter()
        .filter(|d| kind(d) == "ClientTrafficPolicy")
        .find_map(|d| {
            d.value
                .pointer("/spec/connection/bufferLimit")
                .and_then(quantity)
        });
    let (conn, conn_name) = match connection {
        Some(n) => (n, "the ClientTrafficPolicy's connection.bufferLimit"),
        None => (
            GATEWAY_CONNECTION_BUFFER,
            "Envoy Gateway's default connection buffer limit",
        ),
    };
    let need = keyed.body_limit.saturating_add(conn);
    // The EnvoyProxy filter order for the buffer filter: after Wasm (or before the router) or not.
    let mut order: Option<(usize, String, bool)> = None;
    for (d, document) in docs.iter().enumerate() {
        if kind(document) != "EnvoyProxy" {
            continue;
        }
        let entries = document.value.pointer("/spec/filterOrder");
        for (i, entry) in entries
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if str_at(entry, &["name"]) != Some(BUFFER_NAME) {
                continue;
            }
            let good = str_at(entry, &["after"]) == Some(WASM_NAME)
                || str_at(entry, &["before"]) == Some(ROUTER_NAME);
            order = Some((d, format!("spec.filterOrder[{i}]"), good));
        }
    }
    let mut placed = false;
    for (d, document) in docs.iter().enumerate() {
        match kind(document) {
            "BackendTrafficPolicy" => {
                let Some(limit) = document.value.pointer("/spec/requestBuffer/limit") else {
                    continue;
                };
                placed = true;
                let at = "spec.requestBuffer";
                match &order {
                    Some((_, _, true)) => {}
                    Some((od, opath, false)) => notes.add(
                        *od,
                        opath,
                        level,
                        format!(
                            "this filterOrder does not put {BUFFER_NAME} after \
                             {WASM_NAME}: the requestBuffer hold must run after resetguard; use \
                             `- name: {BUFFER_NAME}` with `after: {WASM_NAME}` \
                             (examples/envoy-gateway/envoyextensionpolicy.yaml){mode_note}"
                        ),
                    ),
                    None => notes.add(
                        d,
                        at,
                        level,
                        format!(
                            "Envoy Gateway orders its buffer filter ahead of Wasm by default, \
                             which does not keep answered keyed requests off the upstream and can \
                             hang requests resetguard refuses at the headers: add an EnvoyProxy \
                             with filterOrder `- name: {BUFFER_NAME}`, `after: {WASM_NAME}` \
                             (Envoy Gateway >= 1.6; examples/envoy-gateway/envoyextensionpolicy.yaml){mode_note}"
                        ),
                    ),
                }
                let targets_gateway = document
                    .value
                    .pointer("/spec/targetRefs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .chain(document.value.pointer("/spec/targetRef"))
                    .any(|t| str_at(t, &["kind"]) == Some("Gateway"));
                if targets_gateway {
                    notes.add(
                        d,
                        at,
                        Level::Hint,
                        "a requestBuffer on a Gateway buffers every request body on every route \
                         (uploads lose streaming, bodies over the limit get 413): target the \
                         HTTPRoutes that serve idempotency.path_prefixes"
                            .to_string(),
                    );
                }
                let fits = match quantity(limit) {
                    Some(n) => check_limit(
                        notes,
                        d,
                        &(n, format!("{at}.limit")),
                        &keyed,
                        (conn, conn_name),
                    ),
                    None => true,
                };
                if fits && matches!(order, Some((_, _, true))) {
                    notes.add(
                        d,
                        at,
                        Level::Info,
                        format!(
                            "keyed requests are held by this requestBuffer ({} bytes >= {} + \
                             {conn}), ordered after Wasm by the EnvoyProxy's filterOrder",
                            quantity(limit).unwrap_or(0),
                            keyed.body_limit
                        ),
                    );
                }
            }
            "EnvoyPatchPolicy" => {
                let Some(patches) = document.value.pointer("/spec/jsonPatches") else {
                    continue;
                };
                let Some((_, buffer_path)) = find_typed(patches, "spec.jsonPatches", BUFFER_TYPE)
                else {
                    continue;
                };
                placed = true;
                notes.add(
                    d,
                    &buffer_path,
                    Level::Hint,
                    "this EnvoyPatchPolicy adds a buffer filter: make sure its index puts it \
                     after the Wasm filter and before the router of that listener (egctl config \
                     envoy-proxy listener), and again when other policies add filters"
                        .to_string(),
                );
                if let Some(limit) = find_limit(patches, "spec.jsonPatches") {
                    check_limit(notes, d, &limit, &keyed, (conn, conn_name));
                }
            }
            _ => {}
        }
    }
    if !placed {
        notes.add(
            doc,
            &idempotency_path(found),
            Level::Hint,
            format!(
                "idempotency is enabled: the gateway also needs the hold, a BackendTrafficPolicy \
                 requestBuffer (limit >= {need}) on the keyed routes plus an EnvoyProxy filterOrder \
                 that moves {BUFFER_NAME} after {WASM_NAME} (Envoy Gateway puts it ahead of \
                 Wasm by default, which does not help), or replays and 422s reach the upstream \
                 as request headers; see examples/envoy-gateway/envoyextensionpolicy.yaml{mode_note}"
            ),
        );
    }
}
