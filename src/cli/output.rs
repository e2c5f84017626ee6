//! What the CLI prints: tables, token views, JSON, and the escaping that keeps data from the
//! API (descriptions, audit details) from driving the operator's terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;

/// Whether `c` is escaped on the terminal: every C0 and C1 control and DEL (Unicode `Cc`:
/// escape sequences, carriage returns, NULs, the 8-bit CSI U+009B), the line and paragraph
/// separators, and the bidirectional embeddings, overrides and isolates, which reorder what
/// follows them on the line. Everything else, ordinary Unicode included, prints as it is.
pub(super) fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `s` as the CLI prints it: each character of [`needs_escape`] as a Rust-style `\u{..}`
/// escape (ESC is `\u{1b}`, CR `\u{d}`, NUL `\u{0}`), so data from the API (descriptions,
/// audit actors and details) can never drive the operator's terminal. The web console needs
/// no such step: it puts API data on the page as text only (`--json` output: [`json_text`]).
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Field `k` of `v` as a terminal-safe cell: strings through [`printable`], `-` for null or
/// missing, arrays of strings comma-joined.
pub(super) fn s(v: &Value, k: &str) -> String {
    let raw = match v.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    };
    printable(&raw).into_owned()
}

/// Writes `text` to stdout. A reader that went away (`tokengate token list | head -1`) ends
/// the command quietly with status 0, as other Unix tools do, instead of a panic.
pub(super) fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            crate::logsink::STDERR.flush();
            std::process::exit(0);
        }
    }
}

pub(super) fn print_json(v: &Value) {
    out(&format!("{}\n", json_text(v)));
}

/// `v` as pretty JSON in which no character of [`needs_escape`] is raw: serde escapes the C0
/// controls; DEL, C1 and the bidi controls (which can only be inside strings, as JSON's own
/// syntax is ASCII) become `\uXXXX` escapes, so the text still parses to the same value.
pub(super) fn json_text(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    if !text.chars().any(|c| c != '\n' && needs_escape(c)) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c != '\n' && needs_escape(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) fn print_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    out(&table(header, rows));
}

/// The array `v[key]` of an API answer as a table, one row per element.
pub(super) fn print_rows(
    v: &Value,
    key: &str,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) {
    let rows = v
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    print_table(header, rows.iter().map(row));
}

/// An API answer: its JSON with `--json`, else the array `v[key]` as a table.
pub(super) fn print_answer(
    json: bool,
    v: &Value,
    key: &str,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) {
    if json {
        print_json(v);
    } else {
        print_rows(v, key, header, row);
    }
}

/// A table: the header, then one line per row; every column but the last padded to its
/// widest cell. Cells are already [`printable`].
pub(super) fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
    text
}

pub(super) const ACCESS_TYPE_HEADER: [&str; 2] = ["NAME", "LABEL"];

pub(super) fn access_type_row(t: &Value) -> Vec<String> {
    vec![s(t, "name"), s(t, "label")]
}

pub(super) const DELIVERY_HEADER: [&str; 8] = [
    "CREATED",
    "TYPE",
    "ENDPOINT",
    "STATUS",
    "ATTEMPTS",
    "LAST STATUS",
    "NEXT ATTEMPT",
    "ID",
];

pub(super) fn delivery_row(d: &Value) -> Vec<String> {
    vec![
        s(d, "created_at"),
        s(d, "type"),
        s(d, "url"),
        s(d, "status"),
        s(d, "attempts"),
        s(d, "response_status"),
        s(d, "next_attempt_at"),
        s(d, "id"),
    ]
}

pub(super) const AUDIT_HEADER: [&str; 6] =
    ["AT", "ACTOR", "SOURCE IP", "ACTION", "TOKEN", "DETAILS"];

pub(super) fn audit_row(e: &Value) -> Vec<String> {
    vec![
        s(e, "at"),
        s(e, "actor"),
        s(e, "source_ip"),
        s(e, "action"),
        s(e, "token"),
        // JSON text: its escapes cover C0 controls but leave DEL and C1 raw.
        e.get("details")
            .map(|d| printable(&d.to_string()).into_owned())
            .unwrap_or_default(),
    ]
}

pub(super) fn token_row(t: &Value) -> Vec<String> {
    let status = match (
        s(t, "status").as_str(),
        t.get("inactive_reason").and_then(Value::as_str),
    ) {
        ("inactive", Some(r)) => format!("inactive ({})", printable(r)),
        (st, _) => st.to_string(),
    };
    vec![
        s(t, "name"),
        status,
        s(t, "access"),
        s(t, "last_used_at"),
        s(t, "inactive_at"),
        s(t, "description"),
    ]
}

