//! Where the binary's log lines go: stderr, with the access log written in batches.
//!
//! One `write` system call per access-log line was half of what the access log cost per
//! request (BENCHMARKS.md, table 1b). Access-log lines (target `tokengate::access`) are
//! appended to a buffer instead, which a background thread writes out every
//! [`FLUSH_EVERY`], or the line that fills it to [`FLUSH_AT`] writes at once. Every other line
//! (start-up, warnings, audit events) is written immediately, after whatever the buffer holds,
//! so lines keep their order. The buffer is written out before the process exits and before a
//! panic message; a process killed outright loses at most [`FLUSH_EVERY`] of access-log lines.

use std::io::Write;
use std::sync::{Mutex, MutexGuard, Once, PoisonError};
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// How often buffered access-log lines are written out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that trigger an immediate write.
pub const FLUSH_AT: usize = 64 * 1024;
/// The target of the access log's events.
pub const ACCESS_TARGET: &str = "tokengate::access";

/// The log output. Generic over the destination so that tests can read what was written.
pub struct LogSink<W: Write + Send + 'static> {
    /// Pending lines, and the destination: one lock, held while writing, keeps lines in order.
    inner: Mutex<(Vec<u8>, W)>,
    /// Whether a background thread writes the buffer out every [`FLUSH_EVERY`].
    background: bool,
    flusher: Once,
}

/// The process's standard error, as a `Write` that a `static` can hold.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write(b)
    }
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        std::io::stderr().write_all(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The process's sink: stderr.
pub static STDERR: LogSink<Stderr> = LogSink::new(Stderr);

impl<W: Write + Send + 'static> LogSink<W> {
    /// A sink whose buffer a background thread (started with the first buffered line) writes
    /// out every [`FLUSH_EVERY`].
    pub const fn new(out: W) -> Self {
        LogSink {
            inner: Mutex::new((Vec::new(), out)),
            background: true,
            flusher: Once::new(),
        }
    }

    /// A sink written out only by [`LogSink::flush`], a full buffer or a direct line.
    pub const fn manual(out: W) -> Self {
        LogSink {
            inner: Mutex::new((Vec::new(), out)),
            background: false,
            flusher: Once::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Vec<u8>, W)> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes out the buffered lines now.
    pub fn flush(&self) {
        let mut g = self.lock();
        let (buf, out) = &mut *g;
        write_out(buf, out);
    }

    /// Adds a formatted line: buffered when `batched`, else written at once after the buffer.
    pub fn append(&'static self, line: &[u8], batched: bool) {
        if batched && self.background {
            self.flusher.call_once(|| {
                let _ = std::thread::Builder::new()
                    .name("log-flush".into())
                    .spawn(move || loop {
                        std::thread::sleep(FLUSH_EVERY);
                        self.flush();
                    });
            });
        }
        let mut g = self.lock();
        let (buf, out) = &mut *g;
        buf.extend_from_slice(line);
        if !batched || buf.len() >= FLUSH_AT {
            write_out(buf, out);
        }
    }

    /// Buffered bytes not yet written (for tests).
    pub fn pending(&self) -> usize {
        self.lock().0.len()
    }
}

/// Unwritten bytes kept for a later attempt when the output refuses them (a full
/// non-blocking pipe); beyond this they are dropped rather than kept forever.
const KEEP_UNWRITTEN: usize = 1024 * 1024;

fn write_out<W: Write>(buf: &mut Vec<u8>, out: &mut W) {
    let mut written = 0;
    while written < buf.len() {
        match out.write(&buf[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = out.flush();
    buf.drain(..written);
    if buf.len() > KEEP_UNWRITTEN {
        // Nowhere to report a failed log write.
        buf.clear();
    }
}

/// The `tracing` writer for a sink: batches the access log, writes everything else through.
pub struct Writer<W: Write + Send + 'static> {
    sink: &'static LogSink<W>,
    batched: bool,
}

impl<W: Write + Send + 'static> Write for Writer<W> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.sink.append(line, self.batched);
        Ok(line.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// [`MakeWriter`] for a static sink.
pub struct MakeSinkWriter<W: Write + Send + 'static>(pub &'static LogSink<W>);

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for MakeSinkWriter<W> {
    type Writer = Writer<W>;

    fn make_writer(&'a self) -> Writer<W> {
        Writer {
            sink: self.0,
            batched: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Writer<W> {
        Writer {
            sink: self.0,
            batched: meta.target() == ACCESS_TARGET,
        }
    }
}

/// Writes the buffered lines out before a panic's message (then runs the previous hook).
pub fn flush_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        STDERR.flush();
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn sink() -> (&'static LogSink<Shared>, Shared) {
        let out = Shared::default();
        (Box::leak(Box::new(LogSink::manual(out.clone()))), out)
    }

    fn text(s: &Shared) -> String {
        String::from_utf8(s.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn access_lines_wait_other_lines_go_at_once_and_order_holds() {
        let (sink, out) = sink();
        sink.append(b"a1\n", true);
        sink.append(b"a2\n", true);
        assert_eq!(text(&out), "", "access lines are buffered");
        assert_eq!(sink.pending(), 6);
        sink.append(b"warn\n", false);
        assert_eq!(
            text(&out),
            "a1\na2\nwarn\n",
            "a direct line writes the buffer first"
        );
        sink.append(b"a3\n", true);
        sink.flush();
        assert_eq!(text(&out), "a1\na2\nwarn\na3\n");
        assert_eq!(sink.pending(), 0);
    }

    #[test]
    fn a_full_buffer_is_written_at_once() {
        let (sink, out) = sink();
        let line = vec![b'x'; 1000];
        for _ in 0..(FLUSH_AT / 1000) {
            sink.append(&line, true);
        }
        assert_eq!(text(&out).len(), 0);
        sink.append(&line, true);
        assert_eq!(text(&out).len(), (FLUSH_AT / 1000 + 1) * 1000);
        assert_eq!(sink.pending(), 0);
    }

    #[test]
    fn the_flusher_writes_buffered_lines_out_on_its_own() {
        let out = Shared::default();
        let sink: &'static LogSink<Shared> = Box::leak(Box::new(LogSink::new(out.clone())));
        sink.append(b"later\n", true);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while text(&out).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "not written within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(text(&out), "later\n");
    }

    /// Accepts at most `room` bytes, then refuses with `WouldBlock` (a full pipe).
    struct Full {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = b.len().min(self.room);
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            self.room -= n;
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_an_output_refuses_are_kept_for_the_next_write() {
        let mut out = Full {
            got: Vec::new(),
            room: 4,
        };
        let mut buf = b"one\ntwo\n".to_vec();
        write_out(&mut buf, &mut out);
        assert_eq!((&out.got[..], &buf[..]), (&b"one\n"[..], &b"two\n"[..]));
        out.room = 100;
        write_out(&mut buf, &mut out);
        assert_eq!((&out.got[..], buf.len()), (&b"one\ntwo\n"[..], 0));
    }

    #[test]
    fn the_writer_batches_only_the_access_target() {
        use tracing_subscriber::layer::SubscriberExt;
        let (sink, out) = sink();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(MakeSinkWriter(sink)),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "tokengate::access", status = 200, "");
            assert_eq!(text(&out), "");
            tracing::info!(target: "tokengate::app", "listening");
        });
        let t = text(&out);
        let access = t.find("status=200").expect("the access line");
        let other = t.find("listening").expect("the other line");
        assert!(access < other, "{t}");
    }
}
