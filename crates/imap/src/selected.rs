//! What a session knows about its selected mailbox, and how it learns what
//! other sessions (and deliveries) changed.
//!
//! The session keeps the list of messages it has announced, in sequence
//! order (UID order). After each command, and when IDLE hears of a change,
//! [`Selected::sync`] reads the store's changes since the last MODSEQ it
//! saw and announces them:
//!
//! * flag changes as `FETCH (FLAGS …)` (with `UID` and `MODSEQ` when
//!   CONDSTORE is on);
//! * new messages as `EXISTS`;
//! * removed messages as `EXPUNGE` (or `VANISHED` with QRESYNC), but only
//!   when the command allows it: RFC 9051 §7.5.1 forbids EXPUNGE during
//!   FETCH, STORE and SEARCH (their sequence numbers would shift under the
//!   client), so there a removal stays pending, the message keeps its number
//!   until a later command may announce it, and it reads as gone.
//!
//! * keywords new to the session (set by its own STORE, or by another
//!   session) are announced with `* FLAGS` and `* OK [PERMANENTFLAGS]`
//!   before any FETCH response names them (RFC 9051 §7.3.5, RFC 3501
//!   §7.2.6): [`Selected::announce_keywords`] runs wherever `messages`
//!   takes new metadata, before its FETCH responses are written.
//!
//! Invariants: `messages` is sorted by UID, and contains every message the
//! client was told about and not yet told was expunged; every keyword of
//! `messages` is in `keywords`, which the client was told of.
//!
//! While the session hibernates in IDLE, `messages` is kept packed
//! ([`Selected::pack`]: varints, about 13 bytes a message instead of 64 and
//! its allocation), and unpacked before anything reads it
//! ([`Selected::unpack`]); ten thousand idling sessions on mailboxes of a
//! hundred messages save about 60 MiB. Nothing but the IDLE wait sees the
//! packed form.

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mailroom_store::{Mailbox, MailboxSnapshot, MessageMeta, Result, Store, flag_bits};

/// The selected mailbox of a session.
#[derive(Debug)]
pub struct Selected {
    /// The mailbox row (id, name, UIDVALIDITY).
    pub mailbox: Mailbox,
    /// EXAMINE, or SELECT of a mailbox we may not change.
    pub read_only: bool,
    /// Announced messages, in sequence order.
    pub messages: Vec<MessageMeta>,
    /// UIDs removed in the store but not yet announced as expunged.
    pub pending_expunge: BTreeSet<u32>,
    /// The MODSEQ up to which the store's changes have been read.
    pub modseq: u64,
    /// The command now running learnt itself that the store held nothing
    /// newer than `modseq` (SELECT's snapshot; a STORE whose new MODSEQ was
    /// the next one): the sync after it skips its query. A change committed
    /// since is announced by the next sync, as it would be had it come a
    /// moment later.
    pub up_to_date: bool,
    /// The keywords the client was told of in FLAGS (any case once).
    pub keywords: Vec<String>,
    /// The UIDs this session claimed as `\Recent` (half-open ranges; see
    /// [`Store::claim_recent`]), for IMAP4rev1 sessions that selected the
    /// mailbox read-write.
    pub recent: Vec<std::ops::Range<u32>>,
    /// Whether this session claims `\Recent` for new messages it learns of.
    pub claims_recent: bool,
    /// `messages`, packed while the session waits in IDLE (then `messages`
    /// is empty; see [`Selected::pack`]).
    packed: Option<Vec<u8>>,
}

/// How a sync may speak.
#[derive(Debug, Clone, Copy)]
pub struct SyncMode {
    /// Whether EXPUNGE/VANISHED may be sent now.
    pub allow_expunge: bool,
    /// CONDSTORE is on: FETCH responses carry MODSEQ.
    pub condstore: bool,
    /// QRESYNC is on: removals are announced as VANISHED.
    pub qresync: bool,
}

