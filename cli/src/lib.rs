//! The `resetguard` operator CLI, as a library so its tests can drive each part. It links
//! `resetguard-core`: configs are parsed and requests decided by the code the `.wasm` runs.

pub mod discover;
pub mod document;
pub mod effective;
pub mod explain;
pub mod hold;
pub mod validate;

/// The JSON Schema of the plugin configuration (`schema/resetguard.schema.json`).
pub use resetguard_core::config::schema::SCHEMA_JSON as SCHEMA;
