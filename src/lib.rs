//! tokengate: a reverse-proxy authentication gateway for application tokens.
//!
//! The binary (`src/main.rs`) is a thin shell over [`cli`]; everything else lives here so
//! integration tests can start the real gateway in-process ([`app::Gateway::start`]).
//! See ARCHITECTURE.md for the map and the invariants.

pub mod admin;
pub mod app;
pub mod audit;
pub mod body;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod counted;
pub mod dev;
pub mod error;
pub mod lifecycle;
pub mod limiter;
pub mod logsink;
pub mod metrics;
pub mod model;
pub mod net;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod shared;
pub mod state;
pub mod store;
pub mod tls;
pub mod token;
pub mod uri;
pub mod usage;
