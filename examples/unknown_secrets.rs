//! Bench-only helper: prints N well-formed secrets (right prefix, length and checksum) that no
//! store holds, one per line, for the invalid-token flood of `benches/scale_load.sh`: each one
//! passes the format check and costs the gateway a hash and an index miss, the refusal path's
//! most expensive case.
//!
//!     cargo run --release --example unknown_secrets -- 100000 > unknown.txt

use std::io::Write;

use tokengate::token::Secret;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..n {
        writeln!(out, "{}", Secret::generate().expose())?;
    }
    out.flush()?;
    Ok(())
}
