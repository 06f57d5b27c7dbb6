//! Stored responses of the Responses API, behind one small interface
//! ([`ResponseStore`]): what `store: true` keeps so `previous_response_id`
//! can continue a conversation and `GET /v1/responses/{id}` can read it
//! back. [`MemoryStore`] keeps them in this process, bounded by count,
//! bytes and age; a store shared by several replicas implements the same
//! trait.
//!
//! A stored response is JSON only (the response object, and the
//! conversation's items up to and including its output), so any store can
//! keep it as bytes.
//!
//! [`Responses`] is what handlers use: this replica's [`MemoryStore`], and
//! with a cluster, Redis too (a hash per response with the store's TTL),
//! so a response stored by one replica continues on another.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::config::ResponsesConfig;
use crate::support::sync::lock;

/// One stored response: its three JSON documents in one buffer. A store
/// at its bound evicts one response for every one it keeps, long after it
/// was written, when its memory is out of the CPU's caches: one block to
/// free, not one per document, keeps that cheap.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The body, then the input, then the conversation.
    buf: Vec<u8>,
    input_at: usize,
    conversation_at: usize,
}

impl Stored {
    /// The three documents copied into one buffer of their size.
    pub fn new(body: &[u8], input: &[u8], conversation: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(body.len() + input.len() + conversation.len());
        buf.extend_from_slice(body);
        buf.extend_from_slice(input);
        buf.extend_from_slice(conversation);
        Stored {
            buf,
            input_at: body.len(),
            conversation_at: body.len() + input.len(),
        }
    }

    /// The response object as `GET /v1/responses/{id}` returns it.
    pub fn body(&self) -> &[u8] {
        &self.buf[..self.input_at]
    }

    /// The request's input items (with ids), as
    /// `GET /v1/responses/{id}/input_items` lists them.
    pub fn input(&self) -> &[u8] {
        &self.buf[self.input_at..self.conversation_at]
    }

    /// The whole conversation as input items: the earlier responses'
    /// items, this request's input, then its output. A request naming this
    /// response as `previous_response_id` continues from here.
    pub fn conversation(&self) -> &[u8] {
        &self.buf[self.conversation_at..]
    }

    fn bytes(&self) -> usize {
        self.buf.len()
    }
}

/// Who may read a stored response: a hash of the API key that stored it.
pub type Owner = u64;

/// Where stored responses live.
pub trait ResponseStore: Send + Sync + 'static {
    fn put(&self, owner: Owner, id: &str, stored: Stored);
    /// The response, if it is stored for this owner and not expired.
    fn get(&self, owner: Owner, id: &str) -> Option<Arc<Stored>>;
    /// Whether there was such a response to delete.
    fn delete(&self, owner: Owner, id: &str) -> bool;
}

/// A response's owner and id; the id is shared by the map and the order
/// of insertion, one allocation for both.
type Key = (Owner, Arc<str>);

struct Entry {
    stored: Arc<Stored>,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    /// Seeded at random (the ids in it are troupe's, looked up by what
    /// clients send), and much cheaper per lookup than the default SipHash.
    map: HashMap<Key, Entry, foldhash::fast::RandomState>,
    /// Keys oldest first; a key deleted or replaced stays here until it
    /// reaches the front, where it is skipped.
    order: VecDeque<(Key, Instant)>,
    bytes: usize,
}

/// Stored responses in this process's memory: at most `max_responses`
/// responses and `max_bytes` bytes, each for `ttl`; the oldest go first.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_responses: usize,
    max_bytes: usize,
    ttl: Duration,
}

impl MemoryStore {
    pub fn new(cfg: &ResponsesConfig) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            max_responses: cfg.store_max_responses,
            max_bytes: cfg.store_max_bytes.0,
            ttl: cfg.store_ttl,
        }
    }

    /// Drops the oldest entries while over a bound or expired.
    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((key, at)) = inner.order.front() {
            let over = inner.map.len() > self.max_responses || inner.bytes > self.max_bytes;
            let expired = now.duration_since(*at) >= self.ttl;
            let current = inner.map.get(key).is_some_and(|e| e.at == *at);
            if current && !over && !expired {
                break;
            }
            let Some((key, at)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&key).is_some_and(|e| e.at == at) {
                if let Some(e) = inner.map.remove(&key) {
                    inner.bytes -= e.stored.bytes();
                }
            }
        }
    }
}

