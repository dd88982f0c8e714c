//! The README's metrics reference lists every counter the filter defines, under both names an
//! operator meets: `/stats` (`wasmcustom.` + name) and Prometheus (dots become underscores; the
//! real-Envoy suite checks that mapping against Envoy's `/stats/prometheus`).

use resetguard_core::counter::{Counter, STORE_ROUND_TRIP_MS};

fn metrics_section() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let start = readme
        .find("\n## Metrics\n")
        .expect("a `## Metrics` section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

#[test]
fn every_counter_has_a_row_in_the_readme_metrics_reference() {
    let section = metrics_section();
    let missing: Vec<&str> = Counter::ALL
        .iter()
        .map(|c| c.name())
        .filter(|name| {
            let prometheus = name.replace('.', "_");
            let row = format!("| `{name}` | `{prometheus}` | ");
            !section
                .lines()
                .any(|l| l.starts_with(&row) && l.len() > row.len() + 10)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "README `## Metrics` has no row `| `name` | `prometheus_name` | what increments it |` for: {missing:?}"
    );
}

#[test]
fn the_store_histogram_has_a_row_with_its_prometheus_series() {
    let section = metrics_section();
    let prometheus = STORE_ROUND_TRIP_MS.replace('.', "_");
    let row = format!("| `{STORE_ROUND_TRIP_MS}` | `{prometheus}_bucket`, `_sum`, `_count` | ");
    assert!(
        section.lines().any(|l| l.starts_with(&row)),
        "README `## Metrics` has no row starting {row:?}"
    );
}

#[test]
fn the_readme_lists_no_counter_the_filter_does_not_define() {
    let section = metrics_section();
    let mut defined: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
    defined.push(STORE_ROUND_TRIP_MS);
    for line in section.lines().filter(|l| l.starts_with("| `resetguard.")) {
        let name = line
            .trim_start_matches("| `")
            .split('`')
            .next()
            .unwrap_or("");
        assert!(
            defined.contains(&name),
            "README lists {name}, which the filter does not define"
        );
    }
}
