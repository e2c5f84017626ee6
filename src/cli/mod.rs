//! The command line (SPEC §5): `serve` (default), `dev`, and the admin subcommands, which are
//! clients of the admin API (they never open the store).
//!
//! Exit codes: 0 success; 1 with one line on stderr when the API refuses or cannot be
//! reached (or start-up fails); 2 on a usage error (clap's own exit code).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use http::Method;
use serde_json::{json, Value};

mod output;

pub use output::printable;
use output::*;

use crate::admin::key::read_key_file;
use crate::app::{Gateway, StartOptions};
use crate::client::{AdminClient, ClientTls};
use crate::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Debug, Parser)]
#[command(
    name = "tokengate",
    version,
    about = "Reverse-proxy authentication gateway for application tokens",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Config file (default: config/tokengate.toml if present, else built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The admin-client flags given before the subcommand.
    #[command(flatten)]
    pub client: TopClientFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The environment and exit codes, under every `--help` of the top level.
const AFTER_HELP: &str = "\
Environment:
  TOKENGATE_ADMIN_KEY   the admin key for the admin subcommands (and for serve: else admin.key_file)
  TOKENGATE_ADMIN_URL   the admin API's base URL (as --admin-url)
  TOKENGATE_<SECTION>__<KEY>  a config key, e.g. TOKENGATE_USAGE__FLUSH_INTERVAL=5s
  RUST_LOG              log level of serve and dev (default info)

Exit status:
  0  success
  1  the API refused, could not be reached, or the gateway could not start (one line on stderr)
  2  a usage error: an unknown subcommand, flag or value";

/// The flags of an admin API client, twice: at the top level (before the subcommand, not
/// passed down, so `serve` and `dev` do not show them) and on each admin subcommand group
/// (global within it, so they may follow the subcommand too).
macro_rules! client_flags {
    ($(#[$meta:meta])* $name:ident, global = $global:literal) => {
        $(#[$meta])*
        #[derive(Debug, Default, Args)]
        pub struct $name {
            /// Admin API base URL (default: env TOKENGATE_ADMIN_URL, else from the config's
            /// admin.listen, else http://127.0.0.1:9090).
            #[arg(long, global = $global, value_name = "URL")]
            pub admin_url: Option<String>,
            /// Print the API's JSON instead of a table.
            #[arg(long, global = $global)]
            pub json: bool,
            /// CA certificate for a TLS admin listener.
            #[arg(long, global = $global, value_name = "FILE")]
            pub ca_file: Option<PathBuf>,
            /// Client certificate for a TLS admin listener.
            #[arg(long, global = $global, value_name = "FILE")]
            pub client_cert: Option<PathBuf>,
            /// Client key for a TLS admin listener.
            #[arg(long, global = $global, value_name = "FILE")]
            pub client_key: Option<PathBuf>,
        }
    };
}

client_flags!(
    /// Client flags before the subcommand (`tokengate --json token list`).
    TopClientFlags,
    global = false
);
client_flags!(
    /// Client flags of an admin subcommand group (`tokengate token list --json`).
    ClientFlags,
    global = true
);

/// What an admin subcommand runs with: the config file and the client flags, from wherever
/// on the command line they were given.
#[derive(Debug, Default)]
pub struct Global {
    pub config: Option<PathBuf>,
    pub admin_url: Option<String>,
    pub json: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Global {
    fn new(config: Option<PathBuf>, top: TopClientFlags, sub: ClientFlags) -> Global {
        Global {
            config,
            // A flag after the subcommand, one before it (clap hands the later of the two to
            // both), then the environment.
            admin_url: sub.admin_url.or(top.admin_url).or_else(|| {
                std::env::var("TOKENGATE_ADMIN_URL")
                    .ok()
                    .filter(|u| !u.trim().is_empty())
            }),
            json: sub.json || top.json,
            ca_file: sub.ca_file.or(top.ca_file),
            client_cert: sub.client_cert.or(top.client_cert),
            client_key: sub.client_key.or(top.client_key),
        }
    }
}

/// `tokengate token ...`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientFlags,
    #[command(subcommand)]
    pub cmd: TokenCmd,
}

/// `tokengate ip ...`.
#[derive(Debug, Args)]
pub struct IpArgs {
    #[command(flatten)]
    pub client: ClientFlags,
    #[command(subcommand)]
    pub cmd: IpCmd,
}

/// `tokengate webhook ...`.
#[derive(Debug, Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub client: ClientFlags,
    #[command(subcommand)]
    pub cmd: WebhookCmd,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Zero-setup demo: gateway, two echo upstreams and a demo token, state in a temp dir.
    Dev,
    /// Manage application tokens.
    Token(TokenArgs),
    /// See and block the client IPs of a token.
    Ip(IpArgs),
    /// List the configured access types (name and label).
    AccessTypes {
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Show the audit log (all tokens, or one).
    Audit {
        /// Only this token's entries (its name).
        token: Option<String>,
        /// At most this many entries (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Webhook deliveries: what was sent to each endpoint, and how it went.
    Webhook(WebhookArgs),
}

#[derive(Debug, Subcommand)]
pub enum WebhookCmd {
    /// List deliveries, newest first: event type, endpoint, status, attempts.
    Deliveries {
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; prints its secret once.
    Create {
        /// A unique name (compared ignoring case).
        name: String,
        /// Configured access types, comma-separated (see `tokengate access-types`).
        #[arg(long, value_delimiter = ',', required = true)]
        access: Vec<String>,
        /// What the token is for, shown to administrators.
        #[arg(long)]
        description: Option<String>,
        /// Expire this long after creation (e.g. 90d, 12h).
        #[arg(long, conflicts_with = "expires_at")]
        expires_in: Option<String>,
        /// Expire at this RFC 3339 UTC time (e.g. 2027-01-31T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
        /// At most N requests per DURATION, in bursts of up to N (e.g. 100/1m).
        #[arg(long, value_name = "N/DURATION")]
        rate_limit: Option<String>,
        /// Only these client IPs and CIDRs may use it, comma-separated.
        #[arg(long, value_name = "IP_OR_CIDR,...", value_delimiter = ',')]
        allowed_ips: Option<Vec<String>>,
        /// Print only the secret, on one line (for scripts: TOKEN=$(tokengate token create ...)).
        #[arg(long)]
        secret_only: bool,
    },
    /// List tokens.
    List {
        /// Only active or inactive tokens.
        #[arg(long, value_parser = ["active", "inactive"])]
        status: Option<String>,
        /// Only names containing this (ignoring case).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Show one token.
    Show {
        /// The token's name (ignoring case).
        name: String,
    },
    /// A token's use over time: totals and a sparkline (hourly for one day, else daily).
    Usage {
        /// The token's name (ignoring case).
        name: String,
        /// How many days, today included: 1 = the last 24 hours by hour; more = by UTC day.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2000))]
        days: u32,
        /// Only this client IP's counts.
        #[arg(long)]
        ip: Option<String>,
    },
    /// Change a token's description, access, expiry, rate limit or allow-list.
    Update {
        /// The token's name (ignoring case).
        name: String,
        /// A new description.
        #[arg(long)]
        description: Option<String>,
        /// Clear the description.
        #[arg(long, conflicts_with = "description")]
        clear_description: bool,
        /// New access types, comma-separated (they replace the current ones).
        #[arg(long, value_delimiter = ',')]
        access: Option<Vec<String>>,
        /// A new expiry: an RFC 3339 UTC time, or `never`.
        #[arg(long)]
        expires_at: Option<String>,
        /// A new rate limit (e.g. 100/1m), or `none`.
        #[arg(long, value_name = "N/DURATION|none")]
        rate_limit: Option<String>,
        /// A new allow-list (comma-separated IPs and CIDRs), or `any`.
        #[arg(long, value_name = "LIST|any")]
        allowed_ips: Option<String>,
    },
    /// Delete a token for good.
    Delete {
        /// The token's name (ignoring case).
        name: String,
        /// Do not ask for confirmation (asked only when stdin is a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Activate tokens (all or nothing).
    Activate {
        /// Token names (all are changed, or none).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Deactivate tokens (all or nothing).
    Deactivate {
        /// Token names (all are changed, or none).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Replace a token's secret; the old one stops working at once. Prints the new secret once.
    Regenerate {
        /// The token's name (ignoring case).
        name: String,
        /// Keep the old secret working this long (e.g. 1h, up to lifecycle.max_rotation_grace).
        #[arg(long)]
        grace: Option<String>,
        /// Print only the new secret, on one line.
        #[arg(long)]
        secret_only: bool,
        /// Do not ask for confirmation (asked only when stdin is a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Report leaked secrets (read from stdin, one a line) to the proxy listener's public
    /// revocation endpoint: each one that is a token's secret deactivates it. Needs no admin key.
    Revoke {
        /// The proxy listener (default: from the config's proxy.listen).
        #[arg(long, value_name = "URL")]
        proxy_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IpCmd {
    /// The IPs that used a token, with their block state.
    List {
        /// The token's name (ignoring case).
        token: String,
    },
    /// Block IPs or CIDRs for a token.
    Block {
        /// The token's name (ignoring case).
        token: String,
        /// IPs or CIDRs, e.g. 192.0.2.7 or 10.0.0.0/8.
        #[arg(required = true, value_name = "IP_OR_CIDR")]
        entries: Vec<String>,
    },
    /// Remove block entries.
    Unblock {
        /// The token's name (ignoring case).
        token: String,
        /// IPs or CIDRs, e.g. 192.0.2.7 or 10.0.0.0/8.
        #[arg(required = true, value_name = "IP_OR_CIDR")]
        entries: Vec<String>,
    },
}

/// A command line that is wrong in a way clap cannot see (exit code 2, like clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The process exit code for an error from [`run`]: 2 for a usage error, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    let usage = e.downcast_ref::<UsageError>().is_some()
        || matches!(
            e.downcast_ref::<crate::client::ClientError>(),
            Some(crate::client::ClientError::Usage(_))
        );
    if usage {
        2
    } else {
        1
    }
}

/// Logs go to stderr (stdout is for command output and `dev`'s banner); `RUST_LOG` sets the
/// level, `info` by default.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // stderr, with the access log batched (see `logsink`).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::logsink::MakeSinkWriter(&crate::logsink::STDERR))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    crate::logsink::flush_on_panic();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let (config, top) = (cli.config, cli.client);
    let global = |sub| Global::new(config.clone(), top, sub);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config.as_deref()).await,
        Command::Dev => crate::dev::run().await,
        Command::Token(TokenArgs { client, cmd }) => match cmd {
            // Public: needs no admin key, so no admin client.
            TokenCmd::Revoke { proxy_url } => revoke_cmd(&global(client), proxy_url).await,
            cmd => {
                let g = global(client);
                // --json may stand before the subcommand, out of clap's sight of --secret-only.
                let secret_only = matches!(
                    cmd,
                    TokenCmd::Create {
                        secret_only: true,
                        ..
                    } | TokenCmd::Regenerate {
                        secret_only: true,
                        ..
                    }
                );
                if secret_only && g.json {
                    return Err(UsageError(
                        "--secret-only and --json cannot be used together".into(),
                    )
                    .into());
                }
                token_cmd(&g, cmd).await
            }
        },
        Command::Ip(IpArgs { client, cmd }) => ip_cmd(&global(client), cmd).await,
        Command::AccessTypes { client } => {
            let g = global(client);
            let c = admin_client(&g)?;
            let v = c.call(Method::GET, "/v1/access-types", None).await?;
            print_answer(
                g.json,
                &v,
                "access_types",
                &ACCESS_TYPE_HEADER,
                access_type_row,
            );
            Ok(())
        }
        Command::Audit {
            token,
            limit,
            client,
        } => {
            let g = global(client);
            let c = admin_client(&g)?;
            let mut path = format!("/v1/audit?limit={limit}");
            if let Some(t) = token {
                path.push_str(&format!("&token={}", enc(&t)));
            }
            let v = c.call(Method::GET, &path, None).await?;
            print_answer(g.json, &v, "entries", &AUDIT_HEADER, audit_row);
            Ok(())
        }
        Command::Webhook(WebhookArgs {
            client,
            cmd: WebhookCmd::Deliveries { limit },
        }) => {
            let g = global(client);
            let c = admin_client(&g)?;
            let v = c
                .call(
                    Method::GET,
                    &format!("/v1/webhooks/deliveries?limit={limit}"),
                    None,
                )
                .await?;
            print_answer(g.json, &v, "deliveries", &DELIVERY_HEADER, delivery_row);
            Ok(())
        }
    }
}

/// On a terminal (stdin), asks `question` and goes on only on `y` or `yes`; elsewhere, or
/// with `--yes`, goes on at once (scripts are not asked).
fn confirm(yes: bool, question: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes || !std::io::stdin().is_terminal() {
        return Ok(());
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{} [y/N] ", printable(question));
    let _ = err.flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("not confirmed; nothing was changed (--yes skips the question)")
    }
}

/// `N/DURATION` (e.g. `100/1m`) as the API's `{"requests", "per"}`; a usage error otherwise.
fn rate_limit_json(s: &str) -> anyhow::Result<Value> {
    let limit = crate::ratelimit::RateLimit::parse_cli(s)
        .map_err(|e| UsageError(format!("--rate-limit {s:?}: {e}")))?;
    Ok(serde_json::to_value(limit)?)
}

async fn serve(config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_path, std::env::vars())?;
    let gw = Gateway::start(config, StartOptions::default()).await?;
    crate::app::wait_for_signal().await;
    tracing::info!("shutting down: draining connections and flushing usage");
    gw.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

fn admin_client(g: &Global) -> anyhow::Result<AdminClient> {
    // The config is read only for admin.listen and admin.key_file; a missing default file is fine.
    let config = match &g.config {
        Some(p) => Some(Config::load(Some(p), std::env::vars())?),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Some(Config::load(None, std::env::vars())?)
        }
        None => None,
    };
    let url = match (&g.admin_url, &config) {
        (Some(u), _) => u.clone(),
        (None, Some(c)) => local_url(c.admin.listen, c.admin.tls.is_some()),
        (None, None) => "http://127.0.0.1:9090".to_string(),
    };
    let key = match std::env::var("TOKENGATE_ADMIN_KEY") {
        Ok(k) => k,
        Err(_) => {
            let file = config
                .as_ref()
                .map(|c| c.admin.key_file.clone())
                .unwrap_or_else(|| Config::defaults().admin.key_file);
            read_key_file(&file)?.with_context(|| {
                format!(
                    "no admin key: set TOKENGATE_ADMIN_KEY or create {}",
                    file.display()
                )
            })?
        }
    };
    let tls = ClientTls {
        ca_file: g.ca_file.clone(),
        client_cert: g.client_cert.clone(),
        client_key: g.client_key.clone(),
    };
    Ok(AdminClient::with_tls(&url, &key, &tls)?)
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The proxy listener's base URL: `--proxy-url`, else the config's `proxy.listen`.
fn proxy_url(g: &Global, explicit: Option<String>) -> anyhow::Result<String> {
    if let Some(u) = explicit {
        return Ok(u);
    }
    let config = match &g.config {
        Some(p) => Config::load(Some(p), std::env::vars())?,
        None => Config::load(None, std::env::vars())?,
    };
    Ok(local_url(config.proxy.listen, config.proxy.tls.is_some()))
}

/// The URL this machine reaches a listener at: an unspecified bind address (`0.0.0.0`) as
/// loopback, `https` when the listener has TLS.
fn local_url(mut addr: std::net::SocketAddr, tls: bool) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

/// `token revoke`: the secrets on stdin, 100 a request, to `POST /_tokengate/revoke`. The
/// endpoint answers 202 whatever matched, so this says how many were reported, not revoked.
async fn revoke_cmd(g: &Global, proxy: Option<String>) -> anyhow::Result<()> {
    use std::io::BufRead;
    let (mut secrets, mut skipped) = (Vec::new(), 0usize);
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading secrets from stdin")?;
        let s = line.trim();
        if s.is_empty() || s.starts_with('#') {
            continue;
        }
        // Only well-formed secrets (prefix, alphabet, checksum) are sent: a stray line must
        // not make a request too large, nor go over the wire for nothing.
        if crate::token::parse_bearer(s.as_bytes()).is_ok() {
            secrets.push(s.to_string());
        } else {
            skipped += 1;
        }
    }
    if secrets.is_empty() {
        return Err(UsageError(format!(
            "no tokengate secrets on stdin (one a line; {skipped} line(s) were not one)"
        ))
        .into());
    }
    let base = proxy_url(g, proxy)?;
    let tls = ClientTls {
        ca_file: g.ca_file.clone(),
        client_cert: None,
        client_key: None,
    };
    // No key: the endpoint is public, and the admin key never goes to the proxy listener.
    let c = AdminClient::with_tls(&base, "", &tls)?;
    let mut reported = 0;
    for chunk in secrets.chunks(100) {
        c.call(
            Method::POST,
            "/_tokengate/revoke",
            Some(json!({ "tokens": chunk })),
        )
        .await
        .with_context(|| format!("{reported} of {} secret(s) were reported", secrets.len()))?;
        reported += chunk.len();
    }
    if g.json {
        print_json(&json!({ "reported": reported, "skipped": skipped }));
    } else {
        out(&format!(
            "reported {reported} secret(s); each that was a token's is revoked (the endpoint does not say which); \
             {skipped} line(s) were not tokengate secrets\n"
        ));
    }
    Ok(())
}

async fn token_cmd(g: &Global, cmd: TokenCmd) -> anyhow::Result<()> {
    let c = admin_client(g)?;
    let v = match cmd {
        // Dispatched before an admin client is made (`run`); correct here too.
        TokenCmd::Revoke { proxy_url } => return revoke_cmd(g, proxy_url).await,
        TokenCmd::Create {
            name,
            access,
            description,
            expires_in,
            expires_at,
            rate_limit,
            allowed_ips,
            secret_only,
        } => {
            let mut body = json!({"name": name, "access": access});
            if let Some(r) = rate_limit {
                body["rate_limit"] = rate_limit_json(&r)?;
            }
            if let Some(list) = allowed_ips {
                body["allowed_ips"] = json!(list);
            }
            if let Some(d) = description {
                body["description"] = Value::String(d);
            }
            if let Some(d) = expires_in {
                body["expires_in"] = Value::String(d);
            }
            if let Some(t) = expires_at {
                body["expires_at"] = Value::String(t);
            }
            let v = c.call(Method::POST, "/v1/tokens", Some(body)).await?;
            if !g.json {
                print_secret(&v, secret_only);
                return Ok(());
            }
            v
        }
        TokenCmd::List { status, filter } => {
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut path = "/v1/tokens?limit=1000".to_string();
                if let Some(st) = &status {
                    path.push_str(&format!("&status={}", enc(st)));
                }
                if let Some(q) = &filter {
                    path.push_str(&format!("&q={}", enc(q)));
                }
                if let Some(a) = &after {
                    path.push_str(&format!("&after={}", enc(a)));
                }
                let page = c.call(Method::GET, &path, None).await?;
                all.extend(
                    page.get("tokens")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
                match page.get("next").and_then(Value::as_str) {
                    Some(n) => after = Some(n.to_string()),
                    None => break,
                }
            }
            if !g.json {
                print_table(&TOKEN_HEADER, all.iter().map(token_row));
                return Ok(());
            }
            json!({"tokens": all, "next": null})
        }
        TokenCmd::Show { name } => {
            let v = c
                .call(Method::GET, &format!("/v1/tokens/{}", enc(&name)), None)
                .await?;
            if !g.json {
                print_token(&v);
                return Ok(());
            }
            v
        }
        TokenCmd::Usage { name, days, ip } => {
            let v = usage_cmd(&c, &name, days, ip.as_deref()).await?;
            if !g.json {
                out(&usage_text(&name, &v));
                return Ok(());
            }
            v
        }
        TokenCmd::Update {
            name,
            description,
            clear_description,
            access,
            expires_at,
            rate_limit,
            allowed_ips,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(r) = rate_limit {
                let v = if r.eq_ignore_ascii_case("none") {
                    Value::Null
                } else {
                    rate_limit_json(&r)?
                };
                body.insert("rate_limit".into(), v);
            }
            if let Some(list) = allowed_ips {
                let v = if list.eq_ignore_ascii_case("any") {
                    Value::Null
                } else {
                    json!(list.split(',').map(str::trim).collect::<Vec<_>>())
                };
                body.insert("allowed_ips".into(), v);
            }
            if let Some(d) = description {
                body.insert("description".into(), Value::String(d));
            }
            if clear_description {
                body.insert("description".into(), Value::Null);
            }
            if let Some(a) = access {
                body.insert("access".into(), json!(a));
            }
            if let Some(t) = expires_at {
                let v = if t.eq_ignore_ascii_case("never") {
                    Value::Null
                } else {
                    Value::String(t)
                };
                body.insert("expires_at".into(), v);
            }
            if body.is_empty() {
                return Err(UsageError(
                    "nothing to update: give --description, --clear-description, --access, \
                     --expires-at, --rate-limit or --allowed-ips"
                        .into(),
                )
                .into());
            }
            let v = c
                .call(
                    Method::PATCH,
                    &format!("/v1/tokens/{}", enc(&name)),
                    Some(Value::Object(body)),
                )
                .await?;
            if !g.json {
                print_token(&v);
                return Ok(());
            }
            v
        }
        TokenCmd::Delete { name, yes } => {
            confirm(
                yes,
                &format!("Delete token {name:?}? Its secret stops working at once and its IP records go."),
            )?;
            c.call(Method::DELETE, &format!("/v1/tokens/{}", enc(&name)), None)
                .await?;
            if !g.json {
                out(&format!("deleted {}\n", printable(&name)));
                return Ok(());
            }
            json!({"deleted": name})
        }
        TokenCmd::Activate { names } | TokenCmd::Deactivate { names } if names.is_empty() => {
            return Err(UsageError("no token names given".into()).into());
        }
        TokenCmd::Activate { names } => status_cmd(&c, g, "activate", names).await?,
        TokenCmd::Deactivate { names } => status_cmd(&c, g, "deactivate", names).await?,
        TokenCmd::Regenerate {
            name,
            grace,
            yes,
            secret_only,
        } => {
            let then = if grace.is_some() {
                "at the end of the grace"
            } else {
                "at once"
            };
            confirm(
                yes,
                &format!("Regenerate token {name:?}? Its current secret stops working {then}."),
            )?;
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/tokens/{}/regenerate", enc(&name)),
                    grace.map(|g| json!({ "grace": g })),
                )
                .await?;
            if !g.json {
                print_secret(&v, secret_only);
                return Ok(());
            }
            v
        }
    };
    if g.json {
        print_json(&v);
    }
    Ok(())
}

/// `token usage`: the last 24 hourly buckets, or `days` daily ones ending today. Today is the
/// gateway's (its clock is the source of truth): the last bucket of a default daily query.
async fn usage_cmd(
    c: &AdminClient,
    name: &str,
    days: u32,
    ip: Option<&str>,
) -> anyhow::Result<Value> {
    let base = format!("/v1/tokens/{}/usage", enc(name));
    let ip = ip.map_or(String::new(), |ip| format!("&ip={}", enc(ip)));
    if days == 1 {
        return Ok(c
            .call(Method::GET, &format!("{base}?step=1h{ip}"), None)
            .await?);
    }
    let probe = c
        .call(Method::GET, &format!("{base}?step=1d{ip}"), None)
        .await?;
    let today = probe["buckets"]
        .as_array()
        .and_then(|b| b.last())
        .and_then(|b| b["start"].as_str())
        .and_then(crate::clock::Timestamp::parse_rfc3339)
        .ok_or_else(|| anyhow::anyhow!("unexpected answer from the admin API"))?;
    let from = crate::clock::Timestamp(today.0 - i64::from(days - 1) * crate::model::DAY_MS);
    let path = format!(
        "{base}?step=1d&from={}&to={}{ip}",
        enc(&from.rfc3339()),
        enc(&today.rfc3339())
    );
    Ok(c.call(Method::GET, &path, None).await?)
}

async fn status_cmd(
    c: &AdminClient,
    g: &Global,
    op: &str,
    names: Vec<String>,
) -> anyhow::Result<Value> {
    let v = c
        .call(
            Method::POST,
            &format!("/v1/tokens/{op}"),
            Some(json!({"names": names})),
        )
        .await?;
    if !g.json {
        print_rows(&v, "tokens", &TOKEN_HEADER, token_row);
    }
    Ok(v)
}

async fn ip_cmd(g: &Global, cmd: IpCmd) -> anyhow::Result<()> {
    let c = admin_client(g)?;
    let v = match cmd {
        IpCmd::List { token } => {
            c.call(
                Method::GET,
                &format!("/v1/tokens/{}/ips", enc(&token)),
                None,
            )
            .await?
        }
        IpCmd::Block { token, entries } => {
            c.call(
                Method::POST,
                &format!("/v1/tokens/{}/ips/block", enc(&token)),
                Some(json!({"ips": entries})),
            )
            .await?
        }
        IpCmd::Unblock { token, entries } => {
            c.call(
                Method::POST,
                &format!("/v1/tokens/{}/ips/unblock", enc(&token)),
                Some(json!({"ips": entries})),
            )
            .await?
        }
    };
    if g.json {
        print_json(&v);
    } else {
        let rows = v
            .get("ips")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        print_table(
            &[
                "IP",
                "FIRST USED",
                "LAST USED",
                "REQUESTS",
                "DENIED",
                "BLOCKED",
            ],
            rows.iter().map(|r| {
                let blocked = match r.get("blocked_by").and_then(Value::as_str) {
                    Some(b) if printable(b) != s(r, "ip") => {
                        format!("yes (by {})", printable(b))
                    }
                    Some(_) => "yes".into(),
                    None => "no".into(),
                };
                vec![
                    s(r, "ip"),
                    s(r, "first_used_at"),
                    s(r, "last_used_at"),
                    s(r, "requests"),
                    s(r, "denied"),
                    blocked,
                ]
            }),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// Control characters a description may hold, and how the CLI shows them.
    const HOSTILE: &str = "red \u{1b}[31mALERT\r\u{0}\u{7f}\u{9b}2J\u{85}\u{202e}txt.exe\tend\n";
    const SHOWN: &str =
        r"red \u{1b}[31mALERT\u{d}\u{0}\u{7f}\u{9b}2J\u{85}\u{202e}txt.exe\u{9}end\u{a}";

    /// No character of `text` reaches the terminal as a control (C0, DEL, C1) or a bidi
    /// override, except the line breaks.
    #[track_caller]
    fn assert_terminal_safe(text: &str) {
        for (i, c) in text.char_indices() {
            assert!(
                c == '\n' || !(c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
                "raw {c:?} at byte {i} of {text:?}"
            );
        }
    }

    #[test]
    fn printable_escapes_c0_c1_del_and_bidi_controls() {
        assert_eq!(printable(HOSTILE), SHOWN);
        for c in (0u32..0x20).chain(0x7f..0xa0) {
            let c = char::from_u32(c).unwrap();
            assert_eq!(
                printable(&c.to_string()),
                format!("\\u{{{:x}}}", u32::from(c))
            );
        }
        assert_eq!(
            printable("\u{2028}\u{2029}\u{2066}"),
            r"\u{2028}\u{2029}\u{2066}"
        );
    }

    #[test]
    fn json_output_escapes_every_control_and_still_parses_to_the_same_value() {
        let v = json!({"tokens": [{"description": HOSTILE, "name": "Überwachung 🦀"}]});
        let text = json_text(&v);
        assert_terminal_safe(&text);
        assert!(
            text.contains(r"\u001b[31mALERT\r\u0000\u007f\u009b2J\u0085\u202e"),
            "{text}"
        );
        assert!(text.contains("Überwachung 🦀"), "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn printable_keeps_ordinary_text_and_unicode_as_is() {
        for ok in [
            "nightly feed",
            "Überwachung – 日本語 🦀",
            r"C:\feeds",
            "x\u{200d}y",
            "",
        ] {
            assert!(matches!(printable(ok), Cow::Borrowed(_)), "{ok:?}");
            assert_eq!(printable(ok), ok);
        }
    }

    #[test]
    fn token_show_list_and_audit_print_control_characters_escaped() {
        let t = json!({
            "name": "feed",
            "id": "0b6c",
            "description": HOSTILE,
            "access": ["security-director"],
            "status": "inactive",
            "inactive_reason": "idle\u{1b}]0;pwned\u{7}",
            "created_at": "2024-01-01T00:00:00Z",
        });
        let shown = token_text(&t);
        assert_terminal_safe(&shown);
        assert!(
            shown.contains(&format!("description:     {SHOWN}\n")),
            "{shown}"
        );

        let list = table(&TOKEN_HEADER, std::iter::once(token_row(&t)));
        assert_terminal_safe(&list);
        assert!(list.contains(SHOWN), "{list}");
        assert!(
            list.contains(r"inactive (idle\u{1b}]0;pwned\u{7})"),
            "{list}"
        );

        // Audit details are JSON text, whose own escapes leave DEL and C1 raw.
        let e = json!({
            "at": "2024-01-01T00:00:00Z",
            "actor": "CN=ops\u{1b}[2J",
            "source_ip": "127.0.0.1",
            "action": "create",
            "token": "feed",
            "details": {"description": HOSTILE},
        });
        let audit = table(&AUDIT_HEADER, std::iter::once(audit_row(&e)));
        assert_terminal_safe(&audit);
        assert!(audit.contains(r"CN=ops\u{1b}[2J"), "{audit}");
        assert!(audit.contains(r"\u{7f}\u{9b}2J\u{85}"), "{audit}");
    }
}
