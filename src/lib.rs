//! tokengate: a reverse-proxy authentication gateway for application tokens.
//!
//! The binary (`src/main.rs`) is a thin shell over [`cli`]; everything else lives here so
//! integration tests can start the real gateway in-process ([`app::Gateway::start`]).
//! See ARCHITECTURE.md for the map and the invariants.

#![warn(unreachable_pub)]

pub mod access;
pub(crate) mod admin;
pub mod app;
pub(crate) mod audit;
pub(crate) mod body;
pub mod cli;
pub(crate) mod client;
pub mod clock;
pub mod config;
pub(crate) mod counted;
pub(crate) mod dev;
pub(crate) mod error;
pub mod events;
pub mod lifecycle;
pub(crate) mod limiter;
pub mod logsink;
pub mod metrics;
pub mod model;
pub(crate) mod net;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub(crate) mod revoke;
pub mod server;
pub(crate) mod shared;
pub mod state;
pub mod store;
pub mod tls;
pub mod token;
pub(crate) mod uri;
pub mod usage;
