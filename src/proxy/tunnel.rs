//! The byte tunnel of an upgraded (WebSocket) connection, and what keeps it honest: it
//! closes when idle, and as soon as its token stops being usable from its client IP.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;

use crate::access::Access;
use crate::clock::SharedClock;
use crate::config::LifecycleConfig;
use crate::counted::Counted;
use crate::model::TokenId;
use crate::policy::{self, Effective};
use crate::state::TokenIndex;
use crate::token::SecretHash;

/// Copies bytes both ways between an upgraded client and upstream connection (WebSocket).
///
/// A tunnel lives outside hyper's connection (and so outside its limits): it closes itself
/// when no byte crossed it for `proxy.idle_timeout`, and as soon as its token stops being
/// usable from its client IP (deactivated, deleted, regenerated or its grace ended, idle, IP
/// blocked or no longer allowed, access withdrawn), checked every second.
pub(crate) async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    watch: TunnelWatch,
) {
    let (Ok(c), Ok(u)) = tokio::join!(client, upstream) else {
        return;
    };
    let activity = Arc::new(AtomicU64::new(0));
    let mut c = Counted {
        inner: TokioIo::new(c),
        activity: activity.clone(),
    };
    let mut u = Counted {
        inner: TokioIo::new(u),
        activity: activity.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
    tokio::pin!(copy);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut quiet_since) = (0, Instant::now());
    loop {
        tokio::select! {
            _ = &mut copy => return,
            _ = tick.tick() => {
                if !watch.still_allowed() {
                    tracing::debug!(token_id = %watch.token_id, "closing a tunnel: its token is no longer usable");
                    return;
                }
                let now = activity.load(Ordering::Relaxed);
                if now != seen {
                    (seen, quiet_since) = (now, Instant::now());
                } else if quiet_since.elapsed() >= watch.idle {
                    tracing::debug!(token_id = %watch.token_id, "closing an idle tunnel");
                    return;
                }
            }
        }
    }
}

/// What a tunnel re-checks about its token while it is open.
pub(crate) struct TunnelWatch {
    pub(crate) index: Arc<TokenIndex>,
    pub(crate) clock: SharedClock,
    pub(crate) lifecycle: LifecycleConfig,
    pub(crate) token_id: TokenId,
    pub(crate) client_ip: IpAddr,
    pub(crate) access: Access,
    /// The secret the upgrade was authorized with: the tunnel closes once it no longer
    /// works (regenerated, its grace over or ended by a revocation).
    pub(crate) secret: SecretHash,
    pub(crate) idle: Duration,
    /// The client connection's place under `proxy.max_connections`, held while the tunnel
    /// is open (the connection task that took it ends at the upgrade).
    pub(crate) _slot: Arc<crate::server::ConnSlot>,
}

impl TunnelWatch {
    fn still_allowed(&self) -> bool {
        let Some(t) = self.index.by_id(self.token_id) else {
            return false;
        };
        let now = self.clock.now();
        let secret_works = t.hash == self.secret
            || t.previous()
                .is_some_and(|p| p.hash == self.secret && now < p.until);
        secret_works
            && policy::status_at(t.standing(), now, &self.lifecycle) == Effective::Active
            && policy::blocked_by(&t.blocks, self.client_ip).is_none()
            && t.allows(self.client_ip)
            && t.access.contains(self.access)
    }
}
