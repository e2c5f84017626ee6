//! How the model's own types travel through SQL, for both drivers: a token id as its
//! canonical text, an audit action as its name. Decoding refuses anything the gateway does not
//! write (a non-canonical id, an unknown action) as a corrupt row.

use std::error::Error;

use bytes::BytesMut;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use tokio_postgres::types::{self as pg, IsNull, Type};

use crate::model::{AuditAction, TokenId};

type BoxError = Box<dyn Error + Sync + Send>;

fn bad(what: &str, value: &str) -> BoxError {
    format!("not a {what} this gateway writes: {value:?}").into()
}

// === SQLite ===

impl ToSql for TokenId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for TokenId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        TokenId::parse_stored(s).ok_or_else(|| FromSqlError::Other(bad("token id", s)))
    }
}

impl ToSql for AuditAction {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for AuditAction {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        AuditAction::from_db(s).ok_or_else(|| FromSqlError::Other(bad("audit action", s)))
    }
}

// === PostgreSQL ===

impl pg::ToSql for TokenId {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        pg::ToSql::to_sql(&self.to_string(), ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <String as pg::ToSql>::accepts(ty)
    }

    pg::to_sql_checked!();
}

impl<'a> pg::FromSql<'a> for TokenId {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<TokenId, BoxError> {
        let s = <&str as pg::FromSql>::from_sql(ty, raw)?;
        TokenId::parse_stored(s).ok_or_else(|| bad("token id", s))
    }

    fn accepts(ty: &Type) -> bool {
        <&str as pg::FromSql>::accepts(ty)
    }
}

impl pg::ToSql for AuditAction {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        pg::ToSql::to_sql(&self.as_str(), ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as pg::ToSql>::accepts(ty)
    }

    pg::to_sql_checked!();
}

impl<'a> pg::FromSql<'a> for AuditAction {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<AuditAction, BoxError> {
        let s = <&str as pg::FromSql>::from_sql(ty, raw)?;
        AuditAction::from_db(s).ok_or_else(|| bad("audit action", s))
    }

    fn accepts(ty: &Type) -> bool {
        <&str as pg::FromSql>::accepts(ty)
    }
}
