//! Access types: the operator's own vocabulary of what a token may reach (SPEC §1, §6
//! `[[access_types]]`).
//!
//! Two forms of one set. A token *holds* access types by name ([`AccessNames`], what the store
//! keeps and the API shows): names outlive the config, so a type removed from it stays on the
//! tokens that hold it and simply grants nothing. The hot path *checks* a bit set ([`Access`]):
//! one bit per configured type, in config order, computed from the names when a token enters
//! the in-memory index; a name no longer configured maps to no bit. Routes name exactly one
//! configured type, so the access check of a request is one AND.
//!
//! [`AccessTypes`] is the configured registry, fixed for the life of the process. Pure code.

use std::fmt;

use crate::token::truncate_for_message;

/// The most access types a config may declare (one bit each in [`Access`]).
pub const MAX_ACCESS_TYPES: usize = 64;
/// The longest access type name.
pub const ACCESS_NAME_MAX: usize = 32;
/// The longest access type label.
pub const ACCESS_LABEL_MAX: usize = 64;

/// The seed's two access types, in their legacy bit order.
const SEED_NAMES: [&str; 2] = ["security-director", "third-party-feeds"];

/// The access a token grants on this instance: one bit per configured type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Access(u64);

impl Access {
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every type in `needed` is held.
    pub fn contains(self, needed: Access) -> bool {
        self.0 & needed.0 == needed.0
    }

    pub fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }
}

/// Whether `s` is a well-formed access type name: 1 to 32 of `a-z 0-9 -`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= ACCESS_NAME_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The access types a token holds, by name: sorted, without duplicates. Names are well formed
/// ([`valid_name`]) but need not be configured (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessNames(Vec<String>);

impl AccessNames {
    /// From any names: sorted, duplicates folded. Callers have checked each name.
    pub fn new(names: impl IntoIterator<Item = String>) -> AccessNames {
        let mut v: Vec<String> = names.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        AccessNames(v)
    }

    /// From the store's comma-joined form; names that are not well formed (only an edited
    /// database has them) are dropped, so they can never grant anything.
    pub fn from_stored(s: &str) -> AccessNames {
        AccessNames::new(s.split(',').filter(|n| valid_name(n)).map(str::to_string))
    }

    /// The store's form: sorted names joined by `,`.
    pub fn stored(&self) -> String {
        self.0.join(",")
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The seed's two as the bits of the store's legacy `access` column (1, 2), still written
    /// so an instance of the previous release sharing the database during a rolling upgrade
    /// reads them; other names have no legacy bit.
    pub fn legacy_bits(&self) -> i16 {
        let bit = |n: &str| i16::from(self.contains(n));
        bit(SEED_NAMES[0]) | (bit(SEED_NAMES[1]) << 1)
    }

    /// Whether `name` is one of the seed's two (the ones with a legacy bit).
    pub fn is_seed(name: &str) -> bool {
        SEED_NAMES.contains(&name)
    }

    /// From the legacy `access` column.
    pub fn from_legacy_bits(bits: i64) -> AccessNames {
        AccessNames::new(
            SEED_NAMES
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, n)| n.to_string()),
        )
    }

    /// The names, sorted (the API's `access`).
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for AccessNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// One configured access type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessType {
    pub name: String,
    pub label: String,
}

/// The configured access types, in config order (SPEC §6), fixed for the life of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTypes {
    types: Vec<AccessType>,
}

/// Why `[[access_types]]` was refused: the index of the entry (if one is at fault) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTypesError {
    pub index: Option<usize>,
    pub field: &'static str,
    pub message: String,
}

impl AccessTypes {
    /// The seed's two, the default when the config declares none.
    pub fn seed() -> AccessTypes {
        AccessTypes {
            types: vec![
                AccessType {
                    name: SEED_NAMES[0].into(),
                    label: "Security Director".into(),
                },
                AccessType {
                    name: SEED_NAMES[1].into(),
                    label: "Third Party feeds".into(),
                },
            ],
        }
    }

