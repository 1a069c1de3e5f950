//! What this process knows about mailboxes without asking the database.
//!
//! On PostgreSQL a round trip costs more than most of what an IMAP command
//! does, and most commands used to make one only to learn that nothing had
//! changed, or to read data that never changes. Two process-wide structures
//! spare those round trips:
//!
//! * [`Freshness`] (PostgreSQL only): for each mailbox, the highest
//!   HIGHESTMODSEQ this process has seen, from its own reads and writes and
//!   from the change notifications of every process sharing the database
//!   (LISTEN), and when it last heard so. A session whose view of the
//!   mailbox is at that MODSEQ is current ([`Store::is_current`]) and need
//!   not ask. Every committed change to a mailbox raises its HIGHESTMODSEQ
//!   and is announced ([`Store::notify`](crate::Store)); changes that do not
//!   raise it (RENAME, deleting an account) are announced as *structural*
//!   and drop what is known. The marks are trusted only while the LISTEN
//!   connection is up and has been up since they were taken (an epoch that
//!   every loss of it, and every structural change, moves on), and only for
//!   `fresh_for` after the last news of the mailbox: that bounds how long a
//!   change whose notification never came (its writer crashed between the
//!   commit and the notification) can stay unseen. A change committed by
//!   another process is seen here once its notification arrives, a few
//!   milliseconds after its commit; changes made through this process are
//!   known at once.
//! * [`MessageCache`] (both backends): message texts and parse caches by
//!   (mailbox id, UID), which never change once written (a mailbox id is
//!   never reused, nor a UID in a mailbox), bounded in bytes, least recently
//!   used out first. APPEND fills it with what it stored; FETCH fills it
//!   with what it read. An entry unused for `idle` (a minute by default) is
//!   dropped by a sweep ([`MessageCache::expire`], run by a task of the
//!   store every quarter of `idle`): a server that goes quiet after a burst
//!   gives the memory back instead of holding its budget forever (Dovecot's
//!   equivalent is the kernel's page cache, which the kernel reclaims).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;

/// Locks `m`, carrying on after a panic elsewhere (the data stays valid:
/// every update is a single assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks of the mailboxes' latest known HIGHESTMODSEQ (see the module docs).
#[derive(Debug)]
pub(crate) struct Freshness {
    /// How long news of a mailbox is trusted; zero turns the marks off.
    fresh_for: Duration,
    marks: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    /// The LISTEN connection is up: every change committed from now on
    /// will be heard of.
    live: bool,
    /// Moves on with every loss of the LISTEN connection and every
    /// structural change; a read taken in an earlier epoch is not trusted.
    epoch: u64,
    /// Mailbox id → (highest HIGHESTMODSEQ seen, when last heard of).
    map: HashMap<i64, (u64, Instant)>,
    /// Inserts since the map was last pruned of stale marks.
    inserts: usize,
}

/// The epoch a read started in ([`Freshness::token`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token(u64);

/// Stale marks are pruned after this many new ones.
const PRUNE_EVERY: usize = 4096;

impl Freshness {
    pub(crate) fn new(fresh_for: Duration) -> Freshness {
        Freshness {
            fresh_for,
            marks: Mutex::new(Marks::default()),
        }
    }

    /// Take before a read whose HIGHESTMODSEQ will be observed: `None` when
    /// nothing can be trusted now (marks off, or LISTEN not up).
    pub(crate) fn token(&self) -> Option<Token> {
        if self.fresh_for.is_zero() {
            return None;
        }
        let m = lock(&self.marks);
        m.live.then_some(Token(m.epoch))
    }

    /// A read that started with `token` saw the mailbox at `modseq`.
    pub(crate) fn observe(&self, token: Option<Token>, mailbox: i64, modseq: u64) {
        let Some(Token(epoch)) = token else {
            return;
        };
        let mut m = lock(&self.marks);
        if m.live && m.epoch == epoch {
            self.raise(&mut m, mailbox, modseq);
        }
    }

    /// A committed change (this process's, or announced by LISTEN) took the
    /// mailbox to `modseq`.
    pub(crate) fn changed(&self, mailbox: i64, modseq: u64) {
        if self.fresh_for.is_zero() {
            return;
        }
        let mut m = lock(&self.marks);
        if m.live {
            self.raise(&mut m, mailbox, modseq);
        }
    }