pub(super) const TOKEN_HEADER: [&str; 6] = [
    "NAME",
    "STATUS",
    "ACCESS",
    "LAST USED",
    "LAPSES AT",
    "DESCRIPTION",
];

pub(super) fn print_token(t: &Value) {
    out(&token_text(t));
}

/// One token as `key: value` lines.
pub(super) fn token_text(t: &Value) -> String {
    let mut out = String::new();
    for k in [
        "name",
        "id",
        "description",
        "access",
        "status",
        "inactive_reason",
        "created_at",
        "activated_at",
        "deactivated_at",
        "last_used_at",
        "expires_at",
        "previous_secret_expires_at",
        "inactive_at",
        "delete_at",
    ] {
        let _ = writeln!(out, "{:<16} {}", format!("{k}:"), s(t, k));
    }
    out
}

/// A created or regenerated token and its secret; with `secret_only`, the secret alone.
pub(super) fn print_secret(t: &Value, secret_only: bool) {
    if secret_only {
        out(&format!("{}\n", s(t, "token")));
        return;
    }
    print_token(t);
    out(&format!(
        "\nsecret:          {}\n(store it now: it cannot be shown again)\n",
        s(t, "token")
    ));
}

/// A usage answer (`GET /v1/tokens/{name}/usage`) for a terminal: totals, refusals by reason,
/// a sparkline of admitted requests (and one of refusals when there are any) and the span.
pub(super) fn usage_text(name: &str, v: &Value) -> String {
    let empty = Vec::new();
    let buckets = v["buckets"].as_array().unwrap_or(&empty);
    let n = |b: &Value, k: &str| b[k].as_u64().unwrap_or(0);
    let refused_of = |b: &Value| {
        b["refused"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>())
    };
    let requests: Vec<u64> = buckets.iter().map(|b| n(b, "requests")).collect();
    let refused: Vec<u64> = buckets.iter().map(refused_of).collect();
    let mut by_reason: Vec<(String, u64)> = Vec::new();
    for b in buckets {
        for (k, c) in b["refused"].as_object().into_iter().flatten() {
            let c = c.as_u64().unwrap_or(0);
            match by_reason.iter_mut().find(|(r, _)| r == k) {
                Some((_, t)) => *t += c,
                None => by_reason.push((k.clone(), c)),
            }
        }
    }
    by_reason.retain(|(_, c)| *c > 0);
    let step = printable(v["step"].as_str().unwrap_or("?")).into_owned();
    let span = match (buckets.first(), buckets.last()) {
        (Some(a), Some(b)) => format!("{} .. {}", s(a, "start"), s(b, "start")),
        _ => "-".into(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} buckets of {step}, {span} (UTC)",
        printable(name),
        buckets.len()
    );
    let _ = writeln!(
        out,
        "requests  {:>10}  {}",
        requests.iter().sum::<u64>(),
        sparkline(&requests)
    );
    let total_refused: u64 = refused.iter().sum();
    let _ = writeln!(
        out,
        "refused   {total_refused:>10}  {}",
        sparkline(&refused)
    );
    for (reason, c) in by_reason {
        let _ = writeln!(out, "  {:<16}{c:>10}", printable(&reason));
    }
    out
}

/// One character per value, `▁` (none) to `█` (the largest).
pub(super) fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| match v {
            0 => BARS[0],
            // 1..=max onto ▂..█ (rounded up: any use shows above the floor).
            v => {
                BARS[1 + usize::try_from((v * 7 - 1) / max.max(1))
                    .unwrap_or(6)
                    .min(6)]
            }
        })
        .collect()
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_the_largest_value() {
        assert_eq!(sparkline(&[0, 1, 7, 14]), "▁▂▅█");
        assert_eq!(sparkline(&[0, 0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn usage_text_shows_totals_and_reasons() {
        let v = serde_json::json!({"step": "1h", "buckets": [
            {"start": "2027-01-01T10:00:00Z", "requests": 2, "refused": {"rate_limited": 1, "no_route": 0}},
            {"start": "2027-01-01T11:00:00Z", "requests": 0, "refused": {"rate_limited": 2, "no_route": 0}},
        ]});
        let t = usage_text("feed-a", &v);
        assert!(
            t.starts_with("feed-a: 2 buckets of 1h, 2027-01-01T10:00:00Z .. 2027-01-01T11:00:00Z"),
            "{t}"
        );
        assert!(t.contains("requests           2  █▁"), "{t}");
        assert!(t.contains("refused            3  ▅█"), "{t}");
        assert!(t.contains("  rate_limited             3"), "{t}");
        assert!(!t.contains("no_route"), "{t}");
    }
}