impl Selected {
    /// A mailbox selected from its snapshot ([`Store::open_mailbox`]): its
    /// state and messages read together, so that UIDNEXT and HIGHESTMODSEQ
    /// match the messages.
    pub fn from_snapshot(snapshot: MailboxSnapshot, read_only: bool) -> Selected {
        let (mailbox, messages) = (snapshot.mailbox, snapshot.messages);
        let modseq = mailbox.highestmodseq;
        let mut selected = Selected {
            mailbox,
            read_only,
            messages,
            pending_expunge: BTreeSet::new(),
            modseq,
            up_to_date: true,
            keywords: Vec::new(),
            recent: Vec::new(),
            claims_recent: false,
            packed: None,
        };
        // SELECT's FLAGS response tells them (`write_flag_lines`).
        selected.new_keywords(0..selected.messages.len());
        selected
    }

    /// Packs `messages` for a session about to wait in IDLE: varints of
    /// each field (UIDs as differences), keywords as length-prefixed bytes.
    /// [`Selected::unpack`] must run before anything reads `messages`.
    pub fn pack(&mut self) {
        if self.packed.is_some() || self.messages.is_empty() {
            return;
        }
        let mut buf = Vec::with_capacity(self.messages.len() * 16);
        put_varint(&mut buf, self.messages.len() as u64);
        let mut last = 0u32;
        for m in &self.messages {
            put_varint(&mut buf, u64::from(m.uid.wrapping_sub(last)));
            last = m.uid;
            put_varint(&mut buf, m.modseq);
            put_varint(&mut buf, zigzag(m.flags));
            put_varint(&mut buf, zigzag(m.internal_date));
            put_varint(&mut buf, m.size);
            put_varint(&mut buf, m.keywords.len() as u64);
            for k in &m.keywords {
                put_varint(&mut buf, k.len() as u64);
                buf.extend_from_slice(k.as_bytes());
            }
        }
        buf.shrink_to_fit();
        self.messages = Vec::new();
        self.packed = Some(buf);
    }

    /// Restores `messages` packed by [`Selected::pack`] (nothing to do when
    /// it is not packed).
    pub fn unpack(&mut self) {
        let Some(buf) = self.packed.take() else {
            return;
        };
        let mut at = 0;
        let n = get_varint(&buf, &mut at) as usize;
        let mut messages = Vec::with_capacity(n);
        let mut last = 0u32;
        for _ in 0..n {
            let uid = last.wrapping_add(get_varint(&buf, &mut at) as u32);
            last = uid;
            let modseq = get_varint(&buf, &mut at);
            let flags = unzigzag(get_varint(&buf, &mut at));
            let internal_date = unzigzag(get_varint(&buf, &mut at));
            let size = get_varint(&buf, &mut at);
            let count = get_varint(&buf, &mut at) as usize;
            let mut keywords = Vec::with_capacity(count);
            for _ in 0..count {
                let len = get_varint(&buf, &mut at) as usize;
                let end = (at + len).min(buf.len());
                // Packed from `String`s: always UTF-8.
                keywords.push(String::from_utf8_lossy(&buf[at..end]).into_owned());
                at = end;
            }
            messages.push(MessageMeta {
                uid,
                modseq,
                flags,
                keywords,
                internal_date,
                size,
            });
        }
        self.messages = messages;
    }

    /// Whether the message with `uid` is `\Recent` in this session.
    pub fn is_recent(&self, uid: u32) -> bool {
        self.recent.iter().any(|r| r.contains(&uid))
    }

    /// How many messages in the view are `\Recent` in this session.
    pub fn recent_count(&self) -> usize {
        if self.recent.is_empty() {
            return 0;
        }
        self.messages
            .iter()
            .filter(|m| self.is_recent(m.uid))
            .count()
    }

