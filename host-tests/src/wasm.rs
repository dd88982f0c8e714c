//! Finding and compiling the filter's release `.wasm`. One engine and one compiled module per test
//! process (compiled code is immutable; every test still gets its own stores and state).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;
use wasmtime::{Config, Engine, Module};

/// cargo build (release) then `wasm-opt -Oz` in place: the artifact that ships.
pub const BUILD_COMMAND: &str = "scripts/build-wasm";

/// The workspace root (host-tests' parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `RESETGUARD_WASM`, else the release artefact in the target dir (honouring CARGO_TARGET_DIR).
pub fn filter_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RESETGUARD_WASM") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("wasm32-wasip1/release/resetguard.wasm")
}

pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        // Tests compile once per process; a debug-built Cranelift is slow at optimising.
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        Engine::new(&config).unwrap_or_else(|e| panic!("cannot create the wasmtime engine: {e}"))
    })
}

fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_source(&path)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        newest = newest.max(time);
    }
    newest
}

/// Refuses an artefact older than the filter's sources: a stale .wasm must not pass tests.
fn check_fresh(path: &Path) -> Result<(), String> {
    if std::env::var_os("RESETGUARD_WASM").is_some() {
        return Ok(());
    }
    let filter = workspace_root().join("filter");
    let built = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| e.to_string())?;
    match newest_source(&filter.join("src")) {
        Some(src) if src > built => Err(format!(
            "{} is older than filter/src: rebuild it with `{BUILD_COMMAND}`",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// The compiled filter, or a message saying how to build it.
pub fn filter_module() -> Result<&'static Module, String> {
    static MODULE: OnceLock<Result<Module, String>> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let path = filter_path();
            if !path.exists() {
                return Err(format!(
                    "the filter's .wasm is missing at {}: build it with `{BUILD_COMMAND}` \
                     (or point RESETGUARD_WASM at a built module)",
                    path.display()
                ));
            }
            check_fresh(&path)?;
            Module::from_file(engine(), &path)
                .map_err(|e| format!("cannot compile {}: {e:#}", path.display()))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Compiles a hand-written module (WAT text or binary) for host self-tests.
pub fn compile(source: &str) -> Result<Module, String> {
    Module::new(engine(), source).map_err(|e| format!("{e:#}"))
}