    /// The mailbox was renamed or deleted, or (`None`) an account went:
    /// forget what is known of it (of everything, for `None`) and distrust
    /// reads in flight.
    pub(crate) fn restructured(&self, mailbox: Option<i64>) {
        let mut m = lock(&self.marks);
        m.epoch += 1;
        match mailbox {
            Some(id) => {
                m.map.remove(&id);
            }
            None => m.map.clear(),
        }
    }

    /// The LISTEN connection is (again) up: from now on every change will be
    /// heard of; what was known before may have missed some.
    pub(crate) fn listening(&self) {
        let mut m = lock(&self.marks);
        m.live = true;
        m.epoch += 1;
        m.map.clear();
    }

    /// The LISTEN connection is lost: changes may go unheard.
    pub(crate) fn lost(&self) {
        let mut m = lock(&self.marks);
        m.live = false;
        m.epoch += 1;
        m.map.clear();
    }

    /// Whether the mailbox is known to be at `modseq` now.
    pub(crate) fn is_current(&self, mailbox: i64, modseq: u64) -> bool {
        if self.fresh_for.is_zero() {
            return false;
        }
        let m = lock(&self.marks);
        m.live
            && m.map
                .get(&mailbox)
                .is_some_and(|&(seen, at)| seen == modseq && at.elapsed() < self.fresh_for)
    }

    fn raise(&self, m: &mut Marks, mailbox: i64, modseq: u64) {
        let now = Instant::now();
        match m.map.get_mut(&mailbox) {
            Some(mark) if modseq > mark.0 => *mark = (modseq, now),
            Some(mark) if modseq == mark.0 => mark.1 = now,
            Some(_) => {} // older news
            None => {
                m.map.insert(mailbox, (modseq, now));
                m.inserts += 1;
                if m.inserts >= PRUNE_EVERY {
                    m.inserts = 0;
                    let fresh_for = self.fresh_for;
                    m.map
                        .retain(|_, (_, at)| now.duration_since(*at) < fresh_for);
                }
            }
        }
    }
}

/// Message texts and parse caches by (mailbox id, UID) (see the module
/// docs).
#[derive(Debug)]
pub(crate) struct MessageCache {
    budget: usize,
    /// Entries unused this long are dropped by [`MessageCache::expire`].
    idle: Duration,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    /// Least recently used first.
    map: LinkedHashMap<(i64, u32), Cached>,
    bytes: usize,
}

#[derive(Debug)]
struct Cached {
    text: Option<Arc<[u8]>>,
    /// The parse cache column: `Some(None)` when the message has none.
    parse: Option<Option<Arc<str>>>,
    /// Last stored or found.
    used: Instant,
}

/// What a lookup found (UID and value, in the order asked) and the UIDs it
/// missed.
pub(crate) type Lookup<T> = (Vec<(u32, T)>, Vec<u32>);

/// Book-keeping bytes counted per entry besides its data.
const ENTRY_OVERHEAD: usize = 96;

impl Cached {
    fn weight(&self) -> usize {
        ENTRY_OVERHEAD
            + self.text.as_ref().map_or(0, |t| t.len())
            + self
                .parse
                .as_ref()
                .and_then(|p| p.as_ref())
                .map_or(0, |p| p.len())
    }
}