    /// Validates a declared list: 1 to 64 entries, names well formed and unique, labels of 1
    /// to 64 printable characters.
    pub fn new(types: Vec<AccessType>) -> Result<AccessTypes, AccessTypesError> {
        let err = |index, field, message: String| AccessTypesError {
            index,
            field,
            message,
        };
        if types.is_empty() {
            return Err(err(
                None,
                "",
                "at least one access type is required (or leave [[access_types]] out for the default two)".into(),
            ));
        }
        if types.len() > MAX_ACCESS_TYPES {
            return Err(err(
                None,
                "",
                format!(
                    "at most {MAX_ACCESS_TYPES} access types, not {}",
                    types.len()
                ),
            ));
        }
        for (i, t) in types.iter().enumerate() {
            if !valid_name(&t.name) {
                return Err(err(
                    Some(i),
                    "name",
                    format!(
                        "{:?} must be 1-{ACCESS_NAME_MAX} characters of a-z, 0-9 and -",
                        truncate_for_message(&t.name)
                    ),
                ));
            }
            if types[..i].iter().any(|o| o.name == t.name) {
                return Err(err(
                    Some(i),
                    "name",
                    format!("{:?} is declared twice", t.name),
                ));
            }
            let len = t.label.chars().count();
            if t.label.trim().is_empty()
                || len > ACCESS_LABEL_MAX
                || t.label.chars().any(char::is_control)
            {
                return Err(err(
                    Some(i),
                    "label",
                    format!(
                        "must be 1-{ACCESS_LABEL_MAX} printable characters (access type {:?})",
                        t.name
                    ),
                ));
            }
        }
        Ok(AccessTypes { types })
    }

    /// In config order.
    pub fn iter(&self) -> impl Iterator<Item = &AccessType> {
        self.types.iter()
    }

    pub fn is_configured(&self, name: &str) -> bool {
        self.bit(name).is_some()
    }

    /// The bit of one configured type.
    pub fn bit(&self, name: &str) -> Option<Access> {
        self.types
            .iter()
            .position(|t| t.name == name)
            .map(|i| Access(1 << i))
    }

    /// What `names` grant here: the bits of the configured ones (others grant nothing).
    pub fn grant(&self, names: &AccessNames) -> Access {
        names
            .iter()
            .filter_map(|n| self.bit(n))
            .fold(Access::default(), Access::union)
    }

    /// The names of the types in `granted`, sorted and comma-joined: the `x-tokengate-access`
    /// header value (what the token grants here, not what it holds).
    pub fn header_of(&self, granted: Access) -> String {
        let mut names: Vec<&str> = self
            .types
            .iter()
            .enumerate()
            .filter(|(i, _)| granted.0 & (1 << i) != 0)
            .map(|(_, t)| t.name.as_str())
            .collect();
        names.sort_unstable();
        names.join(",")
    }

