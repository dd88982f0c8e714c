//! Routes the `log` crate to the host's log, filtered in the module at the host's level so a
//! suppressed line costs no host call.

use crate::host;
use log::{Level, LevelFilter, Log, Metadata, Record};

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl Log for HostLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => host::LogLevel::Error,
            Level::Warn => host::LogLevel::Warn,
            Level::Info => host::LogLevel::Info,
            Level::Debug => host::LogLevel::Debug,
            Level::Trace => host::LogLevel::Trace,
        };
        let _ = host::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Installs the logger once per VM, at the host's current level (Info if the host won't say).
pub fn install() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(host_level());
}

/// Re-reads the host's level (an operator may have changed it at runtime).
pub fn refresh() {
    log::set_max_level(host_level());
}

fn host_level() -> LevelFilter {
    use host::LogLevel;
    match host::log_level() {
        Ok(LogLevel::Trace) => LevelFilter::Trace,
        Ok(LogLevel::Debug) => LevelFilter::Debug,
        Ok(LogLevel::Info) => LevelFilter::Info,
        Ok(LogLevel::Warn) => LevelFilter::Warn,
        Ok(LogLevel::Error | LogLevel::Critical) => LevelFilter::Error,
        Ok(LogLevel::Off) => LevelFilter::Off,
        Err(_) => LevelFilter::Info,
    }
}

/// `METHOD path` of the current request, for the rare log line that names it. Read from the
/// header map when needed, so requests that log nothing copy nothing.
pub fn request_line() -> String {
    let part = |name| {
        host::header(host::MapType::RequestHeaders, name)
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| "-".to_string())
    };
    format!("{} {}", part(":method"), part(":path"))
}