impl MessageCache {
    /// A cache of at most `budget` bytes (0: none) whose entries unused for
    /// `idle` go at the next [`MessageCache::expire`] (zero: never).
    pub(crate) fn new(budget: usize, idle: Duration) -> MessageCache {
        MessageCache {
            budget,
            idle,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    /// How often [`MessageCache::expire`] should run; `None` when it has
    /// nothing to do (no cache, or no idle limit).
    pub(crate) fn sweep_every(&self) -> Option<Duration> {
        (self.budget > 0 && !self.idle.is_zero())
            .then(|| (self.idle / 4).max(Duration::from_millis(10)))
    }

    /// Drops the entries unused for the idle limit; returns how many went.
    pub(crate) fn expire(&self) -> usize {
        self.expire_at(Instant::now())
    }

    fn expire_at(&self, now: Instant) -> usize {
        if self.idle.is_zero() {
            return 0;
        }
        let mut inner = lock(&self.inner);
        let mut dropped = 0;
        // Least recently used first: stop at the first entry still in use.
        while inner
            .map
            .front()
            .is_some_and(|(_, c)| now.saturating_duration_since(c.used) >= self.idle)
        {
            if let Some((_, c)) = inner.map.pop_front() {
                inner.bytes -= c.weight();
                dropped += 1;
            }
        }
        if inner.map.is_empty() && inner.map.capacity() > 0 {
            // The table itself, sized for the budget's worth of entries.
            inner.map = LinkedHashMap::new();
        }
        dropped
    }

    /// Entries larger than this are not kept: one big message would push
    /// out many small ones, and is read rarely.
    fn max_entry(&self) -> usize {
        self.budget / 64
    }

    /// The cached texts of `uids` (in their order), and the UIDs missed.
    pub(crate) fn texts(&self, mailbox: i64, uids: &[u32]) -> Lookup<Arc<[u8]>> {
        self.lookup(mailbox, uids, |c| c.text.clone())
    }

    /// The cached parse caches of `uids` (in their order), and the UIDs
    /// missed.
    pub(crate) fn parses(&self, mailbox: i64, uids: &[u32]) -> Lookup<Option<Arc<str>>> {
        self.lookup(mailbox, uids, |c| c.parse.clone())
    }

    fn lookup<T>(
        &self,
        mailbox: i64,
        uids: &[u32],
        get: impl Fn(&Cached) -> Option<T>,
    ) -> Lookup<T> {
        if self.budget == 0 {
            return (Vec::new(), uids.to_vec());
        }
        let mut hits = Vec::with_capacity(uids.len());
        let mut missed = Vec::new();
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        for &uid in uids {
            let found = inner.map.to_back(&(mailbox, uid)).and_then(|c| {
                let v = get(c);
                if v.is_some() {
                    c.used = now;
                }
                v
            });
            match found {
                Some(v) => hits.push((uid, v)),
                None => missed.push(uid),
            }
        }
        (hits, missed)
    }

    /// Keeps the text of a message.
    pub(crate) fn put_text(&self, mailbox: i64, uid: u32, text: &[u8]) {
        if text.len() + ENTRY_OVERHEAD <= self.max_entry() {
            self.update(mailbox, uid, |c| c.text = Some(Arc::from(text)));
        }
    }

    /// Keeps the parse cache of a message.
    pub(crate) fn put_parse(&self, mailbox: i64, uid: u32, parse: Option<&str>) {
        if parse.map_or(0, str::len) + ENTRY_OVERHEAD <= self.max_entry() {
            self.update(mailbox, uid, |c| c.parse = Some(parse.map(Arc::from)));
        }
    }

    /// Drops the entries of messages that are gone.
    pub(crate) fn forget(&self, mailbox: i64, uids: &[u32]) {
        if self.budget == 0 {
            return;
        }
        let mut inner = lock(&self.inner);
        for &uid in uids {
            if let Some(c) = inner.map.remove(&(mailbox, uid)) {
                inner.bytes -= c.weight();
            }
        }
    }

    fn update(&self, mailbox: i64, uid: u32, set: impl FnOnce(&mut Cached)) {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let now = Instant::now();
        if !inner.map.contains_key(&(mailbox, uid)) {
            let fresh = Cached {
                text: None,
                parse: None,
                used: now,
            };
            inner.map.insert((mailbox, uid), fresh);
            inner.bytes += ENTRY_OVERHEAD;
        }
        let entry = inner.map.to_back(&(mailbox, uid)).expect("present");
        let before = entry.weight();
        entry.used = now;
        set(entry);
        inner.bytes = inner.bytes + entry.weight() - before;
        while inner.bytes > self.budget {
            match inner.map.pop_front() {
                Some((_, c)) => inner.bytes -= c.weight(),
                None => break,
            }
        }
    }

    /// Bytes held (for tests).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_need_a_live_listener_and_the_same_epoch() {
        let f = Freshness::new(Duration::from_secs(60));
        assert!(f.token().is_none(), "nothing is trusted before LISTEN");
        f.changed(1, 5);
        assert!(!f.is_current(1, 5));
        f.listening();
        let t = f.token();
        f.observe(t, 1, 5);
        assert!(f.is_current(1, 5));
        assert!(!f.is_current(1, 4));
        // News of a later change wins over an older read finishing late.
        f.changed(1, 7);
        f.observe(t, 1, 6);
        assert!(f.is_current(1, 7) && !f.is_current(1, 6));
        // A read begun before a rename is not trusted.
        let before = f.token();
        f.restructured(Some(1));
        assert!(!f.is_current(1, 7));
        f.observe(before, 1, 7);
        assert!(!f.is_current(1, 7));
        f.observe(f.token(), 1, 7);
        assert!(f.is_current(1, 7));
        // Losing LISTEN forgets everything and trusts nothing until it is back.
        f.lost();
        assert!(!f.is_current(1, 7));
        assert!(f.token().is_none());
        f.changed(1, 8);
        assert!(!f.is_current(1, 8));
    }

    #[test]
    fn marks_expire() {
        // Generous: a loaded machine may pause this thread for a while
        // between the change and the first check (issue 18).
        let f = Freshness::new(Duration::from_millis(500));
        f.listening();
        f.changed(3, 2);
        assert!(f.is_current(3, 2));
        std::thread::sleep(Duration::from_millis(600));
        assert!(!f.is_current(3, 2));
        let off = Freshness::new(Duration::ZERO);
        off.listening();
        off.changed(3, 2);
        assert!(!off.is_current(3, 2) && off.token().is_none());
    }

    #[test]
    fn cache_keeps_within_its_budget_least_recently_used_out() {
        let c = MessageCache::new(64 * (1000 + ENTRY_OVERHEAD), Duration::ZERO);
        let text = vec![b'x'; 1000];
        for uid in 1..=64 {
            c.put_text(9, uid, &text);
        }
        assert!(c.bytes() <= 64 * (1000 + ENTRY_OVERHEAD));
        // Touch 1, then add one more: 2 goes, 1 stays.
        assert_eq!(c.texts(9, &[1]).1, Vec::<u32>::new());
        c.put_text(9, 65, &text);
        let (hits, missed) = c.texts(9, &[1, 2, 65]);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 65]);
        assert_eq!(missed, [2]);
        // A parse cache joins the text's entry; a missing one is remembered.
        c.put_parse(9, 1, Some("{}"));
        c.put_parse(9, 65, None);
        let (hits, missed) = c.parses(9, &[1, 65, 3]);
        assert_eq!(hits.len(), 2);
        assert!(hits[1].1.is_none());
        assert_eq!(missed, [3]);
        c.forget(9, &[1, 65]);
        assert_eq!(c.texts(9, &[1, 65]).1, [1, 65]);
        // Too big for the cache: not kept.
        c.put_text(9, 100, &vec![b'y'; 2000]);
        assert_eq!(c.texts(9, &[100]).1, [100]);
        let none = MessageCache::new(0, Duration::from_secs(60));
        none.put_text(1, 1, b"x");
        assert_eq!(none.texts(1, &[1]).1, [1]);
        assert_eq!(none.sweep_every(), None);
        assert_eq!(c.sweep_every(), None, "no idle limit, no sweep");
        assert_eq!(c.expire(), 0);
    }

    #[test]
    fn cache_entries_unused_for_the_idle_limit_go() {
        let idle = Duration::from_secs(60);
        let c = MessageCache::new(1 << 20, idle);
        assert_eq!(c.sweep_every(), Some(Duration::from_secs(15)));
        let start = Instant::now();
        for uid in 1..=3 {
            c.put_text(4, uid, b"hello");
        }
        c.put_parse(4, 3, Some("{}"));
        // Nothing is old yet.
        assert_eq!(c.expire_at(start), 0);
        // A hit keeps an entry: 2 is used again later than the others.
        std::thread::sleep(Duration::from_millis(20));
        let used = Instant::now();
        assert_eq!(c.texts(4, &[2]).1, Vec::<u32>::new());
        // An idle limit after the first puts and before the hit: 1 and 3 go.
        assert_eq!(c.expire_at(used - Duration::from_millis(10) + idle), 2);
        assert_eq!(c.texts(4, &[1, 2, 3]).1, [1, 3]);
        assert_eq!(c.bytes(), ENTRY_OVERHEAD + 5);
        assert_eq!(c.expire_at(Instant::now() + idle), 1);
        assert_eq!(c.bytes(), 0);
        // The cache still works after emptying.
        c.put_text(4, 9, b"again");
        assert_eq!(c.texts(4, &[9]).0.len(), 1);
    }
}
