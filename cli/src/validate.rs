//! `resetguard validate FILE`: every resetguard configuration in a file, checked by the filter's
//! own parser. Prints the effective policy per method (and per route with an override), or every
//! error with its place: file, line, document path, and the field path in the plugin JSON.

use crate::discover::{self, FoundConfig, FoundRoute};
use crate::document::{child_key, Document};
use crate::effective::policy_lines;
use resetguard_core::config::route_override::RouteOverride;
use resetguard_core::config::{Config, ConfigError};
use serde_json::Value;
use std::fmt::Write as _;

/// Exit statuses.
pub const OK: i32 = 0;
pub const INVALID: i32 = 1;
pub const UNUSABLE: i32 = 2;

pub struct Report {
    pub status: i32,
    /// What goes to stdout (the policy when ok).
    pub out: String,
    /// What goes to stderr (errors, warnings, hints).
    pub err: String,
    /// The same errors, warnings and hints as data (the playground shows these).
    pub findings: Vec<Finding>,
    /// Every plugin configuration found, and what the filter makes of it.
    pub configs: Vec<ConfigReport>,
    /// Every route with resetguard settings (an override, or the filter turned off).
    pub routes: Vec<RouteReport>,
    /// Wasm filters and manifests that do not load resetguard: document, path, what.
    pub skipped: Vec<(usize, String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Hint,
}

/// One error, warning or hint with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// 1-based index of the YAML document in the file; 0 for the file as a whole.
    pub document: usize,
    pub line: Option<usize>,
    /// Document path (`spec.pluginConfig.retry.true`; `$` is the root).
    pub path: String,
    pub message: String,
}

/// A plugin configuration found in the file.
#[derive(Debug, Clone)]
pub struct ConfigReport {
    pub document: usize,
    pub label: String,
    pub path: String,
    pub line: Option<usize>,
    /// What the filter's parser made of it; `None` when invalid (see the findings).
    pub config: Option<Config>,
}

/// A route with resetguard settings.
#[derive(Debug, Clone)]
pub struct RouteReport {
    pub document: usize,
    pub name: Option<String>,
    pub path: String,
    pub line: Option<usize>,
    pub override_value: Option<Value>,
    /// Envoy's per-route FilterConfig turns the resetguard filter off here.
    pub turned_off: bool,
    /// Per plugin configuration the override applies to (index into `configs`), what results;
    /// an invalid override or plugin configuration gives no entry (see the findings).
    pub effective: Vec<(usize, RouteEffect)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteEffect {
    /// `disabled: true`: the request passes untouched.
    Disabled,
    /// The merged configuration equals the plugin configuration.
    Same,
    Config(Box<Config>),
}

/// A plugin config that parsed: its JSON value (what route overrides merge onto) and the result.
struct Checked {
    value: Value,
    config: Config,
}

struct Ctx<'a> {
    file: &'a str,
    doc: &'a Document,
    /// 1-based.
    document: usize,
    errors: usize,
    out: String,
    err: String,
    findings: Vec<Finding>,
}

impl Ctx<'_> {
    fn place(&self, path: &str) -> String {
        match self.doc.line_of(path) {
            Some(line) => format!("{}:{line}: {path}", self.file),
            None => format!("{}: {path}", self.file),
        }
    }

    fn error(&mut self, path: &str, message: &str) {
        self.errors += 1;
        let place = self.place(path);
        let _ = writeln!(self.err, "error: {place}: {message}");
        self.finding(Severity::Error, path, message);
    }

    fn warn(&mut self, path: &str, message: &str) {
        let place = self.place(path);
        let _ = writeln!(self.err, "warning: {place}: {message}");
        self.finding(Severity::Warning, path, message);
    }

    fn finding(&mut self, severity: Severity, path: &str, message: &str) {
        self.findings.push(Finding {
            severity,
            document: self.document,
            line: self.doc.line_of(path),
            path: path.to_string(),
            message: message.to_string(),
        });
    }
}

pub fn validate_file(file: &str) -> Report {
    let text = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => return unusable(file, format!("cannot read: {e}")),
    };
    validate_bytes(file, &text)
}

