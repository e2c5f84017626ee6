//! The hot path's view of tokens: an in-memory index of every token, keyed by secret hash.
//!
//! Every token the store holds is here (loaded at start-up, kept current after each admin
//! mutation by [`TokenIndex::refresh`], and, with a shared store, after every change another
//! instance commits, through [`IndexFollower`]). So a request is decided entirely from memory: a hit
//! is one hash-map lookup, and an unknown hash (however many distinct ones an attacker
//! sends) is refused without any store query: the index *is* the negative answer. This is a
//! full replica rather than a bounded cache on purpose: a bounded cache would need a store
//! round trip for every distinct unknown secret. Memory is about 200 bytes per token.
//!
//! The index decides nothing (that is [`crate::policy`]) and never writes to the store.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use http::HeaderValue;

use crate::clock::Timestamp;
use crate::net::BlockEntry;
use crate::store::{ChangeSink, InactiveReason, Status, Store, StoreResult, TokenWithBlocks};
use crate::token::{Access, BuildPrefixHasher, SecretHash};

/// What the proxy needs to know about one token, ready to use: the identity header values
/// are built once here, not per request.
#[derive(Debug)]
pub struct TokenState {
    pub id: Arc<str>,
    pub name: Box<str>,
    pub access: Access,
    pub status: Status,
    pub inactive_reason: Option<InactiveReason>,
    pub created_at: Timestamp,
    pub activated_at: Option<Timestamp>,
    /// Latest use known to this instance, in ms (0 = never): the store's `last_used_at`
    /// raised by local uses not flushed yet. Shared across refreshes of the same token.
    pub last_used: Arc<AtomicI64>,
    pub blocks: Box<[BlockEntry]>,
    pub header_name: HeaderValue,
    pub header_id: HeaderValue,
    pub header_access: HeaderValue,
    /// When the proxy last re-read this token's last use from the store (ms, gateway clock):
    /// an idle token is re-checked at most once a second, however many requests it gets.
    pub rechecked_at: AtomicI64,
}

/// The `x-tokengate-access` value: one of three static strings, so a million tokens do not
/// hold a million copies of it.
fn access_header(a: Access) -> HeaderValue {
    match (
        a.contains(Access::SECURITY_DIRECTOR),
        a.contains(Access::THIRD_PARTY_FEEDS),
    ) {
        (true, true) => HeaderValue::from_static("security-director,third-party-feeds"),
        (true, false) => HeaderValue::from_static("security-director"),
        (false, true) => HeaderValue::from_static("third-party-feeds"),
        (false, false) => HeaderValue::from_static(""),
    }
}

impl TokenState {
    fn from_record(t: TokenWithBlocks, last_used: Arc<AtomicI64>) -> TokenState {
        let r = t.token;
        if let Some(l) = r.last_used_at {
            last_used.fetch_max(l.0, Ordering::Relaxed);
        }
        // Names are [A-Za-z0-9-] and ids are UUIDs (validated before they were stored), so
        // these are valid header values; fall back to a placeholder rather than panic if a
        // tampered database says otherwise.
        let hv = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("invalid"));
        TokenState {
            header_name: hv(&r.name),
            header_id: hv(&r.id),
            header_access: access_header(r.access),
            id: Arc::from(r.id.as_str()),
            name: r.name.into_boxed_str(),
            access: r.access,
            status: r.status,
            inactive_reason: r.inactive_reason,
            created_at: r.created_at,
            activated_at: r.activated_at,
            last_used,
            blocks: t.blocks.into_boxed_slice(),
            rechecked_at: AtomicI64::new(i64::MIN / 2),
        }
    }

    /// The latest use known here, if any.
    pub fn last_used_at(&self) -> Option<Timestamp> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Timestamp(ms)),
        }
    }

    /// Marks a forwarded use at `now` (lock-free).
    pub fn touch(&self, now: Timestamp) {
        self.last_used.fetch_max(now.0, Ordering::Relaxed);
    }
}

/// All tokens by secret hash, plus id → hash so a refresh can find the entry to replace.
pub struct TokenIndex {
    by_hash: DashMap<SecretHash, Arc<TokenState>, BuildPrefixHasher>,
    hash_by_id: DashMap<Arc<str>, SecretHash>,
    /// Serialises refreshes, so two admin changes to one token apply in commit order.
    refresh_lock: tokio::sync::Mutex<()>,
}

impl Default for TokenIndex {
    fn default() -> Self {
        TokenIndex {
            by_hash: DashMap::with_hasher(BuildPrefixHasher::default()),
            hash_by_id: DashMap::new(),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }
}

impl TokenIndex {
    /// Loads every token from the store.
    pub async fn load(store: &dyn Store) -> StoreResult<TokenIndex> {
        let index = TokenIndex::default();
        for t in store.load_all().await? {
            index.upsert(t);
        }
        Ok(index)
    }

