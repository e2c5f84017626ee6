//! The subject of a client certificate as an RFC 4514 string, read with `x509-parser`.

use x509_parser::der_parser::oid::Oid;
use x509_parser::oid_registry::{
    OID_X509_COMMON_NAME, OID_X509_COUNTRY_NAME, OID_X509_LOCALITY_NAME,
    OID_X509_ORGANIZATIONAL_UNIT, OID_X509_ORGANIZATION_NAME, OID_X509_STATE_OR_PROVINCE_NAME,
    OID_X509_STREET_ADDRESS,
};
use x509_parser::prelude::{AttributeTypeAndValue, FromDer, X509Certificate};

/// The subject of a DER certificate as an RFC 4514 string (`CN=ops,O=Example`): RDNs last
/// to first, multi-valued ones joined with `+`; `None` if the certificate cannot be read.
/// Control characters are escaped, so the result is safe in a log line.
pub fn subject_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let mut rdns: Vec<String> = cert
        .subject()
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    format!(
                        "{}={}",
                        attribute_name(atv.attr_type()),
                        attribute_value(atv)
                    )
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    Some(rdns.join(","))
}

/// The RFC 4514 short name of an attribute type, or its dotted OID.
fn attribute_name(oid: &Oid<'_>) -> String {
    let dc = Oid::from(&[0, 9, 2342, 19200300, 100, 1, 25]).ok();
    let uid = Oid::from(&[0, 9, 2342, 19200300, 100, 1, 1]).ok();
    let short = [
        (&OID_X509_COMMON_NAME, "CN"),
        (&OID_X509_COUNTRY_NAME, "C"),
        (&OID_X509_LOCALITY_NAME, "L"),
        (&OID_X509_STATE_OR_PROVINCE_NAME, "ST"),
        (&OID_X509_STREET_ADDRESS, "STREET"),
        (&OID_X509_ORGANIZATION_NAME, "O"),
        (&OID_X509_ORGANIZATIONAL_UNIT, "OU"),
    ]
    .into_iter()
    .find(|(known, _)| *known == oid)
    .map(|(_, s)| s)
    .or_else(|| (dc.as_ref() == Some(oid)).then_some("DC"))
    .or_else(|| (uid.as_ref() == Some(oid)).then_some("UID"));
    match short {
        Some(s) => s.to_string(),
        None => oid.to_id_string(),
    }
}

/// A string value escaped per RFC 4514 (and control characters as `\XX`); any other type as
/// `#` and the hex of its DER encoding.
fn attribute_value(atv: &AttributeTypeAndValue<'_>) -> String {
    match atv.as_str() {
        Ok(text) => escape(text),
        Err(_) => {
            let value = atv.attr_value();
            let mut der = Vec::new();
            let _ = x509_parser::der_parser::asn1_rs::ToDer::write_der(value, &mut der);
            std::iter::once("#".to_string())
                .chain(der.iter().map(|b| format!("{b:02x}")))
                .collect()
        }
    }
}

fn escape(text: &str) -> String {
    let last = text.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert_with(dn: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_in_rfc4514_order_with_escapes() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "DE");
        dn.push(DnType::OrganizationName, "Example, Inc.");
        dn.push(DnType::CommonName, "ops-admin");
        let s = subject_of(&cert_with(dn)).unwrap();
        assert_eq!(s, "CN=ops-admin,O=Example\\, Inc.,C=DE");
    }

    #[test]
    fn subject_escapes_control_characters_and_names_unknown_oids() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "evil\nline");
        dn.push(
            DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            "a@b.example",
        );
        let s = subject_of(&cert_with(dn)).unwrap();
        assert_eq!(s, "1.2.840.113549.1.9.1=a@b.example,CN=evil\\0Aline");
        assert!(!s.contains('\n'));
    }

    #[test]
    fn subject_of_garbage_is_none() {
        assert_eq!(subject_of(b""), None);
        assert_eq!(subject_of(&[0x30, 0x82, 0xff]), None);
        assert_eq!(subject_of(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }
}
