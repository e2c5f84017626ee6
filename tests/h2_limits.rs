//! HTTP/2 limits of the proxy listener (hardening issue): the concurrent-stream limit is
//! advertised and enforced, a rapid-reset flood (CVE-2023-44487) and a flood of streams the
//! server has to refuse are cut off with GOAWAY, and header blocks over the header-list limit
//! (a CONTINUATION flood included) are refused. A conforming client library never sends such
//! traffic, so the abuse goes out as raw frames (a few helpers below); well-behaved requests
//! use the `h2` crate. Each test checks the refusal, then that valid requests over HTTP/2 and
//! HTTP/1.1 still succeed.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use support::*;
use tokengate::server::{H2_MAX_LOCAL_ERROR_RESET_STREAMS, H2_MAX_PENDING_ACCEPT_RESET_STREAMS};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// `proxy.h2_max_concurrent_streams` in these tests.
const MAX_STREAMS: u32 = 4;
/// `proxy.max_header_bytes` in these tests (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE is twice this).
const MAX_HEADER_BYTES: usize = 4096;

async fn gateway() -> (Upstream, TestGateway, String) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(|c| {
            c.proxy.h2_max_concurrent_streams = MAX_STREAMS;
            c.proxy.max_header_bytes = MAX_HEADER_BYTES;
            // `/hang` must stay in flight for the whole test.
            c.proxy.upstream_timeout = Duration::from_secs(120);
            c.proxy.access_log = false;
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &["security-director"]).await;
    (up, gw, secret)
}

// === raw HTTP/2 frames ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `flags` fills the other bits.
fn hpack_int(out: &mut Vec<u8>, n: u32, flags: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A "literal header field without indexing — new name" (RFC 7541 §6.2.2), no Huffman: it
/// leaves the dynamic table alone, so every block can be sent any number of times.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 7, 0, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 7, 0, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// The header block of a GET.
fn request_block(authority: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    hpack_literal(&mut b, ":method", "GET");
    hpack_literal(&mut b, ":scheme", "http");
    hpack_literal(&mut b, ":authority", authority);
    hpack_literal(&mut b, ":path", path);
    for (k, v) in headers {
        hpack_literal(&mut b, k, v);
    }
    b
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Bytes,
}

impl Frame {
    /// The error code of a RST_STREAM.
    fn reset_code(&self) -> u32 {
        u32::from_be_bytes(self.payload[..4].try_into().unwrap())
    }
}

#[derive(Debug, Clone)]
struct GoAway {
    last_stream_id: u32,
    code: u32,
    debug: String,
}

impl GoAway {
    fn of(f: &Frame) -> GoAway {
        let p = &f.payload;
        GoAway {
            last_stream_id: u32::from_be_bytes(p[..4].try_into().unwrap()) & 0x7fff_ffff,
            code: u32::from_be_bytes(p[4..8].try_into().unwrap()),
            debug: String::from_utf8_lossy(&p[8..]).into_owned(),
        }
    }
}

struct FrameReader(BufReader<OwnedReadHalf>);

impl FrameReader {
    /// The next frame; `None` once the server has closed the connection (EOF or reset).
    async fn next(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.0.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = BytesMut::zeroed(len);
        self.0.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload: payload.freeze(),
        })
    }

    /// [`next`](Self::next) within 10 s (a test that waits longer has failed).
    async fn next_within(&mut self, what: &str) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(10), self.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within 10 s while waiting for {what}"))
    }
}

/// A raw HTTP/2 (prior knowledge) connection after the SETTINGS exchange.
struct RawH2 {
    rd: FrameReader,
    wr: OwnedWriteHalf,
    /// The server's SETTINGS parameters, as sent.
    settings: Vec<(u16, u32)>,
    authority: String,
}

impl RawH2 {
    async fn connect(gw: &TestGateway) -> RawH2 {
        let (rd, mut wr) = TcpStream::connect(gw.proxy).await.unwrap().into_split();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        wr.write_all(&hello).await.unwrap();
        let mut rd = FrameReader(BufReader::with_capacity(64 * 1024, rd));
        let settings = loop {
            let f = rd
                .next_within("the server's SETTINGS")
                .await
                .expect("the server answers the preface");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break f
                    .payload
                    .chunks_exact(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
            }
        };
        wr.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
        RawH2 {
            rd,
            wr,
            settings,
            authority: gw.proxy.to_string(),
        }
    }

