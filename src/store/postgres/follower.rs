//! The change follower: a LISTEN connection per instance, the generation probe, and a full
//! reload after a gap or a reconnect (see [`PostgresStore::follow`](crate::store::Store::follow)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};

use super::{describe, quote_ident, PostgresStore, CONNECT_TIMEOUT};
use crate::store::ChangeSink;

/// How often the follower reads the generation back (reconciliation and health probe).
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Notifications buffered between the listener connection and the follower; past it the
/// follower reloads everything instead.
const NOTIFY_QUEUE: usize = 1024;

enum Ended {
    Shutdown,
    Lost(String),
}

/// Aborts the listener connection's driver when the follower lets go of it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn follow_loop(
    store: Arc<PostgresStore>,
    sink: Arc<dyn ChangeSink>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        match store.follow_once(sink.as_ref(), &mut shutdown).await {
            Ended::Shutdown => return,
            Ended::Lost(why) => {
                if store.health.mark_down() {
                    tracing::warn!(
                        error = %why,
                        "lost contact with PostgreSQL: cached tokens are served for at most store.outage_grace, unknown ones get 503"
                    );
                } else {
                    tracing::debug!(error = %why, "PostgreSQL still unreachable");
                }
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn read_generation(client: &Client) -> Result<i64, String> {
    let q = client.query_one("SELECT generation FROM change_generation WHERE id = 1", &[]);
    match tokio::time::timeout(PROBE_TIMEOUT, q).await {
        Ok(Ok(row)) => row.try_get(0).map_err(|e| describe(&e)),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err("PostgreSQL did not answer the probe in time".into()),
    }
}

/// `<generation>:<id>,<id>...` → (generation, ids), `None` ids for `*`.
fn parse_payload(p: &str) -> Option<(i64, Option<Vec<String>>)> {
    let (g, rest) = p.split_once(':')?;
    let g = g.parse().ok()?;
    if rest == "*" {
        return Some((g, None));
    }
    Some((
        g,
        Some(
            rest.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ),
    ))
}

impl PostgresStore {
    /// One listener connection's life: connect, LISTEN, reload, then follow until it fails.
    async fn follow_once(
        &self,
        sink: &dyn ChangeSink,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let connect =
            tokio::time::timeout(CONNECT_TIMEOUT, self.listen_cfg.connect(self.tls.clone()));
        let (client, mut conn) = match connect.await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Ended::Lost(describe(&e)),
            Err(_) => return Ended::Lost("connecting to PostgreSQL timed out".into()),
        };
        let (tx, mut rx) = mpsc::channel::<String>(NOTIFY_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let flag = overflow.clone();
        let _driver = AbortOnDrop(tokio::spawn(async move {
            while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match msg {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.try_send(n.payload().to_string()).is_err() {
                            flag.store(true, Ordering::Release);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            // Dropping `tx` tells the follower the connection is gone.
        }));
        let listen = format!("LISTEN {}", quote_ident(&self.inner.channel));
        if let Err(e) = client.batch_execute(&listen).await {
            return Ended::Lost(describe(&e));
        }
        let was_down = !self.health.is_up();
        let mut applied = match self.resync(&client, sink).await {
            Ok(g) => g,
            Err(e) => return Ended::Lost(e),
        };
        self.health.mark_up(self.clock.now());
        if was_down {
            tracing::info!("PostgreSQL reachable again; tokens reloaded");
        } else {
            tracing::debug!("following token changes through LISTEN/NOTIFY");
        }
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // A generation the store had reached at the previous probe but this instance had not.
        let mut behind: Option<i64> = None;
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Ended::Shutdown;
                    }
                }
                msg = rx.recv() => {
                    let Some(payload) = msg else {
                        return Ended::Lost("the listener connection closed".into());
                    };
                    let res = if overflow.swap(false, Ordering::AcqRel) {
                        self.resync(&client, sink).await.map(|g| applied = applied.max(g))
                    } else {
                        self.apply(&client, sink, &payload, &mut applied).await
                    };
                    if let Err(e) = res {
                        return Ended::Lost(e);
                    }
                }
                _ = tick.tick() => {
                    let g = match read_generation(&client).await {
                        Ok(g) => g,
                        Err(e) => return Ended::Lost(e),
                    };
                    if g > applied && behind.is_some_and(|b| applied < b) {
                        tracing::warn!(store = g, applied, "missed a change notification; reloading all tokens");
                        match self.resync(&client, sink).await {
                            Ok(g) => applied = applied.max(g),
                            Err(e) => return Ended::Lost(e),
                        }
                        behind = None;
                    } else {
                        behind = (g > applied).then_some(g);
                    }
                    self.health.mark_up(self.clock.now());
                }
            }
        }
    }

    /// Applies one notification in generation order; a gap or an unreadable payload means
    /// something was missed, so everything is reloaded.
    async fn apply(
        &self,
        client: &Client,
        sink: &dyn ChangeSink,
        payload: &str,
        applied: &mut i64,
    ) -> Result<(), String> {
        match parse_payload(payload) {
            // Already reflected (the reload read a later state).
            Some((g, _)) if g <= *applied => Ok(()),
            Some((g, ids)) if g == *applied + 1 => {
                match ids {
                    Some(ids) => sink.tokens_changed(&ids).await,
                    None => sink.reload_all().await,
                }
                .map_err(|e| e.to_string())?;
                *applied = g;
                Ok(())
            }
            other => {
                tracing::warn!(
                    applied = *applied,
                    got = ?other.map(|(g, _)| g),
                    "change notifications out of sequence; reloading all tokens"
                );
                let g = self.resync(client, sink).await?;
                *applied = (*applied).max(g);
                Ok(())
            }
        }
    }

    /// Reads the generation, then reloads everything: the reload reflects at least that
    /// generation, so it becomes the applied one.
    async fn resync(&self, client: &Client, sink: &dyn ChangeSink) -> Result<i64, String> {
        let g = read_generation(client).await?;
        sink.reload_all().await.map_err(|e| e.to_string())?;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse_payload("7:a,b"),
            Some((7, Some(vec!["a".to_string(), "b".to_string()])))
        );
        assert_eq!(parse_payload("8:*"), Some((8, None)));
        assert_eq!(parse_payload("9:"), Some((9, Some(vec![]))));
        assert_eq!(parse_payload("x:a"), None);
        assert_eq!(parse_payload("nonsense"), None);
    }
}
