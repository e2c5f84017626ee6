//! Secret decoding: only a `tg_` + 30 base62 + matching CRC32 (6 base62) string is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::token::{parse_bearer, SECRET_LEN};

fuzz_target!(|data: &[u8]| {
    if parse_bearer(data).is_ok() {
        assert_eq!(data.len(), SECRET_LEN);
        assert!(data.starts_with(b"tg_"));
        assert!(data[3..].iter().all(|b| b.is_ascii_alphanumeric()));
        let crc = crc_of(&data[3..33]);
        let mut v: u64 = 0;
        for &b in &data[33..] {
            v = v * 62 + digit(b);
        }
        assert_eq!(v, u64::from(crc));
    }
});

fn digit(b: u8) -> u64 {
    match b {
        b'0'..=b'9' => u64::from(b - b'0'),
        b'A'..=b'Z' => u64::from(b - b'A') + 10,
        _ => u64::from(b - b'a') + 36,
    }
}

/// CRC-32 (IEEE), bit by bit: an independent check of the crate's table-driven one.
fn crc_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
