//! Path normalisation: an accepted path is clean, stable under a second normalisation, and a
//! route match lies under its prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::proxy::path::normalise;
use tokengate::proxy::route::RouteTable;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(n) = normalise(s) else { return };
    assert!(n.starts_with('/'), "{n:?}");
    assert!(!n.contains("//"), "{n:?}");
    assert!(!n.contains('\\'), "{n:?}");
    assert!(n.split('/').all(|seg| seg != "." && seg != ".."), "{n:?}");
    let lower = n.to_ascii_lowercase();
    for bad in ["%2f", "%5c", "%00", "%2e", "%252e", "%252f", "%255c"] {
        assert!(!lower.contains(bad), "{n:?} contains {bad}");
    }
    assert_eq!(normalise(&n).as_deref(), Ok(n.as_str()));
    let table = RouteTable::new(vec![(None, "/a/".to_string(), 0), (None, "/a/b/".to_string(), 1)]);
    if let Some(m) = table.find(None, &n) {
        assert!(n.starts_with(m.prefix) || n == m.prefix.trim_end_matches('/'));
        assert!(m.rest.starts_with('/'));
    }
});
