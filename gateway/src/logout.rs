//! The access log: one line per request, formatted here and written
//! through a buffer (internal logs go through `tracing` to stdout).
//!
//! Unbuffered, the access log costs one `write(2)` per request on the
//! worker thread that served it (the drop-in mode logs every request by
//! default). Lines are instead appended to one shared buffer and written
//! out when it holds [`FLUSH_AT`] bytes, every [`FLUSH_EVERY`] by a
//! background thread, and when the process stops serving — nginx's
//! `access_log ... buffer= flush=` and Envoy's file flush interval do the
//! same. What a crash can lose is at most the last [`FLUSH_EVERY`] of lines.
//! Internal logs (warnings, errors) are never delayed.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Buffered bytes that trigger a write on the logging thread.
pub const FLUSH_AT: usize = 64 << 10;
/// Longest time a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The `target` access lines carry, as `tracing` lines carry theirs.
pub const ACCESS_TARGET: &str = "edgegate::access";

struct Buffer {
    lines: Mutex<Vec<u8>>,
    /// Held while a taken buffer is written, so chunks reach stdout in the
    /// order they were filled.
    writing: Mutex<()>,
}

static BUFFER: OnceLock<Buffer> = OnceLock::new();

/// Set by [`enable`]: the binary writes access lines to stdout; a library
/// embedding the gateway (the in-process tests) does not, as with `tracing`
/// events when no subscriber is installed.
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets [`access`] write (called when the process sets up its logging).
pub fn enable() {
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The buffer, and its flusher thread on first use.
fn buffer() -> &'static Buffer {
    BUFFER.get_or_init(|| {
        let _ = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            });
        Buffer {
            lines: Mutex::new(Vec::with_capacity(FLUSH_AT)),
            writing: Mutex::new(()),
        }
    })
}

/// Writes out every buffered access-log line.
pub fn flush() {
    let Some(b) = BUFFER.get() else {
        return;
    };
    let _order = b.writing.lock().unwrap_or_else(|p| p.into_inner());
    let chunk = {
        let mut lines = b.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.is_empty() {
            return;
        }
        std::mem::replace(&mut *lines, Vec::with_capacity(FLUSH_AT))
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&chunk);
    let _ = out.flush();
}

/// Appends whole lines to the buffer, writing it out once it is full.
fn append(lines: &[u8]) {
    let b = buffer();
    let full = {
        let mut buffered = b.lines.lock().unwrap_or_else(|p| p.into_inner());
        buffered.extend_from_slice(lines);
        buffered.len() >= FLUSH_AT
    };
    if full {
        flush();
    }
}

/// One request's access-log line.
#[derive(serde::Serialize)]
pub struct AccessRecord<'a> {
    /// TCP peer address, when known.
    pub client: Option<std::net::IpAddr>,
    /// Request method.
    pub method: &'a str,
    /// Host the request named.
    pub host: &'a str,
    /// Path, without the query.
    pub path: &'a str,
    /// Route name (`-` when none matched).
    pub route: &'a str,
    /// Backend address (`-` when none was used).
    pub upstream: &'a str,
    /// Status sent.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    /// Time from request to logging.
    pub duration_ms: f64,
    /// Upstream attempts.
    pub attempts: u32,
    /// Request id.
    pub request_id: &'a str,
    /// Principal set by an auth filter (`-` when none).
    pub principal: &'a str,
    /// Pingora error type, empty when none.
    pub error: &'a str,
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    timestamp: &'a str,
    level: &'static str,
    target: &'static str,
    #[serde(flatten)]
    record: &'a AccessRecord<'a>,
}

/// Writes one access line in `format` into the buffer. Formatted by hand
/// rather than through `tracing`'s field visitors: the access log is on by
/// default and runs once per request (same keys and shape as the `tracing`
/// output of internal logs, so one log pipeline reads both). Independent of
/// `log.level`: `log.access_log` alone turns it on or off.
pub fn access(record: &AccessRecord<'_>, format: policies::LogFormat) {
    if !ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    thread_local! {
        static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
    }
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        format_line(record, format, &now, &mut line);
        append(line.as_bytes());
    });
}

