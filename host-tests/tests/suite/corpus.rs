//! Every file of the shared scenario corpus, on every host profile it names. One scenario by
//! name: `RESETGUARD_SCENARIO=idem-replay cargo test -p host-tests --test suite corpus`.

use host_tests::scenario::{profiles, run, Verdict};
use host_tests::wasm::workspace_root;

#[test]
fn every_scenario_passes_on_the_mock_host() {
    let dir = workspace_root().join("scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir.display());
    if let Ok(only) = std::env::var("RESETGUARD_SCENARIO") {
        files.retain(|p| p.file_stem().is_some_and(|s| s == only.as_str()));
        assert!(
            !files.is_empty(),
            "no scenario named {only:?} in {}",
            dir.display()
        );
    }
    let mut failures = Vec::new();
    for file in &files {
        let raw = std::fs::read_to_string(file).unwrap();
        let scenario: serde_json::Value = serde_json::from_str(&raw)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for profile in profiles(&scenario) {
            match run(&scenario, profile) {
                Verdict::Passed => {}
                Verdict::Failed(f) => failures.push(format!(
                    "{name} on {}:\n  {}",
                    profile.name(),
                    f.join("\n  ")
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} scenario failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
