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
}

/// A plugin config that parsed: its JSON value (what route overrides merge onto) and the result.
struct Checked {
    value: Value,
    config: Config,
}

struct Ctx<'a> {
    file: &'a str,
    doc: &'a Document,
    errors: usize,
    out: String,
    err: String,
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
    }

    fn warn(&mut self, path: &str, message: &str) {
        let place = self.place(path);
        let _ = writeln!(self.err, "warning: {place}: {message}");
    }
}

pub fn validate_file(file: &str) -> Report {
    let text = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => return unusable(format!("error: {file}: cannot read: {e}")),
    };
    let Ok(text_str) = std::str::from_utf8(&text) else {
        return unusable(format!("error: {file}: not UTF-8 text"));
    };
    validate_text(file, &text, text_str)
}

fn unusable(message: String) -> Report {
    Report {
        status: UNUSABLE,
        out: String::new(),
        err: message + "\n",
    }
}

pub fn validate_text(file: &str, bytes: &[u8], text: &str) -> Report {
    let docs = match discover::load(text) {
        Ok(docs) => docs,
        Err(e) => return unusable(format!("error: {file}: cannot parse: {e}")),
    };
    let mut report = Report {
        status: OK,
        out: String::new(),
        err: String::new(),
    };
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
            errors: 0,
            out: String::new(),
            err: String::new(),
        };
        if many {
            let _ = writeln!(ctx.out, "document {}:", index + 1);
        }
        for (path, problem) in &doc.problems {
            ctx.error(path, problem);
        }
        for (path, what) in &found.skipped {
            let _ = writeln!(ctx.out, "skipped {what} at {}", ctx.place(path));
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
        for config in &found.configs {
            checked.push(check_config(&mut ctx, config));
        }
        for route in &found.routes {
            check_route(&mut ctx, route, &found.configs, &checked);
        }
        errors += ctx.errors;
        report.out.push_str(&ctx.out);
        report.err.push_str(&ctx.err);
        founds.push(found);
    }
    for note in crate::hold::check(&docs, &founds) {
        hold_note(&mut report, file, &docs, note);
    }
    if configs_found == 0 {
        report.status = UNUSABLE;
        let _ = writeln!(
            report.err,
            "error: {file}: no resetguard configuration found (looked for a plugin JSON, an \
             envoy.filters.http.wasm filter whose root_id, name or code file names resetguard, \
             an Istio WasmPlugin or an Envoy Gateway EnvoyExtensionPolicy)"
        );
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
    let Some(doc) = docs.get(note.doc) else {
        return;
    };
    let place = match doc.line_of(&note.path) {
        Some(line) => format!("{file}:{line}: {}", note.path),
        None => format!("{file}: {}", note.path),
    };
    let text = format!("{}: {place}: {}\n", note.level.label(), note.message);
    match note.level {
        crate::hold::Level::Info => report.out.push_str(&text),
        _ => report.err.push_str(&text),
    }
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
        let _ = writeln!(
            ctx.err,
            "hint: {place}: a bare `{word}` is a boolean in YAML 1.1, which Kubernetes uses; quote it: \"{word}\""
        );
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
) {
    let place = ctx.place(&route.path);
    let _ = writeln!(ctx.out, "route {} at {place}", route.label());
    let turned_off = configs_for(route, configs).into_iter().any(|(_, c)| {
        c.filter_name
            .as_ref()
            .is_some_and(|name| route.disabled_filters.contains(name))
    });
    if turned_off {
        let _ = writeln!(
            ctx.out,
            "  resetguard turned off on this route (Envoy's per-route FilterConfig disabled: true)"
        );
    }
    let Some(value) = &route.override_value else {
        return;
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
            return;
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
            }
            Ok(Some(config)) => {
                if config == base.config {
                    let _ = writeln!(
                        ctx.out,
                        "  effective policy: the same as the plugin configuration"
                    );
                } else {
                    let _ = writeln!(ctx.out, "  effective policy:");
                    ctx.out.push_str(&indent(&policy_lines(&config), "    "));
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
