//! The hot path's view of tokens: an in-memory index of every token, keyed by secret hash.
//!
//! Every token the store holds is here (loaded at start-up, kept current after each admin
//! mutation by [`TokenIndex::refresh`], and, with a shared store, after every change another
//! instance commits, through [`IndexFollower`]). So a request is decided entirely from memory: a hit
//! is one hash-table lookup, and an unknown hash (however many distinct ones an attacker
//! sends) is refused without any store query: the index *is* the negative answer. This is a
//! full replica rather than a bounded cache on purpose: a bounded cache would need a store
//! round trip for every distinct unknown secret.
//!
//! Memory is the constraint at scale (a million tokens must fit in a few hundred MiB), so a
//! token is one 160-byte allocation plus its name, and the two tables (by secret hash, by id)
//! hold only a pointer per slot: the key is read from the token itself (`hashbrown::HashTable`).
//! The identity headers are built on a token's first forwarded request, not for every token
//! at load. About 220 bytes per token in all (BENCHMARKS.md).
//!
//! The index decides nothing (that is [`crate::policy`]) and never writes to the store.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use http::HeaderValue;

use crate::access::{Access, AccessTypes};
use crate::clock::Timestamp;
use crate::model::{InactiveReason, PreviousSecret, Status, TokenId, TokenRecord, TokenWithBlocks};
use crate::net::BlockEntry;
use crate::ratelimit::RateLimit;
use crate::store::{ChangeSink, Store, StoreResult};
use crate::token::SecretHash;

/// What the proxy needs to know about one token.
#[derive(Debug)]
pub struct TokenState {
    pub hash: SecretHash,
    pub id: TokenId,
    pub name: Box<str>,
    pub blocks: Box<[BlockEntry]>,
    pub created_at: Timestamp,
    pub activated_at: Option<Timestamp>,
    /// Latest use known to this instance, in ms (0 = never): the store's `last_used_at`
    /// raised by local uses not flushed yet. Carried over when the token is refreshed.
    last_used: AtomicI64,
    /// When the proxy last re-read this token's last use from the store (ms, gateway clock):
    /// an idle token is re-checked at most once a second, however many requests it gets.
    pub rechecked_at: AtomicI64,
    identity: OnceLock<Box<Identity>>,
    pub access: Access,
    pub status: Status,
    pub inactive_reason: Option<InactiveReason>,
    /// Its expiry, previous secret, rate limit and allow-list, when it has any (most tokens
    /// have none: one pointer in every token, not their 80 bytes).
    extras: Option<Box<Extras>>,
}

/// A token's optional settings.
#[derive(Debug, Default)]
struct Extras {
    expires_at: Option<Timestamp>,
    /// The replaced secret still in its grace (rotation), indexed too.
    previous: Option<PreviousSecret>,
    rate_limit: Option<RateLimit>,
    /// Canonical entries; `None` = any client IP.
    allowed_ips: Option<Box<[BlockEntry]>>,
}

impl TokenState {
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.extras.as_ref().and_then(|e| e.expires_at)
    }

    /// The replaced secret still in its grace (rotation), if any.
    pub fn previous(&self) -> Option<PreviousSecret> {
        self.extras.as_ref().and_then(|e| e.previous)
    }

    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.extras.as_ref().and_then(|e| e.rate_limit)
    }

    /// Whether `ip` may use the token (always, without an allow-list).
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        match self.extras.as_ref().and_then(|e| e.allowed_ips.as_ref()) {
            None => true,
            Some(list) => list.iter().any(|e| e.contains(ip)),
        }
    }
}

/// The identity header values sent upstream, built once per token (on first use).
#[derive(Debug)]
pub struct Identity {
    pub name: HeaderValue,
    pub id: HeaderValue,
    /// `x-tokengate-access`: the configured types the token grants, sorted, comma-joined.
    pub access: HeaderValue,
}