/// Checks the contents of a file named `file` (the name is only used in messages).
pub fn validate_bytes(file: &str, bytes: &[u8]) -> Report {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return unusable(file, "not UTF-8 text".to_string());
    };
    validate_text(file, bytes, text)
}

fn unusable(file: &str, message: String) -> Report {
    let mut report = Report::new(UNUSABLE);
    let _ = writeln!(report.err, "error: {file}: {message}");
    report.findings.push(Finding {
        severity: Severity::Error,
        document: 0,
        line: None,
        path: "$".to_string(),
        message,
    });
    report
}

impl Report {
    fn new(status: i32) -> Report {
        Report {
            status,
            out: String::new(),
            err: String::new(),
            findings: Vec::new(),
            configs: Vec::new(),
            routes: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

pub fn validate_text(file: &str, bytes: &[u8], text: &str) -> Report {
    let docs = match discover::load(text) {
        Ok(docs) => docs,
        Err(e) => return unusable(file, format!("cannot parse: {e}")),
    };
    let mut report = Report::new(OK);
    let mut configs_found = 0;
    let mut errors = 0;
    let many = docs.len() > 1;
    let mut founds = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let found = discover::find(doc, bytes);
        configs_found += found.configs.len();
        let mut ctx = Ctx {
            file,
            doc,
            document: index + 1,
            errors: 0,
            out: String::new(),
            err: String::new(),
            findings: Vec::new(),
        };
        if many {
            let _ = writeln!(ctx.out, "document {}:", index + 1);
        }
        for (path, problem) in &doc.problems {
            ctx.error(path, problem);
        }
        for (path, what) in &found.skipped {
            let _ = writeln!(ctx.out, "skipped {what} at {}", ctx.place(path));
            report.skipped.push((index + 1, path.clone(), what.clone()));
        }
        for path in &found.ignored_metadata {
            ctx.warn(
                path,
                "resetguard reads route metadata only (xds.route_metadata); metadata here is ignored",
            );
        }
        if found.configs.is_empty() && found.routes.is_empty() && found.skipped.is_empty() {
            let kind = doc
                .value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("this document");
            let _ = writeln!(ctx.out, "  nothing for resetguard in {kind}");
        }
        let mut checked: Vec<Option<Checked>> = Vec::new();
        let first = report.configs.len();
        for config in &found.configs {
            let result = check_config(&mut ctx, config);
            report.configs.push(ConfigReport {
                document: index + 1,
                label: config.label.clone(),
                path: config.path.clone(),
                line: doc.line_of(&config.path),
                config: result.as_ref().map(|c| c.config.clone()),
            });
            checked.push(result);
        }
        for route in &found.routes {
            let mut routed = check_route(&mut ctx, route, &found.configs, &checked);
            for (i, _) in &mut routed.effective {
                *i += first;
            }
            report.routes.push(routed);
        }
        errors += ctx.errors;
        report.out.push_str(&ctx.out);
        report.err.push_str(&ctx.err);
        report.findings.append(&mut ctx.findings);
        founds.push(found);
    }
    for note in crate::hold::check(&docs, &founds) {
        hold_note(&mut report, file, &docs, note);
    }
    if configs_found == 0 {
        let mut none = unusable(
            file,
            "no resetguard configuration found (looked for a plugin JSON, an \
             envoy.filters.http.wasm filter whose root_id, name or code file names resetguard, \
             an Istio WasmPlugin or an Envoy Gateway EnvoyExtensionPolicy)"
                .to_string(),
        );
        report.status = UNUSABLE;
        report.err.push_str(&none.err);
        report.findings.append(&mut none.findings);
    } else if errors > 0 {
        report.status = INVALID;
        let _ = writeln!(report.err, "{file}: {errors} error(s)");
    } else {
        report.out = format!("ok: {file}\n{}", report.out);
    }
    report
}

/// A finding of the hold check (cli/src/hold.rs): a warning or hint, never an error; a hold
/// that fits is printed with the policy.
fn hold_note(report: &mut Report, file: &str, docs: &[Document], note: crate::hold::Note) {
    use crate::hold::Level;
    let Some(doc) = docs.get(note.doc) else {
        return;
    };
    let line = doc.line_of(&note.path);
    let place = match line {
        Some(line) => format!("{file}:{line}: {}", note.path),
        None => format!("{file}: {}", note.path),
    };
    let text = format!("{}: {place}: {}\n", note.level.label(), note.message);
    let severity = match note.level {
        Level::Info => return report.out.push_str(&text),
        Level::Warning => Severity::Warning,
        Level::Hint => Severity::Hint,
    };
    report.err.push_str(&text);
    report.findings.push(Finding {
        severity,
        document: note.doc + 1,
        line,
        path: note.path,
        message: note.message,
    });
}

fn indent(lines: &[String], by: &str) -> String {
    lines.iter().map(|l| format!("{by}{l}\n")).collect()
}

/// A config field path (`retry.on[1]`) inside the document node at `base`.
fn join(base: &str, field: &str) -> String {
    if field == "$" {
        base.to_string()
    } else if base == "$" {
        field.to_string()
    } else if field.starts_with('[') {
        format!("{base}{field}")
    } else {
        format!("{base}.{field}")
    }
}

fn config_error(ctx: &mut Ctx<'_>, found: &FoundConfig, e: &ConfigError) {
    match &found.inline_path {
        // The config is part of the document: point at the field itself.
        Some(base) => {
            let at = join(base, &e.path);
            ctx.error(
                &at,
                &format!("invalid plugin configuration: {}", e.expected),
            );
        }
        // The config is a JSON string inside the document: point at the string, name the field.
        None => {
            let at = child_key(&found.path, "value");
            ctx.error(
                &at,
                &format!(
                    "invalid plugin configuration at `{}`: {}",
                    e.path, e.expected
                ),
            );
        }
    }
}

/// Kubernetes' YAML 1.1 turned a bare `on`/`off`/`yes`/`no` into a boolean: say so.
fn yaml11_hints(ctx: &mut Ctx<'_>, base: &str) {
    let hits: Vec<(String, String)> = ctx
        .doc
        .yaml11_booleans
        .iter()
        .filter(|(p, _)| base == "$" || p.starts_with(base))
        .cloned()
        .collect();
    for (path, word) in hits {
        let place = ctx.place(&path);
        let message = format!(
            "a bare `{word}` is a boolean in YAML 1.1, which Kubernetes uses; quote it: \"{word}\""
        );
        let _ = writeln!(ctx.err, "hint: {place}: {message}");
        ctx.finding(Severity::Hint, &path, &message);
    }
}

fn check_config(ctx: &mut Ctx<'_>, found: &FoundConfig) -> Option<Checked> {
    let header = format!("{} at {}", found.label, ctx.place(&found.path));
    let raw = match &found.raw {
        Ok(raw) => raw,
        Err(why) => {
            ctx.error(&found.path, why);
            return None;
        }
    };
    match parse_all_errors(raw) {
        Ok(config) => {
            let _ = writeln!(ctx.out, "{header}\n  effective policy:");
            ctx.out.push_str(&indent(&policy_lines(&config), "    "));
            for warning in config.warnings() {
                ctx.warn(&found.path, &warning);
            }
            etcd_cluster_known(ctx, found, &config);
            let value = if raw.iter().all(u8::is_ascii_whitespace) {
                Value::Object(Default::default())
            } else {
                serde_json::from_slice(raw).unwrap_or(Value::Null)
            };
            Some(Checked { value, config })
        }
        Err(errors) => {
            for e in &errors {
                config_error(ctx, found, e);
            }
            if let Some(base) = &found.inline_path {
                yaml11_hints(ctx, base);
            }
            None
        }
    }
}

/// An etcd store's cluster must be one of the bootstrap's: the filter cannot tell an unknown
/// cluster from one that is not usable yet (Envoy refuses callouts to both alike), so it only
/// reports it after a while at run time; here the name is checked against the file.
fn etcd_cluster_known(ctx: &mut Ctx<'_>, found: &FoundConfig, config: &Config) {
    let store = &config.idempotency.store;
    if !config.idempotency.enabled || store.backend != resetguard_core::config::Backend::Etcd {
        return;
    }
    let Some(clusters) = ctx
        .doc
        .value
        .pointer("/static_resources/clusters")
        .and_then(Value::as_array)
    else {
        // Not a bootstrap with static clusters (xDS, Kubernetes): nothing to check it against.
        return;
    };
    let known = clusters
        .iter()
        .any(|c| c.get("name").and_then(Value::as_str) == Some(store.cluster.as_str()));
    if !known {
        let message = ConfigError {
            path: "idempotency.store.cluster".to_string(),
            expected: format!(
                "a cluster of this bootstrap (static_resources.clusters), got {:?}",
                store.cluster
            ),
        };
        config_error(ctx, found, &message);
    }
}

/// Every error in a plugin config, found by the filter's own fail-fast parser: after each error
/// the offending field is removed (absent means default) and the config is read again.
pub fn parse_all_errors(raw: &[u8]) -> Result<Config, Vec<ConfigError>> {
    let first = match Config::parse(raw) {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    let mut errors = vec![first];
    let Ok(mut value) = serde_json::from_slice::<Value>(raw) else {
        return Err(errors);
    };
    let mut removed = Removed::default();
    for _ in 0..64 {
        let Some(last) = errors.last() else { break };
        if !removed.remove(&mut value, &last.path) {
            break;
        }
        match Config::parse_value(&value) {
            Ok(_) => break,
            Err(mut e) => {
                e.path = removed.original_path(&e.path);
                if errors.contains(&e) {
                    break;
                }
                errors.push(e);
            }
        }
    }
    Err(errors)
}

/// Array items taken out so far, so later error paths can name the items' original indices.
#[derive(Default)]
struct Removed {
    /// Array path -> original indices removed.
    items: Vec<(String, Vec<usize>)>,
}

/// `a.b[2]` -> (`a.b`, Some(2)); `a.b` -> (`a.b`, None).
fn split_index(path: &str) -> (&str, Option<usize>) {
    match path.strip_suffix(']').and_then(|p| p.rsplit_once('[')) {
        Some((array, index)) => match index.parse() {
            Ok(i) => (array, Some(i)),
            Err(_) => (path, None),
        },
        None => (path, None),
    }
}

impl Removed {
    fn removed_of(&self, array: &str) -> &[usize] {
        self.items
            .iter()
            .find(|(a, _)| a == array)
            .map(|(_, r)| r.as_slice())
            .unwrap_or(&[])
    }

    /// The original index of what is now item `current` of `array`.
    fn original_index(&self, array: &str, current: usize) -> usize {
        let mut removed: Vec<usize> = self.removed_of(array).to_vec();
        removed.sort_unstable();
        let mut index = current;
        for r in removed {
            if r <= index {
                index += 1;
            }
        }
        index
    }

    fn original_path(&self, path: &str) -> String {
        match split_index(path) {
            (array, Some(i)) => format!("{array}[{}]", self.original_index(array, i)),
            _ => path.to_string(),
        }
    }

    /// Removes the node at `path` (given with original indices); false when there is none.
    fn remove(&mut self, value: &mut Value, path: &str) -> bool {
        let (node, index) = split_index(path);
        let mut current = &mut *value;
        if node != "$" {
            for key in node.split('.') {
                let Some(next) = current.get_mut(key) else {
                    return false;
                };
                current = next;
            }
        }
        match index {
            Some(original) => {
                let before = self
                    .removed_of(node)
                    .iter()
                    .filter(|r| **r < original)
                    .count();
                let Some(items) = current.as_array_mut() else {
                    return false;
                };
                let Some(now) = original.checked_sub(before).filter(|i| *i < items.len()) else {
                    return false;
                };
                items.remove(now);
                match self.items.iter_mut().find(|(a, _)| a == node) {
                    Some((_, r)) => r.push(original),
                    None => self.items.push((node.to_string(), vec![original])),
                }
                true
            }
            None => {
                // `node` names a key of its parent object.
                let (parent, key) = match node.rsplit_once('.') {
                    Some((p, k)) => (Some(p), k),
                    None => (None, node),
                };
                let mut obj = &mut *value;
                if let Some(parent) = parent {
                    for k in parent.split('.') {
                        let Some(next) = obj.get_mut(k) else {
                            return false;
                        };
                        obj = next;
                    }
                }
                obj.as_object_mut().and_then(|m| m.remove(key)).is_some()
            }
        }
    }
}

/// The configs a route's override applies to: the resetguard filters of its connection manager,
/// or every one in the file when the route is not inside one (e.g. an RDS resource file).
fn configs_for<'a>(
    route: &FoundRoute,
    configs: &'a [FoundConfig],
) -> Vec<(usize, &'a FoundConfig)> {
    let same_hcm: Vec<(usize, &FoundConfig)> = configs
        .iter()
        .enumerate()
        .filter(|(_, c)| c.hcm_path.is_some() && c.hcm_path == route.hcm_path)
        .collect();
    if same_hcm.is_empty() {
        configs.iter().enumerate().collect()
    } else {
        same_hcm
    }
}

fn check_route(
    ctx: &mut Ctx<'_>,
    route: &FoundRoute,
    configs: &[FoundConfig],
    checked: &[Option<Checked>],
) -> RouteReport {
    let place = ctx.place(&route.path);
    let _ = writeln!(ctx.out, "route {} at {place}", route.label());
    let turned_off = configs_for(route, configs).into_iter().any(|(_, c)| {
        c.filter_name
            .as_ref()
            .is_some_and(|name| route.disabled_filters.contains(name))
    });
    let mut report = RouteReport {
        document: ctx.document,
        name: route.name.clone(),
        path: route.path.clone(),
        line: ctx.doc.line_of(&route.path),
        override_value: route.override_value.clone(),
        turned_off,
        effective: Vec::new(),
    };
    if turned_off {
        let _ = writeln!(
            ctx.out,
            "  resetguard turned off on this route (Envoy's per-route FilterConfig disabled: true)"
        );
    }
    let Some(value) = &route.override_value else {
        return report;
    };
    let meta_path = child_key(
        &child_key(&child_key(&route.path, "metadata"), "filter_metadata"),
        discover::METADATA_NAMESPACE,
    );
    let route_override = match RouteOverride::from_value(value) {
        Ok(o) => o,
        Err(e) => {
            ctx.error(
                &join(&meta_path, &e.path),
                &format!("invalid route override: {}", e.expected),
            );
            return report;
        }
    };
    let _ = writeln!(ctx.out, "  override: {value}");
    for (i, _) in configs_for(route, configs) {
        let Some(base) = checked.get(i).and_then(Option::as_ref) else {
            continue; // the plugin config itself is invalid (already reported)
        };
        match route_override.apply(&base.value) {
            Ok(None) => {
                let _ = writeln!(
                    ctx.out,
                    "  resetguard disabled on this route (override `disabled: true`)"
                );
                report.effective.push((i, RouteEffect::Disabled));
            }
            Ok(Some(config)) => {
                if config == base.config {
                    let _ = writeln!(
                        ctx.out,
                        "  effective policy: the same as the plugin configuration"
                    );
                    report.effective.push((i, RouteEffect::Same));
                } else {
                    let _ = writeln!(ctx.out, "  effective policy:");
                    ctx.out.push_str(&indent(&policy_lines(&config), "    "));
                    report
                        .effective
                        .push((i, RouteEffect::Config(Box::new(config))));
                }
            }
            Err(e) => ctx.error(
                &join(&meta_path, &e.path),
                &format!(
                    "invalid route override (merged onto the plugin configuration): {}",
                    e.expected
                ),
            ),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(raw: &str) -> Vec<String> {
        parse_all_errors(raw.as_bytes())
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn every_error_is_found_with_original_indices() {
        assert_eq!(
            paths(
                r#"{"retry": {"max_retries": 11, "on": ["x", "reset", "y"], "bogus": 1},
                      "client_abort": {"log_level": "loud"}, "retyr": {}}"#
            ),
            [
                "retry.max_retries",
                "retry.on[0]",
                "retry.on[2]",
                "retry.bogus",
                "client_abort.log_level",
                "retyr"
            ]
        );
        assert_eq!(paths("{"), ["$"]);
        assert!(parse_all_errors(b"{}").is_ok());
    }
}