    /// Claims `\Recent` for the UIDs up to the mailbox's UIDNEXT that no
    /// session has claimed yet (IMAP4rev1, read-write only; a no-op
    /// otherwise). Returns whether anything was claimed.
    pub async fn claim_recent(&mut self, store: &Store) -> Result<bool> {
        if !self.claims_recent {
            return Ok(false);
        }
        let upto = self.mailbox.uidnext;
        if self.recent.last().is_some_and(|r| r.end >= upto) {
            return Ok(false); // claimed up to UIDNEXT already: nothing new
        }
        let first = store.claim_recent(self.mailbox.id, upto).await?;
        if first >= upto {
            return Ok(false);
        }
        self.recent.push(first..upto);
        Ok(true)
    }

    /// Takes the keywords of the messages at `idx` (0-based) into
    /// [`Selected::keywords`]; whether any was new.
    fn new_keywords(&mut self, idx: impl IntoIterator<Item = usize>) -> bool {
        let mut grew = false;
        for i in idx {
            for k in &self.messages[i].keywords {
                if !self.keywords.iter().any(|x| x.eq_ignore_ascii_case(k)) {
                    self.keywords.push(k.clone());
                    grew = true;
                }
            }
        }
        grew
    }

    /// Announces the keywords of the messages at `idx` (0-based) that the
    /// client was not told of yet, with `* FLAGS` and `* OK
    /// [PERMANENTFLAGS]` (see the module docs). Call before writing FETCH
    /// responses about those messages.
    pub fn announce_keywords(&mut self, idx: impl IntoIterator<Item = usize>, out: &mut Vec<u8>) {
        if self.new_keywords(idx) {
            write_flag_lines(out, &self.keywords, self.read_only);
        }
    }

    /// The same mailbox selected again when the store has changed nothing
    /// since [`Selected::modseq`] (`mailbox` is its row, just read, or the
    /// session's own when the process knows the mailbox to be at that
    /// MODSEQ): the session's view is then exactly the store's
    /// state (every change up to `modseq` is applied to `messages`, and the
    /// removals not yet announced are in `pending_expunge`), so it serves
    /// as the new snapshot without reading the messages again.
    pub fn reselect(mut self, mut mailbox: Mailbox, read_only: bool) -> Selected {
        self.unpack();
        let Selected {
            mut messages,
            pending_expunge,
            modseq,
            ..
        } = self;
        mailbox.highestmodseq = modseq;
        messages.retain(|m| !pending_expunge.contains(&m.uid));
        Selected::from_snapshot(MailboxSnapshot { mailbox, messages }, read_only)
    }

    /// A read of the store during the command saw the mailbox's
    /// HIGHESTMODSEQ at `seen`: when that is the one we synchronised to,
    /// nothing had changed by then, and the sync after the command may skip
    /// its query (as after SELECT).
    pub fn saw_highestmodseq(&mut self, seen: Option<u64>) {
        if seen == Some(self.modseq) {
            self.up_to_date = true;
        }
    }

    /// After the session's own write: `highestmodseq` is the mailbox's
    /// HIGHESTMODSEQ as the write left it, and `wrote` says whether the write
    /// took a new MODSEQ. When that is the next one after ours (or ours,
    /// when it took none), nobody else changed the mailbox since the last
    /// sync, and the sync after this command may skip its query.
    pub fn own_write(&mut self, highestmodseq: u64, wrote: bool) {
        let expected = self.modseq + u64::from(wrote);
        if highestmodseq == expected {
            self.modseq = expected;
            self.up_to_date = true;
        }
    }

    /// The sequence number (1-based) of `uid`.
    pub fn seq_of(&self, uid: u32) -> Option<usize> {
        self.messages
            .binary_search_by_key(&uid, |m| m.uid)
            .ok()
            .map(|i| i + 1)
    }

    /// Count of messages with `\Seen` unset, and the first of them.
    pub fn first_unseen(&self) -> Option<usize> {
        self.messages
            .iter()
            .position(|m| m.flags & flag_bits::SEEN == 0)
            .map(|i| i + 1)
    }