impl TokenState {
    fn from_record(t: TokenWithBlocks, types: &AccessTypes) -> Option<TokenState> {
        let r: TokenRecord = t.token;
        let id = r.id;
        Some(TokenState {
            hash: r.secret_hash,
            id,
            name: r.name.into_boxed_str(),
            blocks: t.blocks.into_boxed_slice(),
            created_at: r.created_at,
            activated_at: r.activated_at,
            last_used: AtomicI64::new(r.last_used_at.map_or(0, |t| t.0)),
            rechecked_at: AtomicI64::new(i64::MIN / 2),
            identity: OnceLock::new(),
            access: types.grant(&r.access),
            status: r.status,
            inactive_reason: r.inactive_reason,
            extras: Some(Extras {
                expires_at: r.expires_at,
                previous: r.previous_secret,
                rate_limit: r.rate_limit,
                allowed_ips: r.allowed_ips.map(Vec::into_boxed_slice),
            })
            .filter(|e| {
                e.expires_at.is_some()
                    || e.previous.is_some()
                    || e.rate_limit.is_some()
                    || e.allowed_ips.is_some()
            })
            .map(Box::new),
        })
    }

    /// The identity header values (built on first use, then shared by every request).
    /// `types` is the registry the token's access was granted from (its index's).
    pub fn identity(&self, types: &AccessTypes) -> &Identity {
        self.identity.get_or_init(|| {
            // Names are [A-Za-z0-9-] (validated before they were stored), so this is a valid
            // header value; fall back to a placeholder rather than panic on an edited database.
            let name =
                HeaderValue::from_str(&self.name).unwrap_or(HeaderValue::from_static("invalid"));
            let mut buf = [0u8; 36];
            let id = HeaderValue::from_str(self.id.encode(&mut buf))
                .unwrap_or(HeaderValue::from_static("invalid"));
            // Access type names are [a-z0-9-] (validated by the config).
            let access = HeaderValue::from_str(&types.header_of(self.access))
                .unwrap_or(HeaderValue::from_static(""));
            Box::new(Identity { name, id, access })
        })
    }

    /// The id as the store spells it.
    pub fn id_string(&self) -> String {
        self.id.to_string()
    }