impl ResponseStore for MemoryStore {
    fn put(&self, owner: Owner, id: &str, stored: Stored) {
        if self.max_responses == 0 || stored.bytes() > self.max_bytes {
            return;
        }
        let now = Instant::now();
        let key: Key = (owner, id.into());
        let mut inner = lock(&self.inner);
        inner.bytes += stored.bytes();
        let entry = Entry {
            stored: Arc::new(stored),
            at: now,
        };
        if let Some(old) = inner.map.insert(key.clone(), entry) {
            inner.bytes -= old.stored.bytes();
        }
        inner.order.push_back((key, now));
        self.evict(&mut inner, now);
    }

    fn get(&self, owner: Owner, id: &str) -> Option<Arc<Stored>> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        self.evict(&mut inner, now);
        let key: Key = (owner, id.into());
        inner
            .map
            .get(&key)
            .filter(|e| now.duration_since(e.at) < self.ttl)
            .map(|e| e.stored.clone())
    }

    fn delete(&self, owner: Owner, id: &str) -> bool {
        let mut inner = lock(&self.inner);
        let key: Key = (owner, id.into());
        match inner.map.remove(&key) {
            Some(e) => {
                inner.bytes -= e.stored.bytes();
                true
            }
            None => false,
        }
    }
}

/// Stored responses: this replica's own, and the cluster's when there is
/// one. Writes go to both (Redis in the background: the answer does not
/// wait for it); reads ask Redis first, so a response deleted on another
/// replica is gone here too, and fall back to this replica's copy when
/// Redis lacks it (a write still on its way) or cannot be reached.
pub struct Responses {
    local: Arc<dyn ResponseStore>,
    cluster: Option<Arc<Cluster>>,
    ttl: Duration,
}

/// The hash fields of a response in Redis.
const BODY: &str = "body";
const INPUT: &str = "input";
const CONVERSATION: &str = "conversation";
/// Set by a delete: the response is gone, whatever a replica still holds.
const DELETED: &str = "deleted";

impl Responses {
    pub(crate) fn new(cfg: &ResponsesConfig, cluster: Option<Arc<Cluster>>) -> Self {
        Responses {
            local: Arc::new(MemoryStore::new(cfg)),
            cluster,
            ttl: cfg.store_ttl,
        }
    }

