//! Request targets in their canonical forms: the path (`path`: percent-decoding, dot
//! segments, refusals) and the authority (`host`). Pure functions shared by the proxy, which
//! routes by them, and the config, which validates route prefixes and hosts with them.

pub(crate) mod host;
pub mod path;