    /// What its effective status depends on (see [`crate::policy::status_at`]).
    pub fn standing(&self) -> crate::policy::Standing {
        crate::policy::Standing {
            status: self.status,
            reason: self.inactive_reason,
            created_at: self.created_at,
            activated_at: self.activated_at,
            last_used_at: self.last_used_at(),
            expires_at: self.expires_at(),
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

/// Shards per table: writers (refreshes, the start-up load) lock one shard at a time.
const SHARDS: usize = 16;

/// Shard from bits 32..36 of a table hash: hashbrown takes the bucket from the low bits and
/// the control byte from the top 7, so the shard choice must use neither.
fn shard_of(h: u64) -> usize {
    ((h >> 32) as usize) & (SHARDS - 1)
}

/// A sharded table of tokens whose key is read from the token itself: one pointer per slot.
struct Table {
    shards: Box<[RwLock<HashTable<Arc<TokenState>>>]>,
}

impl Table {
    fn new() -> Table {
        Table {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
        }
    }

    fn read(&self, h: u64) -> RwLockReadGuard<'_, HashTable<Arc<TokenState>>> {
        // A panic while a shard was locked cannot leave a half-written table (every write
        // is one hashbrown call), so a poisoned lock is safe to keep using.
        self.shards[shard_of(h)]
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, h: u64) -> RwLockWriteGuard<'_, HashTable<Arc<TokenState>>> {
        self.shards[shard_of(h)]
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, h: u64, eq: impl Fn(&TokenState) -> bool) -> Option<Arc<TokenState>> {
        self.read(h).find(h, |t| eq(t)).cloned()
    }

    /// Inserts `t`, replacing the entry `eq` matches; returns the replaced one.
    fn insert(
        &self,
        h: u64,
        t: Arc<TokenState>,
        eq: impl Fn(&TokenState) -> bool,
        rehash: impl Fn(&TokenState) -> u64,
    ) -> Option<Arc<TokenState>> {
        match self.write(h).entry(h, |x| eq(x), |x| rehash(x)) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(std::mem::replace(o.get_mut(), t))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(t);
                None
            }
        }
    }

    fn remove(&self, h: u64, eq: impl Fn(&TokenState) -> bool) -> Option<Arc<TokenState>> {
        match self.write(h).find_entry(h, |x| eq(x)) {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Visits every token, one shard (read-locked) at a time.
    fn for_each(&self, mut f: impl FnMut(&Arc<TokenState>)) {
        for s in self.shards.iter() {
            for t in s.read().unwrap_or_else(|p| p.into_inner()).iter() {
                f(t);
            }
        }
    }
}

/// All tokens by secret hash, and by id so a refresh can find the entry to replace.
pub struct TokenIndex {
    by_hash: Table,
    /// Tokens with a previous secret in its grace, by that secret's hash.
    by_previous: Table,
    /// Entries in `by_previous`: an unknown secret skips that table while it is empty.
    previous_count: std::sync::atomic::AtomicUsize,
    by_id: Table,
    /// Ids are not uniform hashes (a ULID or a sequence would do), so they get a keyed hash.
    id_hasher: RandomState,
    /// Serialises refreshes, so two admin changes to one token apply in commit order.
    refresh_lock: tokio::sync::Mutex<()>,
    /// What the tokens' access names grant (the config's `[[access_types]]`).
    access_types: Arc<AccessTypes>,
}

impl Default for TokenIndex {
    /// An empty index granting the seed's two access types.
    fn default() -> Self {
        TokenIndex::new(Arc::new(AccessTypes::seed()))
    }
}

impl TokenIndex {
    /// An empty index granting `access_types`.
    pub fn new(access_types: Arc<AccessTypes>) -> Self {
        TokenIndex {
            by_hash: Table::new(),
            by_previous: Table::new(),
            previous_count: std::sync::atomic::AtomicUsize::new(0),
            by_id: Table::new(),
            id_hasher: RandomState::new(),
            refresh_lock: tokio::sync::Mutex::new(()),
            access_types,
        }
    }

    /// The access types this index grants from.
    pub fn access_types(&self) -> &AccessTypes {
        &self.access_types
    }
}

/// Tokens per batch when streaming the whole store into memory (the store's constant).
pub use crate::store::LOAD_BATCH;

impl TokenIndex {
    /// Loads every token from the store, streamed in batches: memory holds one batch of
    /// store records at a time besides the index, never the whole table twice.
    pub async fn load(
        store: &dyn Store,
        access_types: Arc<AccessTypes>,
    ) -> StoreResult<TokenIndex> {
        let index = TokenIndex::new(access_types);
        index.stream_from(store, |_| {}).await?;
        Ok(index)
    }

    async fn stream_from(
        &self,
        store: &dyn Store,
        mut seen: impl FnMut(TokenId),
    ) -> StoreResult<usize> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<TokenWithBlocks>>(2);
        let mut n = 0;
        let apply = async {
            while let Some(batch) = rx.recv().await {
                for t in batch {
                    if let Some(id) = self.upsert(t) {
                        seen(id);
                        n += 1;
                    }
                }
            }
        };
        let (loaded, ()) = tokio::join!(store.load_all(tx), apply);
        loaded.map(|()| n)
    }

    fn hash_key(h: &SecretHash) -> u64 {
        h.prefix()
    }

    fn id_key(&self, id: &TokenId) -> u64 {
        self.id_hasher.hash_one(id)
    }

    /// The hot-path lookup: one shard read lock, one probe, no allocation, no await.
    pub fn get(&self, hash: &SecretHash) -> Option<Arc<TokenState>> {
        self.by_hash.find(Self::hash_key(hash), |t| t.hash == *hash)
    }

    /// The token whose *previous* secret this is (rotation), whether or not its grace is
    /// still running (the caller compares `until` with its clock). Costs nothing while no
    /// token has a previous secret.
    pub fn get_previous(&self, hash: &SecretHash) -> Option<Arc<TokenState>> {
        if self.previous_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.by_previous.find(Self::hash_key(hash), |t| {
            t.previous().is_some_and(|p| p.hash == *hash)
        })
    }

    fn previous_key(t: &TokenState) -> u64 {
        t.previous().map_or(0, |p| Self::hash_key(&p.hash))
    }

    fn unindex_previous(&self, t: &Arc<TokenState>) {
        if t.previous().is_some()
            && self
                .by_previous
                .remove(Self::previous_key(t), |x| std::ptr::eq(x, &**t))
                .is_some()
        {
            self.previous_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// By id spelled as stored (tests).
    pub fn get_by_id(&self, id: &str) -> Option<Arc<TokenState>> {
        self.by_id(TokenId::parse_stored(id)?)
    }

    /// By id (admin views, open tunnels).
    pub fn by_id(&self, id: TokenId) -> Option<Arc<TokenState>> {
        self.by_id.find(self.id_key(&id), |t| t.id == id)
    }

    /// Ids of the tokens this instance saw used after `since` (memory only, so it
    /// includes uses not flushed yet). The sweep leaves these alone.
    pub fn used_since(&self, since: Timestamp) -> Vec<String> {
        // Ids under the shard locks, strings after: a shard is read-locked only briefly.
        let mut ids = Vec::new();
        self.by_id.for_each(|t| {
            if t.last_used.load(Ordering::Relaxed) > since.0 {
                ids.push(t.id);
            }
        });
        ids.iter().map(TokenId::to_string).collect()
    }

    /// Every token's state (metrics, the sweep). A snapshot: entries change concurrently.
    pub fn snapshot(&self) -> Vec<Arc<TokenState>> {
        let mut out = Vec::with_capacity(self.len());
        self.by_id.for_each(|t| out.push(t.clone()));
        out
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces one token (start-up load, refresh; benches seed with it). Returns
    /// its id, or `None` if the record was refused (an id that is not a UUID).
    pub fn upsert(&self, t: TokenWithBlocks) -> Option<TokenId> {
        let state = Arc::new(TokenState::from_record(t, &self.access_types)?);
        let id = state.id;
        let idk = self.id_key(&id);
        let hk = Self::hash_key(&state.hash);
        let previous = self.by_id.find(idk, |x| x.id == id);
        if let Some(p) = &previous {
            state.touch(Timestamp(p.last_used.load(Ordering::Relaxed)));
        }
        // Insert under the new hash before removing the old one, so there is no instant at
        // which the token is unknown (a regenerate removes the old hash right after).
        let hash = state.hash;
        self.by_hash.insert(
            hk,
            state.clone(),
            |x| x.hash == hash,
            |x| Self::hash_key(&x.hash),
        );
        // The previous secret (rotation) goes in before the old state leaves `by_hash`, so the
        // replaced secret is never unknown during its grace.
        if let Some(p) = state.previous() {
            let replaced = self.by_previous.insert(
                Self::hash_key(&p.hash),
                state.clone(),
                |x| x.id == id,
                Self::previous_key,
            );
            if replaced.is_none() {
                self.previous_count.fetch_add(1, Ordering::Relaxed);
            }
        }
        let hasher = &self.id_hasher;
        self.by_id.insert(
            idk,
            state.clone(),
            |x| x.id == id,
            |x| hasher.hash_one(x.id),
        );
        // A request holding the old state can still touch it after this second copy; that use
        // is missing here until the next refresh, but it is recorded and flushed all the same,
        // the sweep flushes before it decides, and an idle refusal re-reads the store first.
        if let Some(p) = previous {
            if p.hash != hash {
                self.by_hash
                    .remove(Self::hash_key(&p.hash), |x| std::ptr::eq(x, &*p));
            }
            // The old state's previous secret, unless the new state's replaced it in place.
            if p.previous().is_some()
                && p.previous().map(|x| x.hash) != state.previous().map(|x| x.hash)
            {
                self.unindex_previous(&p);
            }
            // A request that looked up the old state may have touched it since the copy.
            state.touch(Timestamp(p.last_used.load(Ordering::Relaxed)));
        }
        Some(id)
    }

    fn remove(&self, id: TokenId) {
        if let Some(t) = self.by_id.remove(self.id_key(&id), |x| x.id == id) {
            self.by_hash
                .remove(Self::hash_key(&t.hash), |x| std::ptr::eq(x, &*t));
            self.unindex_previous(&t);
        }
    }

    /// Re-reads one token from the store and replaces (or drops) its entry. Called after
    /// every committed mutation, before the admin API answers: the very next request sees it.
    pub async fn refresh(&self, store: &dyn Store, id: TokenId) -> StoreResult<()> {
        let _serial = self.refresh_lock.lock().await;
        match store.token_by_id(id).await? {
            Some(t) => {
                self.upsert(t);
            }
            None => self.remove(id),
        }
        Ok(())
    }

    /// Drops a token from memory without a store read (after a delete).
    pub async fn forget(&self, id: TokenId) {
        let _serial = self.refresh_lock.lock().await;
        self.remove(id);
    }

    /// Re-reads every token and drops the ones the store no longer has (a shared store after
    /// a reconnect or a missed change). Serialised with `refresh`, and the store is read
    /// after taking the lock, so the result is never older than what memory held.
    pub async fn reload(&self, store: &dyn Store) -> StoreResult<usize> {
        let _serial = self.refresh_lock.lock().await;
        let mut live = std::collections::HashSet::new();
        let n = self
            .stream_from(store, |id| {
                live.insert(id);
            })
            .await?;
        let mut gone = Vec::new();
        self.by_id.for_each(|t| {
            if !live.contains(&t.id) {
                gone.push(t.id);
            }
        });
        for id in gone {
            self.remove(id);
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
        // An id that is not one the gateway writes names no token of the index.
        for id in ids.iter().filter_map(|id| TokenId::parse_stored(id)) {
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
    use crate::access::AccessNames;

    fn record(id: &str, name: &str, hash: SecretHash) -> TokenWithBlocks {
        TokenWithBlocks {
            token: TokenRecord {
                id: TokenId::parse_stored(id).expect("a canonical id"),
                name: name.to_string(),
                description: None,
                access: AccessNames::new(["security-director".to_string()]),
                secret_hash: hash,
                status: Status::Active,
                inactive_reason: None,
                created_at: Timestamp(1_000),
                activated_at: None,
                deactivated_at: None,
                last_used_at: Some(Timestamp(5_000)),
                expires_at: None,
                previous_secret: None,
                rate_limit: None,
                allowed_ips: None,
                revoked_hash: None,
                version: 1,
            },
            blocks: Vec::new(),
        }
    }

    const ID: &str = "6f1c1d2e-8b3a-4c5d-9e7f-0a1b2c3d4e5f";

    #[test]
    fn the_index_grants_from_its_own_access_types() {
        use crate::access::AccessType;
        let t = |n: &str| AccessType {
            name: n.into(),
            label: n.into(),
        };
        let types = Arc::new(AccessTypes::new(vec![t("reports"), t("billing")]).unwrap());
        let index = TokenIndex::new(types.clone());
        let mut r = record(ID, "one", SecretHash::of(b"a"));
        r.token.access =
            AccessNames::new(["security-director", "reports", "billing"].map(String::from));
        index.upsert(r);
        let got = index.get(&SecretHash::of(b"a")).unwrap();
        assert!(got.access.contains(types.bit("reports").unwrap()));
        assert!(got.access.contains(types.bit("billing").unwrap()));
        // The seed type is held but not configured here: it grants nothing, and the
        // header names only what is granted, sorted.
        assert_eq!(got.identity(&types).access, "billing,reports");
        let seed = TokenIndex::default();
        let mut r = record(ID, "one", SecretHash::of(b"a"));
        r.token.access = AccessNames::new(["reports".to_string()]);
        seed.upsert(r);
        let got = seed.get(&SecretHash::of(b"a")).unwrap();
        assert!(got.access.is_empty());
        assert_eq!(got.identity(seed.access_types()).access, "");
    }

    #[test]
    fn a_previous_secret_is_indexed_while_the_token_holds_it() {
        let index = TokenIndex::default();
        let (a, b, c) = (
            SecretHash::of(b"a"),
            SecretHash::of(b"b"),
            SecretHash::of(b"c"),
        );
        index.upsert(record(ID, "one", a));
        assert!(index.get_previous(&a).is_none());
        // Rotated with a grace: b is current, a the previous secret.
        let mut r = record(ID, "one", b);
        r.token.previous_secret = Some(PreviousSecret {
            hash: a,
            until: Timestamp(10),
        });
        index.upsert(r.clone());
        assert!(index.get(&a).is_none(), "a is no longer the current secret");
        assert_eq!(
            &*index
                .get_previous(&a)
                .expect("a is the previous secret")
                .name,
            "one"
        );
        assert_eq!(index.previous_count.load(Ordering::Relaxed), 1);
        // The same state again (a refresh) keeps one entry.
        index.upsert(r);
        assert_eq!(index.previous_count.load(Ordering::Relaxed), 1);
        // Rotated again without a grace: neither a nor b works, c does.
        index.upsert(record(ID, "one", c));
        assert!(index.get_previous(&a).is_none() && index.get(&b).is_none());
        assert!(index.get(&c).is_some());
        assert_eq!(index.previous_count.load(Ordering::Relaxed), 0);
        // A deleted token leaves no previous entry behind.
        let mut r = record(ID, "one", a);
        r.token.previous_secret = Some(PreviousSecret {
            hash: c,
            until: Timestamp(10),
        });
        index.upsert(r);
        index.remove(TokenId::parse_stored(ID).unwrap());
        assert!(index.get_previous(&c).is_none());
        assert_eq!(index.previous_count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_new_hash_replaces_the_old_and_keeps_the_last_use() {
        let index = TokenIndex::default();
        let (a, b) = (SecretHash::of(b"a"), SecretHash::of(b"b"));
        index.upsert(record(ID, "one", a));
        let first = index.get(&a).expect("found by hash");
        assert_eq!(first.identity(index.access_types()).name, "one");
        assert_eq!(first.identity(index.access_types()).id, ID);
        first.touch(Timestamp(9_000));
        // Same id, new secret (a regenerate): the old hash is gone, the use is kept.
        index.upsert(record(ID, "one", b));
        assert!(index.get(&a).is_none());
        let second = index.get(&b).expect("found by the new hash");
        assert_eq!(second.last_used_at(), Some(Timestamp(9_000)));
        assert!(Arc::ptr_eq(&second, &index.get_by_id(ID).unwrap()));
        assert_eq!(index.len(), 1);
        index.remove(second.id);
        assert!(index.get(&b).is_none() && index.get_by_id(ID).is_none() && index.is_empty());
    }

    #[test]
    fn many_tokens_are_all_found_and_unknown_hashes_are_not() {
        let index = TokenIndex::default();
        for i in 0..10_000u32 {
            let id = format!("00000000-0000-4000-8000-{i:012}");
            index.upsert(record(&id, "t", SecretHash::of(&i.to_le_bytes())));
        }
        assert_eq!(index.len(), 10_000);
        for i in 0..10_000u32 {
            let t = index
                .get(&SecretHash::of(&i.to_le_bytes()))
                .expect("present");
            assert_eq!(t.id_string(), format!("00000000-0000-4000-8000-{i:012}"));
        }
        assert!(index.get(&SecretHash::of(b"unknown")).is_none());
        assert_eq!(index.used_since(Timestamp(4_999)).len(), 10_000);
        assert!(index.used_since(Timestamp(5_000)).is_empty());
    }
}

#[cfg(test)]
mod size {
    /// The per-token memory budget of the module comment: a token without limits pays one
    /// pointer for them.
    #[test]
    fn a_token_state_stays_within_its_allocation_budget() {
        let size = std::mem::size_of::<super::TokenState>();
        assert!(size <= 160, "TokenState is {size} bytes");
    }
}