    /// The cluster these responses are shared in, if any.
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    fn key(cluster: &Cluster, owner: Owner, id: &str) -> String {
        cluster.key(&["resp", &format!("{owner:016x}"), id])
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub fn put(&self, owner: Owner, id: &str, stored: Stored) {
        if let Some(cluster) = self.cluster.clone() {
            let key = Self::key(&cluster, owner, id);
            let ttl = self.ttl_ms();
            let shared = stored.clone();
            tokio::spawn(async move {
                cluster
                    .run("store a response", |mut conn| async move {
                        redis::pipe()
                            .atomic()
                            .hset_multiple(
                                &key,
                                &[
                                    (BODY, shared.body()),
                                    (INPUT, shared.input()),
                                    (CONVERSATION, shared.conversation()),
                                ],
                            )
                            .ignore()
                            .pexpire(&key, ttl as i64)
                            .ignore()
                            .query_async::<()>(&mut conn)
                            .await
                    })
                    .await
            });
        }
        self.local.put(owner, id, stored);
    }

    pub async fn get(&self, owner: Owner, id: &str) -> Option<Arc<Stored>> {
        if let Some(cluster) = &self.cluster {
            let key = Self::key(cluster, owner, id);
            type Fields = (
                Option<Vec<u8>>,
                Option<Vec<u8>>,
                Option<Vec<u8>>,
                Option<String>,
            );
            let found = cluster
                .run("read a response", |mut conn| async move {
                    redis::cmd("HMGET")
                        .arg(&key)
                        .arg(BODY)
                        .arg(INPUT)
                        .arg(CONVERSATION)
                        .arg(DELETED)
                        .query_async::<Fields>(&mut conn)
                        .await
                })
                .await;
            match found {
                Some((_, _, _, Some(_))) => {
                    self.local.delete(owner, id);
                    return None;
                }
                Some((Some(body), Some(input), Some(conversation), None)) => {
                    return Some(Arc::new(Stored::new(&body, &input, &conversation)));
                }
                _ => {}
            }
        }
        self.local.get(owner, id)
    }

    pub async fn delete(&self, owner: Owner, id: &str) -> bool {
        let here = self.local.delete(owner, id);
        let Some(cluster) = &self.cluster else {
            return here;
        };
        let key = Self::key(cluster, owner, id);
        let ttl = self.ttl_ms();
        // A mark rather than DEL: a replica holding its own copy reads the
        // mark and drops the copy.
        let existed = cluster
            .run("delete a response", |mut conn| async move {
                let (body, gone): (bool, bool) = redis::pipe()
                    .atomic()
                    .hexists(&key, BODY)
                    .hexists(&key, DELETED)
                    .cmd("HSET")
                    .arg(&key)
                    .arg(BODY)
                    .arg("")
                    .arg(DELETED)
                    .arg(1)
                    .ignore()
                    .pexpire(&key, ttl as i64)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                Ok(body && !gone)
            })
            .await;
        here || existed.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn stored(n: usize) -> Stored {
        Stored::new(&vec![b'x'; n], &[], &[])
    }

    #[test]
    fn a_stored_response_gives_back_its_three_documents() {
        let s = Stored::new(b"{\"id\":1}", b"[1]", b"[1,2]");
        assert_eq!(s.body(), b"{\"id\":1}");
        assert_eq!(s.input(), b"[1]");
        assert_eq!(s.conversation(), b"[1,2]");
        assert_eq!(s.bytes(), 8 + 3 + 5);
        let empty = Stored::new(b"", b"", b"[]");
        assert!(empty.body().is_empty() && empty.input().is_empty());
        assert_eq!(empty.conversation(), b"[]");
    }

    fn store(count: usize, bytes: usize, ttl: Duration) -> MemoryStore {
        MemoryStore::new(&ResponsesConfig {
            store_max_responses: count,
            store_max_bytes: ByteSize(bytes),
            store_ttl: ttl,
        })
    }

    #[test]
    fn owners_never_see_each_others_responses() {
        let s = store(10, 1000, Duration::from_secs(60));
        s.put(1, "resp_a", stored(3));
        assert!(s.get(1, "resp_a").is_some());
        assert!(s.get(2, "resp_a").is_none());
        assert!(!s.delete(2, "resp_a"));
        assert!(s.delete(1, "resp_a"));
        assert!(s.get(1, "resp_a").is_none());
    }

    #[test]
    fn the_oldest_go_first_past_a_bound() {
        let s = store(2, 1000, Duration::from_secs(60));
        for id in ["a", "b", "c"] {
            s.put(1, id, stored(1));
        }
        assert!(s.get(1, "a").is_none());
        assert!(s.get(1, "b").is_some() && s.get(1, "c").is_some());
        let s = store(100, 10, Duration::from_secs(60));
        s.put(1, "a", stored(6));
        s.put(1, "b", stored(6));
        assert!(s.get(1, "a").is_none() && s.get(1, "b").is_some());
        assert_eq!(lock(&s.inner).bytes, 6);
        // Too big to keep at all.
        s.put(1, "huge", stored(11));
        assert!(s.get(1, "huge").is_none());
    }

    #[test]
    fn replaced_and_deleted_entries_keep_the_byte_count_right() {
        let s = store(100, 100, Duration::from_secs(60));
        s.put(1, "a", stored(10));
        s.put(1, "a", stored(20));
        s.put(1, "b", stored(5));
        assert!(s.delete(1, "b"));
        assert_eq!(lock(&s.inner).bytes, 20);
        assert_eq!(s.get(1, "a").map(|e| e.body().len()), Some(20));
    }

    #[test]
    fn responses_expire() {
        let s = store(10, 1000, Duration::from_millis(20));
        s.put(1, "a", stored(1));
        assert!(s.get(1, "a").is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(s.get(1, "a").is_none());
        assert_eq!(lock(&s.inner).bytes, 0);
    }
}