    fn setting(&self, id: u16) -> Option<u32> {
        self.settings
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, v)| *v)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
    }

    /// Reads frames until `pick` returns `Some` (answering PINGs on the way).
    async fn until<T>(&mut self, what: &str, mut pick: impl FnMut(&Frame) -> Option<T>) -> T {
        loop {
            let f = self
                .rd
                .next_within(what)
                .await
                .unwrap_or_else(|| panic!("connection closed while waiting for {what}"));
            if f.kind == PING && f.flags & ACK == 0 {
                self.send(&frame(PING, ACK, 0, &f.payload)).await;
            }
            if let Some(v) = pick(&f) {
                return v;
            }
        }
    }
}

// === well-behaved HTTP/2 (the h2 crate) ===

async fn h2_client(gw: &TestGateway) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A GET over `send`'s connection; returns the status and the body.
async fn h2_get(
    send: &h2::client::SendRequest<Bytes>,
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Bytes) {
    let what = format!("h2 GET {path}");
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut send = send.clone().ready().await.expect("h2 connection ready");
        let mut req = Request::get(format!("http://{}{path}", gw.proxy));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (resp, _) = send
            .send_request(req.body(()).unwrap(), true)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let resp = resp.await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut out = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap_or_else(|e| panic!("{what}: body: {e}"));
            let _ = body.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        (status, out.freeze())
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: no answer in 30 s"))
}

/// A valid proxied request succeeds over a fresh HTTP/2 connection and over HTTP/1.1.
async fn still_serving(gw: &TestGateway, secret: &str) {
    let auth = format!("Bearer {secret}");
    let send = h2_client(gw).await;
    let (status, body) = h2_get(&send, gw, "/sd/after", &[("authorization", &auth)]).await;
    assert_eq!(status, 200, "fresh h2 connection: {body:?}");
    gw.get("/sd/after", Some(secret)).await.expect(200, None);
}

// === the tests ===