    /// Whether the message is gone from the store (pending expunge).
    pub fn is_gone(&self, uid: u32) -> bool {
        self.pending_expunge.contains(&uid)
    }

    /// The indexes (0-based) a sequence set names. Message numbers beyond
    /// the mailbox are an error (`Err` with the text for `BAD`); UIDs that
    /// do not exist are skipped (RFC 9051 §6.4.9).
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, &'static str> {
        let mut out: BTreeSet<usize> = BTreeSet::new();
        let count = self.messages.len();
        let last_uid = self.messages.last().map(|m| m.uid);
        for seq in set.0.as_ref() {
            let (a, b) = match seq {
                Sequence::Single(x) => (x, x),
                Sequence::Range(a, b) => (a, b),
            };
            if uid {
                let v = |x: &SeqOrUid| match x {
                    SeqOrUid::Value(n) => Some(n.get()),
                    SeqOrUid::Asterisk => last_uid,
                };
                let (Some(a), Some(b)) = (v(a), v(b)) else {
                    continue; // `*` in an empty mailbox names nothing
                };
                let (lo, hi) = (a.min(b), a.max(b));
                let start = self.messages.partition_point(|m| m.uid < lo);
                let end = self.messages.partition_point(|m| m.uid <= hi);
                out.extend(start..end);
            } else {
                let v = |x: &SeqOrUid| match x {
                    SeqOrUid::Value(n) => n.get() as usize,
                    SeqOrUid::Asterisk => count,
                };
                let (a, b) = (v(a), v(b));
                let (lo, hi) = (a.min(b), a.max(b));
                if hi > count || lo == 0 {
                    return Err("invalid message sequence number");
                }
                out.extend(lo - 1..hi);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Reads the store's changes since [`Selected::modseq`] and writes the
    /// untagged responses for them into `out` (see the module docs).
    pub async fn sync(&mut self, store: &Store, mode: SyncMode, out: &mut Vec<u8>) -> Result<()> {
        let fresh = std::mem::take(&mut self.up_to_date);
        if fresh || store.is_current(self.mailbox.id, self.modseq) {
            // Nothing new to read (this command learnt it, or the process
            // knows the mailbox to be at our MODSEQ); removals held back
            // earlier may go out now.
            self.announce_pending_expunges(mode, out);
            return Ok(());
        }
        let changes = store.changes_since(self.mailbox.id, self.modseq).await?;
        let vanished: BTreeSet<u32> = changes.vanished.iter().copied().collect();
        let last_uid = self.messages.last().map_or(0, |m| m.uid);
        for uid in &vanished {
            if self.seq_of(*uid).is_some() {
                self.pending_expunge.insert(*uid);
            }
        }
        let mut added = 0usize;
        let mut flag_changes = Vec::new();
        for meta in changes.changed {
            if vanished.contains(&meta.uid) {
                continue;
            }
            if meta.uid > last_uid {
                self.messages.push(meta);
                added += 1;
                continue;
            }
            let Some(seq) = self.seq_of(meta.uid) else {
                continue;
            };
            let known = &mut self.messages[seq - 1];
            let changed_flags = known.flags != meta.flags || known.keywords != meta.keywords;
            let changed_modseq = known.modseq != meta.modseq;
            *known = meta;
            if changed_flags || (mode.condstore && changed_modseq) {
                flag_changes.push(seq);
            }
        }
        let count = self.messages.len();
        let fresh = flag_changes.iter().map(|seq| seq - 1);
        self.announce_keywords(fresh.chain(count - added..count), out);
        for seq in flag_changes {
            let meta = &self.messages[seq - 1];
            write_flags_fetch(
                out,
                seq,
                meta,
                self.is_recent(meta.uid),
                true,
                mode.condstore,
            );
        }
        self.announce_pending_expunges(mode, out);
        if added > 0 {
            out.extend_from_slice(format!("* {} EXISTS\r\n", self.messages.len()).as_bytes());
        }
        self.modseq = self.modseq.max(changes.highestmodseq);
        self.mailbox.highestmodseq = self.modseq;
        self.mailbox.uidnext = self.mailbox.uidnext.max(changes.uidnext);
        if added > 0 {
            self.announce_recent(store, out).await?;
        }
        Ok(())
    }

    /// After new messages were announced (EXISTS): claims `\Recent` for
    /// them and sends `* n RECENT` when this session got any (RFC 3501
    /// §7.3.2: the count changed).
    pub async fn announce_recent(&mut self, store: &Store, out: &mut Vec<u8>) -> Result<()> {
        if self.claim_recent(store).await? {
            out.extend_from_slice(format!("* {} RECENT\r\n", self.recent_count()).as_bytes());
        }
        Ok(())
    }

    /// Announces the removals held back so far, when `mode` allows it.
    fn announce_pending_expunges(&mut self, mode: SyncMode, out: &mut Vec<u8>) {
        if mode.allow_expunge && !self.pending_expunge.is_empty() {
            let gone: Vec<u32> = std::mem::take(&mut self.pending_expunge)
                .into_iter()
                .collect();
            self.announce_expunged(&gone, mode.qresync, out);
        }
    }

    /// Removes `uids` (ascending) from the session's view and writes their
    /// EXPUNGE (or one VANISHED) responses.
    pub fn announce_expunged(&mut self, uids: &[u32], qresync: bool, out: &mut Vec<u8>) {
        let mut removed = Vec::with_capacity(uids.len());
        for &uid in uids {
            self.pending_expunge.remove(&uid);
            if let Some(seq) = self.seq_of(uid) {
                self.messages.remove(seq - 1);
                if !qresync {
                    out.extend_from_slice(format!("* {seq} EXPUNGE\r\n").as_bytes());
                }
                removed.push(uid);
            }
        }
        if qresync && !removed.is_empty() {
            out.extend_from_slice(format!("* VANISHED {}\r\n", uid_set(&removed)).as_bytes());
        }
        // The number of recent messages changed (RFC 3501 §7.3.2).
        if removed.iter().any(|&u| self.is_recent(u)) {
            out.extend_from_slice(format!("* {} RECENT\r\n", self.recent_count()).as_bytes());
        }
    }
}

/// `* FLAGS (…)` and `* OK [PERMANENTFLAGS (…)]` with the system flags
/// and `keywords` (SELECT's, and again when the keywords grow); new
/// keywords may be made (`\*`) unless the mailbox is read-only.
pub fn write_flag_lines(out: &mut Vec<u8>, keywords: &[String], read_only: bool) {
    let mut all: Vec<&str> = SYSTEM_FLAGS.iter().map(|(_, name)| *name).collect();
    all.extend(keywords.iter().map(String::as_str));
    let all = all.join(" ");
    out.extend_from_slice(format!("* FLAGS ({all})\r\n").as_bytes());
    if read_only {
        out.extend_from_slice(b"* OK [PERMANENTFLAGS ()] read-only mailbox\r\n");
    } else {
        out.extend_from_slice(
            format!("* OK [PERMANENTFLAGS ({all} \\*)] flags permitted\r\n").as_bytes(),
        );
    }
}

/// `* n FETCH (FLAGS (…) [UID u] [MODSEQ (m)])`.
pub fn write_flags_fetch(
    out: &mut Vec<u8>,
    seq: usize,
    meta: &MessageMeta,
    recent: bool,
    with_uid: bool,
    condstore: bool,
) {
    let mut line = format!("* {seq} FETCH (FLAGS ({})", flags_text(meta, recent));
    if with_uid {
        line.push_str(&format!(" UID {}", meta.uid));
    }
    if condstore {
        line.push_str(&format!(" MODSEQ ({})", meta.modseq));
    }
    line.push_str(")\r\n");
    out.extend_from_slice(line.as_bytes());
}

/// The flags of a message as IMAP writes them (`\Seen \Flagged $Label1`).
pub fn flags_text(meta: &MessageMeta, recent: bool) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for (bit, name) in SYSTEM_FLAGS {
        if meta.flags & bit != 0 {
            parts.push(name);
        }
    }
    if recent {
        parts.push("\\Recent");
    }
    for k in &meta.keywords {
        parts.push(k);
    }
    parts.join(" ")
}

/// The system flags and their bits.
pub const SYSTEM_FLAGS: [(i64, &str); 5] = [
    (flag_bits::ANSWERED, "\\Answered"),
    (flag_bits::FLAGGED, "\\Flagged"),
    (flag_bits::DELETED, "\\Deleted"),
    (flag_bits::SEEN, "\\Seen"),
    (flag_bits::DRAFT, "\\Draft"),
];

/// A compact UID set (`1:3,7,9:10`) of ascending UIDs.
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// UIDs of a UID set, for QRESYNC known-UIDs; `*` means `last`.
pub fn expand_uids(set: &SequenceSet, last: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for seq in set.0.as_ref() {
        let v = |x: &SeqOrUid| match x {
            SeqOrUid::Value(n) => n.get(),
            SeqOrUid::Asterisk => last,
        };
        let (a, b) = match seq {
            Sequence::Single(x) => (v(x), v(x)),
            Sequence::Range(a, b) => (v(a), v(b)),
        };
        // Only UIDs up to `last` can matter (they are the ones that existed).
        let (lo, hi) = (a.min(b), a.max(b).min(last));
        for u in lo..=hi {
            out.insert(u);
        }
    }
    out
}

/// A non-zero u32 from a count known to be positive.
pub fn nz(n: usize) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// The varint at `*at` (LEB128, as [`put_varint`] wrote it); 0 past the end.
fn get_varint(buf: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&b) = buf.get(*at) {
        *at += 1;
        if shift < 64 {
            v |= u64::from(b & 0x7f) << shift;
        }
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    v
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn packing_for_idle_gives_back_the_same_view() {
        let meta = |uid: u32, modseq: u64, flags: i64, keywords: &[&str], date: i64, size: u64| {
            MessageMeta {
                uid,
                modseq,
                flags,
                keywords: keywords.iter().map(|k| k.to_string()).collect(),
                internal_date: date,
                size,
            }
        };
        let messages = vec![
            meta(1, 1, 0, &[], 0, 0),
            meta(
                2,
                300,
                flag_bits::SEEN | flag_bits::DELETED,
                &["$Label1", "Grüße"],
                1_796_356_678,
                195_787,
            ),
            meta(128, u64::MAX, i64::MIN, &[""], -1, u64::MAX),
            meta(u32::MAX, 7, i64::MAX, &["a", "b", "c"], i64::MIN, 1 << 40),
        ];
        let mut sel = Selected::from_snapshot(
            MailboxSnapshot {
                mailbox: Mailbox {
                    id: 1,
                    account_id: 1,
                    name: "INBOX".into(),
                    special_use: None,
                    subscribed: true,
                    uidvalidity: 1,
                    uidnext: 5,
                    highestmodseq: 300,
                },
                messages: messages.clone(),
            },
            false,
        );
        sel.pack();
        assert!(sel.messages.is_empty(), "packed while idling");
        sel.pack(); // twice is harmless
        sel.unpack();
        assert_eq!(sel.messages, messages);
        sel.unpack(); // nothing packed: nothing changes
        assert_eq!(sel.messages, messages);
        // An empty view packs to nothing and unpacks to itself.
        let mut empty = sel.reselect(
            Mailbox {
                id: 2,
                account_id: 1,
                name: "Other".into(),
                special_use: None,
                subscribed: false,
                uidvalidity: 2,
                uidnext: 1,
                highestmodseq: 0,
            },
            true,
        );
        empty.messages.clear();
        empty.pack();
        empty.unpack();
        assert!(empty.messages.is_empty());
    }
}
