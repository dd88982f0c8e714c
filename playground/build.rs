//! Embeds the project's examples (`examples/{config,envoy,istio,envoy-gateway}/*.{json,yaml,yml}`)
//! as the page's presets, so the built page works offline and lists every shipped example.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let examples = Path::new(&manifest).join("../examples");
    println!("cargo:rerun-if-changed={}", examples.display());
    let mut found = Vec::new();
    for dir in ["config", "envoy", "istio", "envoy-gateway"] {
        let Ok(entries) = std::fs::read_dir(examples.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "json" | "yaml" | "yml") {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                found.push((format!("examples/{dir}/{name}"), path.clone()));
            }
        }
    }
    found.sort();
    let mut out =
        String::from("/// Every shipped example: its path in the repository and its text.\n");
    out.push_str("pub const PRESETS: &[(&str, &str)] = &[\n");
    for (name, path) in &found {
        let abs = path.canonicalize().unwrap_or_else(|_| path.clone());
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            abs.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("presets.rs");
    std::fs::write(dest, out).expect("write presets.rs");
}