    /// The configured names, comma-separated, for error messages.
    fn listing(&self) -> String {
        self.types
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A requested set (API or CLI) checked against the configured types: non-empty, every
    /// name configured, except names in `kept` (what the token already holds: a PATCH may keep
    /// a type removed from the config, never add one). Errors are messages for a 400.
    pub fn check_request(
        &self,
        requested: Vec<String>,
        kept: Option<&AccessNames>,
    ) -> Result<AccessNames, String> {
        if requested.is_empty() {
            return Err("at least one access type is required".into());
        }
        for n in &requested {
            let held = kept.is_some_and(|k| k.contains(n));
            if !held && !self.is_configured(n) {
                return Err(format!(
                    "unknown access type {:?}: expected one of {}",
                    truncate_for_message(n),
                    self.listing()
                ));
            }
        }
        Ok(AccessNames::new(requested))
    }

    /// The error message for a route naming `name`, which is not configured.
    pub fn unknown_route_type(&self, name: &str) -> String {
        format!(
            "unknown access type {:?}: the configured ones are {}",
            truncate_for_message(name),
            self.listing()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> AccessNames {
        AccessNames::new(v.iter().map(|s| s.to_string()))
    }

    fn types(v: &[&str]) -> AccessTypes {
        AccessTypes::new(
            v.iter()
                .map(|n| AccessType {
                    name: n.to_string(),
                    label: n.to_uppercase(),
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn names_are_sorted_folded_and_round_trip_through_the_store() {
        let n = names(&["b", "a", "b"]);
        assert_eq!(n.as_slice(), ["a", "b"]);
        assert_eq!(n.stored(), "a,b");
        assert_eq!(AccessNames::from_stored("b,a"), n);
        // An edited database cannot smuggle in a malformed name.
        assert_eq!(AccessNames::from_stored("a,,B!,b"), n);
        assert!(AccessNames::from_stored("").is_empty());
    }

    #[test]
    fn legacy_bits_round_trip_for_the_seed_types_only() {
        for bits in 0..4 {
            assert_eq!(
                i64::from(AccessNames::from_legacy_bits(bits).legacy_bits()),
                bits
            );
        }
        assert_eq!(names(&["billing"]).legacy_bits(), 0);
        assert_eq!(
            AccessNames::from_legacy_bits(3).as_slice(),
            ["security-director", "third-party-feeds"]
        );
    }

    #[test]
    fn a_removed_type_stays_held_but_grants_nothing() {
        let before = types(&["reports", "billing"]);
        let after = types(&["billing"]);
        let held = names(&["billing", "reports"]);
        let reports = before.bit("reports").unwrap();
        assert!(before.grant(&held).contains(reports));
        assert_eq!(after.bit("reports"), None);
        assert_eq!(after.grant(&held), after.bit("billing").unwrap());
        assert_eq!(after.header_of(after.grant(&held)), "billing");
        // Sorted by name, whatever the config order.
        assert_eq!(before.header_of(before.grant(&held)), "billing,reports");
        assert!(after.grant(&names(&["reports"])).is_empty());
    }

    #[test]
    fn a_request_may_keep_a_removed_type_but_never_add_one() {
        let t = types(&["billing"]);
        let held = names(&["billing", "reports"]);
        assert_eq!(
            t.check_request(vec!["reports".into()], Some(&held)),
            Ok(names(&["reports"]))
        );
        let e = t.check_request(vec!["reports".into()], None).unwrap_err();
        assert!(e.contains("\"reports\"") && e.contains("billing"), "{e}");
        let e = t
            .check_request(vec!["audit".into()], Some(&held))
            .unwrap_err();
        assert!(e.contains("\"audit\""), "{e}");
        assert!(t.check_request(vec![], None).is_err());
    }

    #[test]
    fn declarations_are_validated() {
        let t = |name: &str, label: &str| AccessType {
            name: name.into(),
            label: label.into(),
        };
        assert!(AccessTypes::new(vec![t("ok-1", "OK")]).is_ok());
        for (list, field) in [
            (vec![t("Bad", "x")], "name"),
            (vec![t("", "x")], "name"),
            (vec![t(&"a".repeat(33), "x")], "name"),
            (vec![t("a", "x"), t("a", "y")], "name"),
            (vec![t("a", " ")], "label"),
            (vec![t("a", "bad\nlabel")], "label"),
            (vec![t("a", &"x".repeat(65))], "label"),
        ] {
            assert_eq!(AccessTypes::new(list).unwrap_err().field, field);
        }
        assert!(AccessTypes::new(vec![]).is_err());
        let many = (0..65).map(|i| t(&format!("t{i}"), "x")).collect();
        assert!(AccessTypes::new(many).is_err());
        let max: Vec<_> = (0..64).map(|i| t(&format!("t{i}"), "x")).collect();
        let max = AccessTypes::new(max).unwrap();
        // The 64th type has the top bit and is distinct from every other.
        let top = max.bit("t63").unwrap();
        assert!(!max.bit("t0").unwrap().contains(top));
    }
}
