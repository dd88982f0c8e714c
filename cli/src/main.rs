//! `resetguard validate FILE…` | `resetguard explain …` | `resetguard schema`

use resetguard_cli::explain::{self as explaining, Request};
use resetguard_cli::validate::{self, UNUSABLE};
use std::io::Write as _;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  resetguard validate FILE...
      Checks every resetguard configuration in each FILE: a plugin JSON, an Envoy bootstrap or
      xDS resource file (YAML or JSON; every envoy.filters.http.wasm filter loading resetguard
      and every route's metadata.filter_metadata.resetguard), an Istio WasmPlugin or an Envoy
      Gateway EnvoyExtensionPolicy. Prints \"ok\" and the effective policy per method, or every
      error with its place. Exit status: 0 ok, 1 invalid, 2 unusable input.
  resetguard explain --config FILE [--route-override JSON|@FILE | --route NAME] METHOD PATH
                     [-H 'name: value']...
      Prints what the filter would do with that request: the retry conditions it arms (the
      exact router headers), the client retry headers it strips, whether an Idempotency-Key is
      required / valid / exempt, the key's scope, and any reply it answers itself. FILE is a
      plugin JSON or a file with one resetguard filter; --route takes the override of the route
      of that name in FILE. `host` is sent as :authority (default example.com).
  resetguard schema
      Prints the JSON Schema of the plugin configuration.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let status = match args.first().map(String::as_str) {
        Some("validate") if args.len() > 1 => validate_files(&args[1..]),
        Some("explain") => explain(&args[1..]),
        Some("schema") if args.len() == 1 => {
            print!("{}", resetguard_cli::SCHEMA);
            0
        }
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            0
        }
        _ => {
            eprint!("{USAGE}");
            UNUSABLE
        }
    };
    ExitCode::from(status as u8)
}

/// The worst status over all files (unusable > invalid > ok).
fn validate_files(files: &[String]) -> i32 {
    let mut worst = validate::OK;
    for file in files {
        let report = validate::validate_file(file);
        let _ = std::io::stdout().write_all(report.out.as_bytes());
        let _ = std::io::stderr().write_all(report.err.as_bytes());
        worst = worst.max(report.status);
    }
    worst
}

/// Parses `explain`'s arguments and prints the explanation (status 2 on unusable arguments).
fn explain(args: &[String]) -> i32 {
    let mut config = None;
    let mut route_override = None;
    let mut route = None;
    let mut headers = Vec::new();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let parsed = match arg.as_str() {
            "--config" | "-c" => value(arg).map(|v| config = Some(v)),
            "--route-override" => value(arg).map(|v| route_override = Some(v)),
            "--route" => value(arg).map(|v| route = Some(v)),
            "-H" | "--header" => value(arg)
                .and_then(|v| explaining::parse_header(&v))
                .map(|h| headers.push(h)),
            other if other.starts_with('-') && other.len() > 1 => {
                Err(format!("unknown option {other}"))
            }
            other => {
                positional.push(other.to_string());
                Ok(())
            }
        };
        if let Err(e) = parsed {
            eprintln!("error: {e}\n{USAGE}");
            return UNUSABLE;
        }
    }
    let (Some(config), [method, path]) = (config, positional.as_slice()) else {
        eprint!("error: explain needs --config FILE, METHOD and PATH\n{USAGE}");
        return UNUSABLE;
    };
    match explaining::effective(&config, route_override.as_deref(), route.as_deref()) {
        Ok(effective) => {
            print!(
                "{}",
                explaining::explain(&effective, &Request::new(method, path, &headers))
            );
            validate::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            validate::INVALID
        }
    }
}