    /// The hot-path lookup: one hash-map read, no allocation, no await.
    pub fn get(&self, hash: &SecretHash) -> Option<Arc<TokenState>> {
        self.by_hash.get(hash).map(|e| e.value().clone())
    }

    pub fn get_by_id(&self, id: &str) -> Option<Arc<TokenState>> {
        let hash = *self.hash_by_id.get(id)?.value();
        self.get(&hash)
    }

    /// Ids of the tokens this instance saw used after `since` (memory only, so it
    /// includes uses not flushed yet). The sweep leaves these alone.
    pub fn used_since(&self, since: Timestamp) -> Vec<String> {
        self.by_hash
            .iter()
            .filter(|e| e.value().last_used.load(Ordering::Relaxed) > since.0)
            .map(|e| e.value().id.to_string())
            .collect()
    }

    /// Every token's state (metrics, the sweep). A snapshot: entries change concurrently.
    pub fn snapshot(&self) -> Vec<Arc<TokenState>> {
        self.by_hash.iter().map(|e| e.value().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Adds or replaces one token (start-up load, refresh; benches seed with it).
    pub fn upsert(&self, t: TokenWithBlocks) {
        let hash = t.token.secret_hash;
        let id: Arc<str> = Arc::from(t.token.id.as_str());
        // Keep the last-use counter of the previous version of this token.
        let previous = self.hash_by_id.get(&id).map(|e| *e.value());
        let last_used = previous
            .and_then(|h| self.by_hash.get(&h).map(|s| s.last_used.clone()))
            .unwrap_or_default();
        let state = Arc::new(TokenState::from_record(t, last_used));
        // Insert the new hash before removing the old one, so there is no instant at which
        // the token is unknown (a regenerate removes the old hash right after).
        self.by_hash.insert(hash, state);
        if let Some(old) = previous.filter(|old| *old != hash) {
            self.by_hash.remove(&old);
        }
        self.hash_by_id.insert(id, hash);
    }

    fn remove(&self, id: &str) {
        if let Some((_, hash)) = self.hash_by_id.remove(id) {
            self.by_hash.remove(&hash);
        }
    }

    /// Re-reads one token from the store and replaces (or drops) its entry. Called after
    /// every committed mutation, before the admin API answers: the very next request sees it.
    pub async fn refresh(&self, store: &dyn Store, id: &str) -> StoreResult<()> {
        let _serial = self.refresh_lock.lock().await;
        match store.token_by_id(id).await? {
            Some(t) => self.upsert(t),
            None => self.remove(id),
        }
        Ok(())
    }

    /// Drops a token from memory without a store read (after a delete).
    pub async fn forget(&self, id: &str) {
        let _serial = self.refresh_lock.lock().await;
        self.remove(id);
    }

    /// Re-reads every token and drops the ones the store no longer has (a shared store after
    /// a reconnect or a missed change). Serialised with `refresh`, and the store is read
    /// after taking the lock, so the result is never older than what memory held.
    pub async fn reload(&self, store: &dyn Store) -> StoreResult<usize> {
        let _serial = self.refresh_lock.lock().await;
        let all = store.load_all().await?;
        let live: std::collections::HashSet<Arc<str>> =
            all.iter().map(|t| Arc::from(t.token.id.as_str())).collect();
        let n = all.len();
        for t in all {
            self.upsert(t);
        }
        let gone: Vec<Arc<str>> = self
            .hash_by_id
            .iter()
            .filter(|e| !live.contains(e.key()))
            .map(|e| e.key().clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
        Ok(n)
    }
}

/// Applies changes a shared store reports (from any instance) to the index.
pub struct IndexFollower {
    pub index: Arc<TokenIndex>,
    pub store: Arc<dyn Store>,
}

#[async_trait::async_trait]
impl ChangeSink for IndexFollower {
    async fn tokens_changed(&self, ids: &[String]) -> StoreResult<()> {
        for id in ids {
            self.index.refresh(self.store.as_ref(), id).await?;
        }
        Ok(())
    }

    async fn reload_all(&self) -> StoreResult<()> {
        let n = self.index.reload(self.store.as_ref()).await?;
        tracing::debug!(tokens = n, "token index reloaded from the store");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_header_matches_the_joined_names() {
        for bits in 0..4u8 {
            let a = Access::from_bits(bits);
            assert_eq!(access_header(a), a.joined().as_str());
        }
    }
}