/// One access line, newline included, appended to `line`.
fn format_line(
    record: &AccessRecord<'_>,
    format: policies::LogFormat,
    now: &str,
    line: &mut String,
) {
    use std::fmt::Write as _;
    match format {
        policies::LogFormat::Json => {
            let json = JsonLine {
                timestamp: now,
                level: "INFO",
                target: ACCESS_TARGET,
                record,
            };
            if let Ok(text) = serde_json::to_string(&json) {
                line.push_str(&text);
            }
        }
        policies::LogFormat::Text => {
            let r = record;
            let _ = write!(line, "{now}  INFO {ACCESS_TARGET}: client=");
            match r.client {
                Some(c) => {
                    let _ = write!(line, "{c}");
                }
                None => line.push('-'),
            }
            for (key, value) in [
                ("method", r.method),
                ("host", r.host),
                ("path", r.path),
                ("route", r.route),
                ("upstream", r.upstream),
            ] {
                text_field(line, key, value);
            }
            let _ = write!(
                line,
                " status={} bytes={} duration_ms={:.3} attempts={}",
                r.status, r.bytes, r.duration_ms, r.attempts
            );
            for (key, value) in [
                ("request_id", r.request_id),
                ("principal", r.principal),
                ("error", r.error),
            ] {
                text_field(line, key, value);
            }
        }
    }
    line.push('\n');
}

/// ` key=value`, the value quoted and escaped as a JSON string when it
/// holds anything but visible ASCII (a client-sent `Host` or a filter's
/// principal must not be able to forge fields or lines in the text log).
fn text_field(line: &mut String, key: &str, value: &str) {
    line.push(' ');
    line.push_str(key);
    line.push('=');
    if value
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        line.push_str(value);
    } else if let Ok(quoted) = serde_json::to_string(value) {
        line.push_str(&quoted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            client: Some("192.0.2.7".parse().unwrap()),
            method: "GET",
            host: "a.test",
            path: "/we\"ird",
            route: "r",
            upstream: "127.0.0.1:9000",
            status: 200,
            bytes: 12,
            duration_ms: 1.5,
            attempts: 1,
            request_id: "id-1",
            principal: "-",
            error: "",
        }
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut line = String::new();
        format_line(
            &record(),
            policies::LogFormat::Json,
            "2026-11-21T07:00:00.000000Z",
            &mut line,
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["target"], ACCESS_TARGET);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["path"], "/we\"ird");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream"], "127.0.0.1:9000");
        let mut none = record();
        none.client = None;
        line.clear();
        format_line(&none, policies::LogFormat::Json, "t", &mut line);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert!(v["client"].is_null());
    }

    #[test]
    fn text_lines_are_one_line_of_key_values() {
        let mut line = String::new();
        format_line(&record(), policies::LogFormat::Text, "T", &mut line);
        assert_eq!(
            line,
            "T  INFO edgegate::access: client=192.0.2.7 method=GET host=a.test path=\"/we\\\"ird\" route=r upstream=127.0.0.1:9000 status=200 bytes=12 duration_ms=1.500 attempts=1 request_id=id-1 principal=- error=\n"
        );
    }

    #[test]
    fn text_values_cannot_forge_fields_or_lines() {
        let mut r = record();
        r.host = "a.test status=500";
        r.principal = "eve\n2026-01-01T00:00:00Z  INFO edgegate::access: forged";
        let mut line = String::new();
        format_line(&r, policies::LogFormat::Text, "T", &mut line);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains(r#"host="a.test status=500""#), "{line}");
        assert!(line.contains(r#"principal="eve\n2026"#), "{line}");
    }
}
