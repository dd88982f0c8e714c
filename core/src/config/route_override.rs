//! Per-route overrides: the object under an Envoy route's `metadata.filter_metadata.resetguard`.
//!
//! ```text
//! RouteOverride::from_value(&Value) -> Result<RouteOverride, ConfigError>
//! RouteOverride::disabled(&self) -> bool
//! RouteOverride::apply(&self, plugin: &Value) -> Result<Option<Config>, ConfigError>
//! merge(base: &mut Value, patch: &Value)
//! fixed_settings() -> &[String]
//! ```
//!
//! The effective policy of a route is the plugin JSON with the override merged onto it (RFC 7396
//! style: objects merge key by key, `null` puts a setting back to its default, anything else
//! replaces, arrays included), read by the same strict [`Config::parse_value`]. On top of the plugin
//! settings an override may say `disabled: true`: the filter then leaves the route's streams alone.
//!
//! Settings fixed when the idempotency store is opened at configure time ([`fixed_settings`])
//! cannot vary per route, and a route cannot turn idempotency on when the plugin configuration
//! leaves it off (there is no store to dedupe with); a route can turn it off. Error paths are
//! relative to the override object, as in the plugin JSON (`retry.max_retries`).

use super::reader::{error, ConfigResult};
use super::Config;
use serde_json::{Map, Value};

/// The key that turns the filter off for a route; not a plugin setting.
pub const DISABLED: &str = "disabled";

/// Paths that are fixed when the plugin is configured (they size or key the shared store): the
/// settings the schema's route override forbids.
pub use super::schema::fixed_settings;

/// A validated route override (its plugin settings are checked against a plugin config by
/// [`RouteOverride::apply`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteOverride {
    disabled: bool,
    /// The override without `disabled`: merged onto the plugin JSON.
    patch: Value,
}

impl RouteOverride {
    /// Checks the override's shape: an object, `disabled` a boolean, no fixed setting.
    pub fn from_value(value: &Value) -> ConfigResult<RouteOverride> {
        let Value::Object(map) = value else {
            return Err(error("$", "an object (the route's resetguard settings)"));
        };
        let disabled = match map.get(DISABLED) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(_) => return Err(error(DISABLED, "a boolean")),
        };
        for fixed in fixed_settings() {
            if lookup(map, fixed).is_some() {
                return Err(error(
                    fixed,
                    "a setting that cannot vary per route (it sizes the shared idempotency store, \
                     opened when the plugin is configured); set it in the plugin configuration",
                ));
            }
        }
        let mut patch = map.clone();
        patch.remove(DISABLED);
        Ok(RouteOverride {
            disabled,
            patch: Value::Object(patch),
        })
    }

    pub fn disabled(&self) -> bool {
        self.disabled
    }

    /// The route's effective configuration: `plugin` (the plugin JSON) with this override merged
    /// onto it, or `None` when the override disables the filter. The merged settings are checked
    /// even then, so a broken override is reported whatever it says.
    pub fn apply(&self, plugin: &Value) -> ConfigResult<Option<Config>> {
        let base = Config::parse_value(plugin)?;
        let mut merged = plugin.clone();
        merge(&mut merged, &self.patch);
        let config = Config::parse_value(&merged)?;
        if config.idempotency.enabled && !base.idempotency.enabled {
            return Err(error(
                "idempotency",
                "idempotency left off (it is off in the plugin configuration, so no store was \
                 opened for it); enable it there and turn it off per route instead",
            ));
        }
        Ok((!self.disabled).then_some(config))
    }
}