#[tokio::test]
async fn h2_streams_beyond_max_concurrent_streams_are_refused() {
    let (up, gw, secret) = gateway().await;
    let auth = format!("Bearer {secret}");

    // What a conforming client learns from the server's SETTINGS: at most N streams.
    let send = h2_client(&gw).await;
    eventually(
        "the h2 client applies the server's SETTINGS_MAX_CONCURRENT_STREAMS",
        Duration::from_secs(10),
        || {
            let n = send.current_max_send_streams();
            async move { (n == MAX_STREAMS as usize).then_some(()) }
        },
    )
    .await;

    // A client that ignores it: N + 1 requests to an upstream that never answers, at once.
    let mut raw = RawH2::connect(&gw).await;
    assert_eq!(
        raw.setting(SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(MAX_STREAMS),
        "{:?}",
        raw.settings
    );
    // Twice max_header_bytes, so that the pipeline (not h2) answers a block over the limit.
    assert_eq!(
        raw.setting(SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(2 * MAX_HEADER_BYTES as u32),
        "{:?}",
        raw.settings
    );
    let hang = request_block(&raw.authority, "/sd/hang", &[("authorization", &auth)]);
    let mut burst = Vec::new();
    for i in 0..=MAX_STREAMS {
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &hang));
    }
    raw.send(&burst).await;
    let extra = 2 * MAX_STREAMS + 1;
    let refused = raw
        .until("the refusal of the stream over the limit", |f| {
            (f.kind == RST_STREAM || f.kind == HEADERS || f.kind == GOAWAY).then(|| {
                assert!(
                    f.kind == RST_STREAM && f.stream == extra,
                    "only stream {extra} may be refused, got {f:?}"
                );
                f.reset_code()
            })
        })
        .await;
    assert_eq!(refused, REFUSED_STREAM);
    // The N streams within the limit are in flight upstream; the refused one never gets there.
    eventually(
        "the streams within the limit reach the upstream",
        Duration::from_secs(10),
        || {
            let n = up.count();
            async move { (n >= MAX_STREAMS as usize).then_some(()) }
        },
    )
    .await;
    assert_eq!(up.count(), MAX_STREAMS as usize, "{:?}", up.requests());

    // Closing one stream frees one slot on the same connection: the next stream is served.
    raw.send(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()))
        .await;
    let ok = request_block(&raw.authority, "/sd/ok", &[("authorization", &auth)]);
    let next = extra + 2;
    raw.send(&frame(HEADERS, END_STREAM | END_HEADERS, next, &ok))
        .await;
    raw.until("the response on the stream that took the free slot", |f| {
        (f.stream == next && (f.kind == HEADERS || f.kind == RST_STREAM)).then(|| {
            assert_eq!(f.kind, HEADERS, "{f:?}");
        })
    })
    .await;
    assert_eq!(up.count(), MAX_STREAMS as usize + 1);
    assert_eq!(up.last().target, "/ok");

    // The conforming client's connection works within the limit, as does everything else.
    let (status, body) = h2_get(&send, &gw, "/sd/ok", &[("authorization", &auth)]).await;
    assert_eq!(status, 200, "{body:?}");
    still_serving(&gw, &secret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_flood_is_cut_off_with_goaway() {
    let (up, gw, secret) = gateway().await;
    let auth = format!("Bearer {secret}");
    let RawH2 {
        mut rd,
        mut wr,
        authority,
        ..
    } = RawH2::connect(&gw).await;

    // Read everything the server sends while the flood goes out, until it closes.
    let goaway_seen = Arc::new(AtomicBool::new(false));
    let flag = goaway_seen.clone();
    let reader = tokio::spawn(async move {
        let mut goaway = None;
        while let Some(f) = rd.next().await {
            if f.kind == GOAWAY {
                goaway.get_or_insert(GoAway::of(&f));
                flag.store(true, Ordering::Release);
            }
        }
        goaway
    });

    // Each pair opens a valid request and cancels it at once: the request costs the client
    // two small frames, and would cost the gateway a request upstream if it were served.
    const BATCH: u32 = 50;
    const MAX_PAIRS: u32 = 20_000;
    let block = request_block(&authority, "/sd/rapid", &[("authorization", &auth)]);
    let mut pairs = 0u32;
    while pairs < MAX_PAIRS && !goaway_seen.load(Ordering::Acquire) {
        let mut buf = Vec::new();
        for i in pairs..pairs + BATCH {
            let id = 2 * i + 1;
            buf.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
            buf.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        if wr.write_all(&buf).await.is_err() {
            break; // closed by the server
        }
        pairs += BATCH;
        // Let the reader (and, on this runtime, the server) see what came back.
        tokio::task::yield_now().await;
    }
    let goaway = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap_or_else(|_| {
            panic!("the server kept the connection open after {pairs} request+reset pairs")
        })
        .unwrap()
        .unwrap_or_else(|| panic!("the connection closed without GOAWAY after {pairs} pairs"));
    let forwarded = up.count();
    eprintln!(
        "rapid reset: GOAWAY {goaway:?} ({} streams processed); {pairs} pairs written before \
         the client saw it; {forwarded} requests reached the upstream",
        goaway.last_stream_id.div_ceil(2)
    );
    assert_eq!(goaway.code, ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(goaway.debug, "too_many_resets", "{goaway:?}");
    // Cut off after a bounded number of streams: GOAWAY names the last stream the server
    // processed. The bound is the pending-accept reset limit (the GOAWAY comes with the
    // limit + 1st reset) plus whatever streams the server happened to accept before their
    // reset arrived (those do not count towards it); in practice it is exactly the former.
    let streams = goaway.last_stream_id.div_ceil(2) as usize;
    assert!(
        streams > H2_MAX_PENDING_ACCEPT_RESET_STREAMS && streams <= 1000,
        "GOAWAY after {streams} streams"
    );
    // Only a stream the server processed before the GOAWAY can have reached the upstream
    // (in practice none: each was reset before it was accepted).
    assert!(
        forwarded <= streams,
        "{forwarded} cancelled requests reached the upstream"
    );

    still_serving(&gw, &secret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_refused_stream_flood_is_cut_off_after_max_local_error_resets() {
    let (up, gw, secret) = gateway().await;
    let auth = format!("Bearer {secret}");
    let mut raw = RawH2::connect(&gw).await;
    let hang = request_block(&raw.authority, "/sd/hang", &[("authorization", &auth)]);
    // Fill every slot, then keep opening streams: each one costs the server a RST_STREAM
    // (REFUSED_STREAM), a reset it has to send. Those are bounded per connection.
    let mut id = 1u32;
    let mut burst = Vec::new();
    for _ in 0..MAX_STREAMS {
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &hang));
        id += 2;
    }
    raw.send(&burst).await;
    let RawH2 { mut rd, mut wr, .. } = raw;
    let reader = tokio::spawn(async move {
        let mut refused = 0u32;
        let mut goaway = None;
        while let Some(f) = rd.next().await {
            match f.kind {
                RST_STREAM if f.reset_code() == REFUSED_STREAM => refused += 1,
                GOAWAY => {
                    goaway.get_or_insert(GoAway::of(&f));
                }
                _ => {}
            }
        }
        (refused, goaway)
    });
    let mut opened = 0u32;
    for _ in 0..40 {
        let mut buf = Vec::new();
        for _ in 0..100 {
            buf.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &hang));
            id += 2;
        }
        if wr.write_all(&buf).await.is_err() {
            break;
        }
        opened += 100;
        tokio::task::yield_now().await;
    }
    let (refused, goaway) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap_or_else(|_| panic!("the connection stayed open after {opened} refused streams"))
        .unwrap();
    let goaway = goaway.unwrap_or_else(|| panic!("closed without GOAWAY ({refused} refusals)"));
    eprintln!("refused-stream flood: {refused} refusals, then GOAWAY {goaway:?}; {opened} streams written");
    assert_eq!(refused as usize, H2_MAX_LOCAL_ERROR_RESET_STREAMS);
    assert_eq!(goaway.code, ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(goaway.debug, "too_many_internal_resets", "{goaway:?}");
    // Refused streams never reach the upstream (the ones within the limit may, or may be
    // cancelled with the connection first).
    assert!(up.count() <= MAX_STREAMS as usize, "{:?}", up.requests());
    still_serving(&gw, &secret).await;
}

#[tokio::test]
async fn h2_header_blocks_over_the_limit_are_refused() {
    let (up, gw, secret) = gateway().await;
    let auth = format!("Bearer {secret}");

    // One header block over max_header_bytes: the pipeline answers that stream 431 with the
    // SPEC's JSON body, and the connection stays usable.
    let send = h2_client(&gw).await;
    let big = "a".repeat(MAX_HEADER_BYTES);
    let (status, body) = h2_get(
        &send,
        &gw,
        "/sd/big",
        &[("authorization", &auth), ("x-big", &big)],
    )
    .await;
    assert_eq!(status, 431, "{body:?}");
    assert!(
        String::from_utf8_lossy(&body).contains("headers_too_large"),
        "{body:?}"
    );
    // Over twice the limit (SETTINGS_MAX_HEADER_LIST_SIZE), h2 itself refuses the block,
    // with a bare 431 (as hyper does for an HTTP/1.1 head over its read buffer).
    let huge = "a".repeat(2 * MAX_HEADER_BYTES);
    let (status, body) = h2_get(
        &send,
        &gw,
        "/sd/huge",
        &[("authorization", &auth), ("x-big", &huge)],
    )
    .await;
    assert_eq!(status, 431, "{body:?}");
    let (status, body) = h2_get(&send, &gw, "/sd/ok", &[("authorization", &auth)]).await;
    assert_eq!(status, 200, "the same connection still serves: {body:?}");
    assert_eq!(up.count(), 1, "only the valid request reached the upstream");

    // A header block split over CONTINUATION frames is fine, up to h2's bound (derived from
    // the header-list and frame sizes: 5 here and with the default limits)...
    const MAX_CONTINUATIONS: usize = 5;
    let mut piece = Vec::new();
    hpack_literal(&mut piece, "x-piece", "x");
    let continued = |raw: &RawH2, path: &str, frames: usize, end: bool| {
        let block = request_block(&raw.authority, path, &[("authorization", &auth)]);
        let mut out = frame(HEADERS, END_STREAM, 1, &block);
        for _ in 0..frames {
            out.extend(frame(CONTINUATION, 0, 1, &piece));
        }
        if end {
            out.extend(frame(CONTINUATION, END_HEADERS, 1, &piece));
        }
        out
    };
    let mut raw = RawH2::connect(&gw).await;
    raw.send(&continued(&raw, "/sd/pieces", MAX_CONTINUATIONS, true))
        .await;
    raw.until("the response to a split header block", |f| {
        (f.stream == 1 || f.kind == GOAWAY).then(|| assert_eq!(f.kind, HEADERS, "{f:?}"))
    })
    .await;
    assert_eq!(up.last().target, "/pieces");

    // ...one more, and the connection ends (CONTINUATION flood, RUSTSEC-2024-0332). The
    // client sends nothing else, so this GOAWAY answers exactly these frames.
    let mut raw = RawH2::connect(&gw).await;
    raw.send(&continued(&raw, "/sd/flood", MAX_CONTINUATIONS + 1, false))
        .await;
    let goaway = raw
        .until("GOAWAY after too many CONTINUATION frames", |f| {
            (f.kind == GOAWAY).then(|| GoAway::of(f))
        })
        .await;
    assert_eq!(goaway.code, ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(goaway.debug, "too_many_continuations", "{goaway:?}");
    assert!(
        raw.rd.next_within("the close").await.is_none(),
        "closed after the GOAWAY"
    );
    assert_eq!(up.count(), 2, "the flood never reached the upstream");

    still_serving(&gw, &secret).await;
}
