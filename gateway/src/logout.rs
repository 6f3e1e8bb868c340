//! Where log lines go: internal logs straight to stdout, access-log lines
//! through a buffer.
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
use tracing_subscriber::fmt::MakeWriter;

/// Buffered bytes that trigger a write on the logging thread.
pub const FLUSH_AT: usize = 64 << 10;
/// Longest time a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The `tracing` target of access-log events.
pub const ACCESS_TARGET: &str = "edgegate::access";

struct Buffer {
    lines: Mutex<Vec<u8>>,
    /// Held while a taken buffer is written, so chunks reach stdout in the
    /// order they were filled.
    writing: Mutex<()>,
}

static BUFFER: OnceLock<Buffer> = OnceLock::new();

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

/// One access-log line on its way into the buffer.
pub struct AccessLine;

impl Write for AccessLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let b = buffer();
        let full = {
            let mut lines = b.lines.lock().unwrap_or_else(|p| p.into_inner());
            lines.extend_from_slice(data);
            lines.len() >= FLUSH_AT
        };
        if full {
            flush();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Either stdout or the access buffer.
pub enum Output {
    /// Internal logs.
    Stdout(std::io::Stdout),
    /// Access-log lines.
    Access(AccessLine),
}

impl Write for Output {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Stdout(s) => s.write(data),
            Output::Access(a) => a.write(data),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.write_all(data),
            Output::Access(a) => a.write_all(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.flush(),
            Output::Access(a) => a.flush(),
        }
    }
}

/// The `tracing` writer: access events buffered, the rest direct.
#[derive(Clone, Copy, Default)]
pub struct LogOutput;

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = Output;

    fn make_writer(&'a self) -> Output {
        Output::Stdout(std::io::stdout())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Output {
        if meta.target() == ACCESS_TARGET {
            Output::Access(AccessLine)
        } else {
            Output::Stdout(std::io::stdout())
        }
    }
}