/// Merges `patch` onto `base`: objects key by key, anything else (arrays, `null`) replaces. The
/// strict reader reads a `null` setting as its default, so `null` resets a setting (as removing
/// it would in RFC 7396).
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch.iter() {
                match base.get_mut(key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

/// The value at a dotted path of an object, if every step exists.
fn lookup<'a>(map: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut segments = path.split('.');
    let mut value = map.get(segments.next()?)?;
    for segment in segments {
        value = value.as_object()?.get(segment)?;
    }
    Some(value).filter(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn effective(plugin: Value, route: Value) -> ConfigResult<Option<Config>> {
        RouteOverride::from_value(&route)?.apply(&plugin)
    }

    #[test]
    fn objects_merge_key_by_key_and_arrays_replace() {
        let plugin = json!({"retry": {"max_retries": 3, "on": ["reset", "5xx"]},
                            "client_abort": {"log_level": "debug"}});
        let c = effective(
            plugin.clone(),
            json!({"retry": {"on": ["connect-failure"]}}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.retry.max_retries, 3, "kept from the plugin");
        assert_eq!(c.retry.on, vec![crate::config::RetryOn::ConnectFailure]);
        assert_eq!(
            c.client_abort.log_level,
            crate::config::AbortLogLevel::Debug
        );
        // null resets a setting to its default.
        let c = effective(plugin, json!({"retry": {"max_retries": null}}))
            .unwrap()
            .unwrap();
        assert_eq!(c.retry.max_retries, 2);
        assert_eq!(c.retry.on.len(), 2);
    }

    #[test]
    fn an_empty_override_is_the_plugin_config() {
        let plugin = json!({"retry": {"max_retries": 5}, "idempotency": {"mode": "report"}});
        assert_eq!(
            effective(plugin.clone(), json!({})).unwrap(),
            Some(Config::parse_value(&plugin).unwrap())
        );
        assert_eq!(
            effective(json!({}), json!({"disabled": false})).unwrap(),
            Some(Config::default())
        );
    }

    #[test]
    fn disabled_returns_none_but_still_checks_the_rest() {
        let route = RouteOverride::from_value(&json!({"disabled": true})).unwrap();
        assert!(route.disabled());
        assert_eq!(route.apply(&json!({})).unwrap(), None);
        let err = effective(json!({}), json!({"disabled": true, "retry": {"max": 1}})).unwrap_err();
        assert_eq!(err.path, "retry.max");
        let err = effective(json!({}), json!({"disabled": "yes"})).unwrap_err();
        assert_eq!(err.path, "disabled");
    }

    #[test]
    fn rejections_name_the_path() {
        let idem = json!({"idempotency": {}});
        let cases = [
            (json!({}), json!([]), "$"),
            (
                json!({}),
                json!({"retry": {"max_retries": 11}}),
                "retry.max_retries",
            ),
            (json!({}), json!({"retyr": {}}), "retyr"),
            (json!({}), json!({"retry": 1}), "retry"),
            (
                idem,
                json!({"idempotency": {"mode": "audit"}}),
                "idempotency.mode",
            ),
            (json!({}), json!({"idempotency": {}}), "idempotency"),
            (
                json!({}),
                json!({"idempotency": {"enabled": true}}),
                "idempotency",
            ),
        ];
        for (plugin, route, path) in cases {
            let err = effective(plugin, route.clone()).unwrap_err();
            assert_eq!(err.path, path, "{route}: {err}");
        }
        for fixed in fixed_settings() {
            let (section, key) = fixed.split_once('.').unwrap();
            let route = json!({ section: { key: 8 } });
            let err = effective(json!({"idempotency": {}}), route).unwrap_err();
            assert_eq!(err.path, *fixed);
            assert!(err.expected.contains("cannot vary per route"), "{err}");
        }
    }

    #[test]
    fn a_route_can_turn_idempotency_off_or_tune_it() {
        let plugin = json!({"idempotency": {"shards": 4, "max_entries": 100}});
        let off = effective(plugin.clone(), json!({"idempotency": {"enabled": false}}))
            .unwrap()
            .unwrap();
        assert!(!off.idempotency.enabled);
        let tuned = effective(
            plugin,
            json!({"idempotency": {"mode": "report", "path_prefixes": ["/pay"]}}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(tuned.idempotency.path_prefixes, ["/pay"]);
        assert_eq!(
            (tuned.idempotency.shards, tuned.idempotency.max_entries),
            (4, 100)
        );
    }

    #[test]
    fn fixed_settings_equal_to_the_plugin_are_still_rejected() {
        // Simpler to explain than "allowed when equal": the setting is not a route's to make.
        let plugin = json!({"idempotency": {"shards": 4}});
        let err = effective(plugin, json!({"idempotency": {"shards": 4}})).unwrap_err();
        assert_eq!(err.path, "idempotency.shards");
        // null is "not set", not a fixed setting.
        assert!(effective(
            json!({"idempotency": {}}),
            json!({"idempotency": {"shards": null}})
        )
        .is_ok());
    }

    #[test]
    fn merge_is_rfc7396_with_null_kept_as_default() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": 1});
        merge(
            &mut base,
            &json!({"a": {"b": null, "c": [3], "e": {"f": 1}}, "d": {"x": 1}}),
        );
        assert_eq!(
            base,
            json!({"a": {"b": null, "c": [3], "e": {"f": 1}}, "d": {"x": 1}})
        );
        // A null for a setting the plugin sets gives the default, like an absent key.
        let plugin = json!({"retry": {"max_retries": 5}});
        let mut merged = plugin.clone();
        merge(&mut merged, &json!({"retry": {"max_retries": null}}));
        assert_eq!(Config::parse_value(&merged).unwrap().retry.max_retries, 2);
    }
}
