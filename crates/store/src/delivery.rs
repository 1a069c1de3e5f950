//! Recipient resolution and message storage: the store half of the MDA.
//!
//! Invariants:
//! * UIDs and MODSEQs are allocated by incrementing the mailbox row inside the
//!   transaction that inserts the message. The row lock serialises concurrent
//!   deliveries into one mailbox, and a rolled-back delivery rolls its UID back
//!   too, so UIDs are strictly increasing with no gaps and no reuse.
//! * Lock order is account row, then mailbox row, everywhere; with one order
//!   two deliveries can never deadlock.
//! * A delivery is idempotent per (mailbox, delivery key): a retried delivery
//!   after a crash finds its message and stores nothing.
//! * The quota is checked and charged in one conditional `UPDATE`, so two
//!   concurrent deliveries cannot both squeeze under the limit.

use std::collections::{BTreeSet, HashSet, VecDeque};

use mailroom_address::{Address, Domain};
use sqlx::Row;
use tokio::sync::broadcast;

use crate::known::Freshness;
use crate::{Backend, BlobHash, Result, Store, StoreError, on_backend};

/// How far alias chains are followed before giving up (a loop, in practice).
pub const MAX_ALIAS_DEPTH: usize = 16;
/// How many addresses one recipient may expand to.
pub const MAX_EXPANSION: usize = 1000;

/// An account that receives a copy, and the folder a `+tag` asked for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalTarget {
    /// The account's row id.
    pub account_id: i64,
    /// The account's canonical address (for `Delivered-To`).
    pub address: String,
    /// The `tag` of `user+tag@domain`, when that is how it was reached.
    pub folder: Option<String>,
}

/// Where a recipient's mail goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Local accounts to store a copy for.
    pub local: Vec<LocalTarget>,
    /// Addresses outside our domains that aliases forward to (the MTA relays them).
    pub remote: Vec<String>,
    /// The accounts of `local` that were at or over their quota when the
    /// address was resolved (read in the same query; advisory: delivery
    /// checks the quota again when it stores).
    pub full: Vec<i64>,
}

/// An account row as recipient resolution reads it.
struct AccountRow {
    id: i64,
    disabled: bool,
    /// At or over its quota.
    full: bool,
}

/// The accounts a resolution has reached so far.
#[derive(Default)]
struct Reached {
    local: BTreeSet<LocalTarget>,
    /// Those of `local` at or over their quota.
    full: BTreeSet<i64>,
    /// The last disabled account met.
    disabled: Option<String>,
}

impl Reached {
    /// Adds the account found under `address` (delivering into `folder`).
    fn account(&mut self, a: AccountRow, address: String, folder: Option<String>) {
        if a.disabled {
            self.disabled = Some(address);
            return;
        }
        if a.full {
            self.full.insert(a.id);
        }
        self.local.insert(LocalTarget {
            account_id: a.id,
            address,
            folder,
        });
    }
}

/// Why a recipient cannot receive mail; each is permanent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unroutable {
    /// The domain is not one of ours.
    #[error("5.1.2 we do not receive mail for {0}")]
    NotLocal(String),
    /// No account, alias or catch-all matches.
    #[error("5.1.1 no such user here: {0}")]
    UnknownUser(String),
    /// Aliases loop (or nest absurdly deep) without reaching a mailbox.
    #[error("5.4.6 alias loop for {0}")]
    AliasLoop(String),
    /// The only account it reaches is disabled.
    #[error("5.2.1 the mailbox of {0} is disabled")]
    Disabled(String),
}

/// Which mailbox of the account receives the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folder {
    /// INBOX.
    Inbox,
    /// A mailbox by name when it exists (plus-addressing), else INBOX.
    Named(String),
    /// The account's `\Junk` mailbox (DMARC quarantine), else INBOX.
    Junk,
}

/// One account's copy of a message delivered at acceptance
/// ([`Store::deliver_at_acceptance`]).
#[derive(Debug, Clone)]
pub struct AcceptedCopy {
    /// The envelope recipient it is for (aliases may give one recipient
    /// several accounts, and several recipients one account).
    pub recipient: String,
    /// The account.
    pub target: LocalTarget,
    /// Where in it.
    pub folder: Folder,
    /// Header lines for this copy, prepended to the content when read.
    pub prefix: Vec<u8>,
}

/// A message to store for one account.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The shared content, stored with [`Store::put_blob`] (storing a copy
    /// whose content is not there fails with `FailedPrecondition`).
    pub blob: BlobHash,
    /// Its size in bytes.
    pub blob_size: u64,
    /// Header lines for this recipient, prepended to the blob when read.
    pub prefix: Vec<u8>,
    /// What IMAP needs from the parse, cached at delivery.
    pub parse_cache: Option<String>,
    /// Identifies this delivery (queue entry and recipient) for idempotency.
    pub delivery_key: String,
    /// IMAP INTERNALDATE, Unix seconds.
    pub internal_date: i64,
}

/// What happened to one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored now.
    New(MailboxEvent),
    /// Stored by an earlier attempt with the same delivery key.
    AlreadyThere {
        /// Where it is.
        mailbox_id: i64,
        /// Its UID.
        uid: u32,
    },
    /// Storing it would exceed the account's quota (a temporary failure).
    OverQuota {
        /// Bytes in use.
        used: u64,
        /// The quota.
        quota: u64,
    },
}

/// A change other sessions may want to hear about (IMAP IDLE, and how an
/// IMAP session learns what other sessions did).
///
/// Sent after the commit of every write to a mailbox: deliveries, APPEND,
/// COPY and MOVE (one event per mailbox written), flag changes, expunges
/// (IMAP and POP3), and mailbox deletion and renaming. An event says only
/// *that* the mailbox changed; the receiver reads what changed with
/// [`Store::changes_since`]. A receiver that lagged (the channel reports
/// it) must do the same, since it may have missed events, and so must one
/// that receives [`MailboxEvent::resync`]. An account's deletion comes as
/// an event of its account with mailbox 0. A METADATA change (RFC 5464)
/// comes with MODSEQ 0, and mailbox 0 for the account's server entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEvent {
    /// The account.
    pub account_id: i64,
    /// The mailbox.
    pub mailbox_id: i64,
    /// The new message's UID when messages were added (the highest new UID
    /// when several were: COPY, MOVE); 0 for a change that is not a new
    /// message (flags, expunges, deletion, renaming).
    pub uid: u32,
    /// The mailbox's new HIGHESTMODSEQ (for a deleted mailbox, the last one
    /// it had).
    pub modseq: u64,
}

impl MailboxEvent {
    /// The event that says "changes may have gone unannounced" (account and
    /// mailbox 0): sent after the PostgreSQL LISTEN connection came back
    /// from a loss. Every subscriber should re-read what it shows.
    pub fn resync() -> MailboxEvent {
        MailboxEvent {
            account_id: 0,
            mailbox_id: 0,
            uid: 0,
            modseq: 0,
        }
    }

    /// Whether this is [`MailboxEvent::resync`].
    pub fn is_resync(&self) -> bool {
        self.account_id == 0 && self.mailbox_id == 0
    }

    /// `account:mailbox:uid:modseq`, and `:r` for a structural change (see
    /// [`Store::notify_structural`]).
    fn to_payload(&self, structural: bool) -> String {
        format!(
            "{}:{}:{}:{}{}",
            self.account_id,
            self.mailbox_id,
            self.uid,
            self.modseq,
            if structural { ":r" } else { "" }
        )
    }

    /// The event and whether it is structural.
    fn from_payload(p: &str) -> Option<(MailboxEvent, bool)> {
        let mut it = p.split(':');
        let event = MailboxEvent {
            account_id: it.next()?.parse().ok()?,
            mailbox_id: it.next()?.parse().ok()?,
            uid: it.next()?.parse().ok()?,
            modseq: it.next()?.parse().ok()?,
        };
        Some((event, it.next() == Some("r")))
    }
}

/// Takes a change into this process's marks (`known.rs`).
fn learn(freshness: &Freshness, event: &MailboxEvent, structural: bool) {
    if structural {
        freshness.restructured((event.mailbox_id != 0).then_some(event.mailbox_id));
    } else if event.modseq > 0 {
        // (MODSEQ 0: a METADATA change, which leaves the messages alone.)
        freshness.changed(event.mailbox_id, event.modseq);
    }
}

/// The PostgreSQL channel of mailbox notifications.
const NOTIFY_CHANNEL: &str = "mailroom_mailbox";

/// Notifications sent in one statement at most.
const NOTIFY_BATCH: usize = 256;

/// How long the notifier waits, once a notification is queued, for more to
/// send with it. Each batch is a round trip and a transaction here, and a
/// wake-up of every listening connection (PostgreSQL signals them per
/// notifying commit): under load a few milliseconds gather several writes'
/// notifications into one, at the price of as much delay to IDLE pushes.
const NOTIFY_LINGER: std::time::Duration = std::time::Duration::from_millis(3);

/// Starts the task that sends a store's PostgreSQL notifications, in order,
/// off the writers' path: a write queues its notification and returns, and
/// the task sends whatever has queued meanwhile, and within [`NOTIFY_LINGER`]
/// after, in one statement (one round trip per batch instead of one per
/// write). It ends when the store is dropped.
fn spawn_notifier(pool: sqlx::PgPool) -> tokio::sync::mpsc::UnboundedSender<String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(NOTIFY_BATCH);
        while rx.recv_many(&mut batch, NOTIFY_BATCH).await > 0 {
            if batch.len() < NOTIFY_BATCH {
                tokio::time::sleep(NOTIFY_LINGER).await;
                while batch.len() < NOTIFY_BATCH {
                    match rx.try_recv() {
                        Ok(payload) => batch.push(payload),
                        Err(_) => break,
                    }
                }
            }
            if let Err(e) = sqlx::query(
                "SELECT pg_notify($1, payload) FROM unnest($2::text[]) WITH ORDINALITY AS t(payload, n)
                 ORDER BY n",
            )
            .bind(NOTIFY_CHANNEL)
            .bind(&batch)
            .execute(&pool)
            .await
            {
                tracing::warn!(error = %e, count = batch.len(), "mailbox notifications not sent");
            }
            batch.clear();
        }
    });
    tx
}

impl Store {
    /// Resolves a recipient to the accounts that receive it and the remote
    /// addresses it forwards to: exact account, aliases (followed
    /// transitively, loops detected), plus-addressing, then the domain's
    /// catch-all; `postmaster@` with none of these reaches the domain's
    /// configured postmaster address, else its first account (RFC 5321
    /// §4.5.1).
    pub async fn resolve_recipient(
        &self,
        address: &Address,
    ) -> Result<Result<Resolved, Unroutable>> {
        if !self.serves_domain(address.domain()).await? {
            return Ok(Err(Unroutable::NotLocal(address.domain().to_string())));
        }
        let mut resolved = Resolved::default();
        let mut reached = Reached::default();
        let mut seen: HashSet<String> = HashSet::new();
        let mut queue: VecDeque<(Address, usize)> = VecDeque::from([(address.clone(), 0)]);
        let mut looped = false;
        while let Some((addr, depth)) = queue.pop_front() {
            if !seen.insert(addr.to_string()) {
                looped = true;
                continue;
            }
            if depth > MAX_ALIAS_DEPTH || seen.len() > MAX_EXPANSION {
                return Ok(Err(Unroutable::AliasLoop(address.to_string())));
            }
            if !self.serves_domain(addr.domain()).await? {
                resolved.remote.push(addr.to_string());
                continue;
            }
            let (account, targets) = self.lookup_exact(&addr.to_string()).await?;
            let mut found = account.is_some() || !targets.is_empty();
            if let Some(a) = account {
                reached.account(a, addr.to_string(), None);
            }
            for t in &targets {
                queue.push_back((t.clone(), depth + 1));
            }
            if !found {
                // Plus-addressing: user+tag@domain reaches user@domain, into folder "tag".
                if let (base, Some(tag)) = addr.split_plus() {
                    let base_addr = format!("{base}@{}", addr.domain());
                    let (account, targets) = self.lookup_exact(&base_addr).await?;
                    found = account.is_some() || !targets.is_empty();
                    if let Some(a) = account {
                        let folder = (!tag.is_empty()).then(|| tag.to_string());
                        reached.account(a, base_addr, folder);
                    }
                    for t in targets {
                        queue.push_back((t, depth + 1));
                    }
                }
            }
            if !found {
                let (_, targets) = self.lookup_exact(&format!("@{}", addr.domain())).await?;
                found = !targets.is_empty();
                for t in targets {
                    queue.push_back((t, depth + 1));
                }
            }
            // RFC 5321 §4.5.1: postmaster@ every domain of ours is deliverable;
            // without an alias (or catch-all) it reaches the configured
            // address, followed like an alias target, else the first account.
            if !found && addr.local_part().eq_ignore_ascii_case("postmaster") {
                if let Some(target) = self.configured_postmaster(addr.domain()).await? {
                    queue.push_back((target, depth + 1));
                } else if let Some((a, first)) = self.first_account(addr.domain()).await? {
                    reached.account(a, first, None);
                }
            }
        }
        resolved.local = reached.local.into_iter().collect();
        resolved.full = reached.full.into_iter().collect();
        if resolved.local.is_empty() && resolved.remote.is_empty() {
            return Ok(Err(if let Some(d) = reached.disabled {
                Unroutable::Disabled(d)
            } else if looped {
                Unroutable::AliasLoop(address.to_string())
            } else {
                Unroutable::UnknownUser(address.to_string())
            }));
        }
        Ok(Ok(resolved))
    }

    /// The domain's configured postmaster address, if any (a stored value
    /// that no longer parses counts as none: the first account takes over).
    async fn configured_postmaster(&self, domain: &Domain) -> Result<Option<Address>> {
        let configured: Option<String> = on_backend!(self, |pool| {
            let row = sqlx::query("SELECT postmaster FROM domains WHERE name = $1")
                .bind(domain.as_str())
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => row.try_get("postmaster")?,
                None => None,
            }
        });
        Ok(configured.and_then(|c| Address::parse(&c).ok()))
    }

    /// The domain's first account (the postmaster of last resort) and its address.
    async fn first_account(&self, domain: &Domain) -> Result<Option<(AccountRow, String)>> {
        on_backend!(self, |pool| {
            let row = sqlx::query(
                "SELECT a.id, a.address, a.disabled,
                        (a.quota_bytes > 0 AND a.used_bytes >= a.quota_bytes) AS full
                   FROM accounts a JOIN domains d ON d.id = a.domain_id
                  WHERE d.name = $1 ORDER BY a.id LIMIT 1",
            )
            .bind(domain.as_str())
            .fetch_optional(pool)
            .await?;
            Ok(match row {
                Some(row) => Some((
                    AccountRow {
                        id: row.try_get("id")?,
                        disabled: row.try_get("disabled")?,
                        full: row.try_get("full")?,
                    },
                    row.try_get("address")?,
                )),
                None => None,
            })
        })
    }

    /// The account with exactly this address (id, disabled) and the alias
    /// targets whose source is exactly this string.
    async fn lookup_exact(&self, key: &str) -> Result<(Option<AccountRow>, Vec<Address>)> {
        // One round trip for both: every RCPT and every delivery comes here.
        on_backend!(self, |pool| {
            let rows = sqlx::query(
                "SELECT 0 AS kind, id, disabled,
                        (quota_bytes > 0 AND used_bytes >= quota_bytes) AS full, '' AS target
                   FROM accounts WHERE address = $1
                 UNION ALL
                 SELECT 1 AS kind, 0 AS id, FALSE AS disabled, FALSE AS full, target
                   FROM aliases WHERE source = $1
                 ORDER BY kind, target",
            )
            .bind(key)
            .fetch_all(pool)
            .await?;
            let mut account = None;
            let mut targets = Vec::new();
            for row in rows {
                if row.try_get::<i32, _>("kind")? == 0 {
                    account = Some(AccountRow {
                        id: row.try_get("id")?,
                        disabled: row.try_get("disabled")?,
                        full: row.try_get("full")?,
                    });
                } else {
                    let t: String = row.try_get("target")?;
                    // Targets were validated when added; skip one that no longer parses.
                    if let Ok(a) = Address::parse(&t) {
                        targets.push(a);
                    }
                }
            }
            Ok((account, targets))
        })
    }

    /// Stores one copy of a message for `target`, in one transaction:
    /// idempotency check, quota charge, UID/MODSEQ allocation, insert.
    pub async fn store_message(
        &self,
        target: &LocalTarget,
        folder: &Folder,
        msg: &NewMessage,
    ) -> Result<Stored> {
        let size = msg.blob_size + msg.prefix.len() as u64;
        let size_i64 = i64::try_from(size)
            .map_err(|_| StoreError::InvalidArgument("the message is too large".into()))?;
        let outcome = match self.backend() {
            Backend::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                store_message_pg(&mut conn, target, folder, msg, size_i64, None).await?
            }
            Backend::Sqlite(_) => {
                let mut group_tx = self.sqlite_group()?.begin().await?;
                let outcome =
                    store_message_sqlite(group_tx.conn(), target, folder, msg, size_i64).await?;
                group_tx.commit().await?;
                outcome
            }
        };
        if let Stored::New(event) = &outcome {
            self.notify(event);
        }
        Ok(outcome)
    }

    /// Delivers a message at its acceptance: its content and every copy in
    /// `copies`, in ONE transaction, so that the message is either in every
    /// mailbox or in none when this returns. `Some(events)` when all were
    /// stored (and committed); `None`, with nothing stored, when a copy
    /// cannot be stored now (its account is over quota, or has no mailbox):
    /// the caller queues the message instead, and the queue's delivery
    /// retries and reports as usual. Each copy gets a delivery key of its
    /// own (a random token of the message and the copy's recipient), as the
    /// queue's delivery keys are per entry and recipient.
    pub async fn deliver_at_acceptance(
        &self,
        message: &[u8],
        parse_cache: Option<String>,
        internal_date: i64,
        copies: &[AcceptedCopy],
    ) -> Result<Option<Vec<MailboxEvent>>> {
        if message.is_empty() || copies.is_empty() {
            return Err(StoreError::InvalidArgument(
                "a delivery needs content and at least one copy".into(),
            ));
        }
        let blob = BlobHash::of(message);
        let token = format!("{:032x}", rand::random::<u128>());
        let messages: Vec<(NewMessage, i64)> = copies
            .iter()
            .map(|c| {
                let size = i64::try_from(message.len() + c.prefix.len())
                    .map_err(|_| StoreError::InvalidArgument("the message is too large".into()))?;
                let msg = NewMessage {
                    blob: blob.clone(),
                    blob_size: message.len() as u64,
                    prefix: c.prefix.clone(),
                    parse_cache: parse_cache.clone(),
                    delivery_key: format!("accepted/{token}/{}", c.recipient),
                    internal_date,
                };
                Ok((msg, size))
            })
            .collect::<Result<_>>()?;
        let created = crate::now();
        let events = match self.backend() {
            // One copy (the usual case): content and copy in one statement,
            // committed on its own.
            Backend::Postgres(pool) if copies.len() == 1 => {
                let mut conn = pool.acquire().await?;
                match copies_pg(&mut conn, copies, &messages, (message, created)).await? {
                    Some(events) => events,
                    // Nothing was written (the content neither).
                    None => return Ok(None),
                }
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                match copies_pg(&mut tx, copies, &messages, (message, created)).await? {
                    Some(events) => {
                        tx.commit().await?;
                        events
                    }
                    // Dropping `tx` rolls everything back.
                    None => return Ok(None),
                }
            }
            Backend::Sqlite(_) => {
                let mut group_tx = self.sqlite_group()?.begin().await?;
                sqlx::query(
                    "INSERT INTO blobs (hash, size, data, created_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (hash) DO NOTHING",
                )
                .bind(&blob.0)
                .bind(message.len() as i64)
                .bind(message)
                .bind(created)
                .execute(&mut *group_tx.conn())
                .await?;
                let mut events = Vec::with_capacity(copies.len());
                for (c, (msg, size)) in copies.iter().zip(&messages) {
                    match store_message_sqlite(group_tx.conn(), &c.target, &c.folder, msg, *size)
                        .await
                    {
                        Ok(Stored::New(event)) => events.push(event),
                        // Dropping `group_tx` rolls this writer's part back.
                        Ok(_) | Err(StoreError::NotFound(_)) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
                group_tx.commit().await?;
                events
            }
        };
        for event in &events {
            self.notify(event);
        }
        Ok(Some(events))
    }

    /// Announces a committed change to every subscriber: in this process on
    /// SQLite, through `pg_notify` to every process sharing the database on
    /// PostgreSQL (queued, and sent by a task in batches; this process's
    /// marks of what it knows, `known.rs`, take it at once). Call it after
    /// the commit, never inside the transaction:
    /// a NOTIFY in a transaction takes a database-wide lock until its commit
    /// is flushed, which serialised concurrent deliveries. A crash in between
    /// loses only the push; IDLE clients still see the change at their next
    /// check. Failing to notify is logged, not an error: the write is done.
    pub(crate) fn notify(&self, event: &MailboxEvent) {
        self.announce(event, false);
    }

    /// [`Store::notify`] for a change that leaves HIGHESTMODSEQ alone or
    /// makes it meaningless: a mailbox renamed or deleted, or (mailbox id 0)
    /// an account deleted. Every process then forgets what it knew of the
    /// mailbox (of every mailbox, for an account).
    pub(crate) fn notify_structural(&self, event: &MailboxEvent) {
        self.announce(event, true);
    }

    fn announce(&self, event: &MailboxEvent, structural: bool) {
        match self.backend() {
            // In-process notification for the embedded store; nobody listening is fine.
            Backend::Sqlite(_) => {
                let _ = self.events().send(event.clone());
            }
            Backend::Postgres(pool) => {
                learn(self.freshness(), event, structural);
                let queue = self.notifier().get_or_init(|| spawn_notifier(pool.clone()));
                if queue.send(event.to_payload(structural)).is_err() {
                    tracing::warn!("mailbox notification not sent: the notifier has stopped");
                }
            }
        }
    }

    /// Mailbox events ([`MailboxEvent`]): every change committed from now
    /// on, in this process or (on PostgreSQL) in any process sharing the
    /// database. (On PostgreSQL a change committed just before may be
    /// announced too: notifications are sent a moment after their commit.)
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<MailboxEvent>> {
        let receiver = self.events().subscribe();
        if let Backend::Postgres(pool) = self.backend() {
            self.start_pg_listener(pool).await?;
        }
        Ok(receiver)
    }

    /// Starts (once per store) the task that turns PostgreSQL notifications
    /// into events. It reconnects by itself when the connection drops; until
    /// it listens again, this process's marks (`known.rs`) are not trusted,
    /// since changes committed meanwhile go unheard.
    async fn start_pg_listener(&self, pool: &sqlx::PgPool) -> Result<()> {
        let mut started = self.listener_started().lock().await;
        if *started {
            return Ok(());
        }
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let events = self.events().clone();
        let freshness = self.freshness().clone();
        let pool = pool.clone();
        freshness.listening();
        tokio::spawn(async move {
            loop {
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => {
                            if let Some((e, structural)) = MailboxEvent::from_payload(n.payload()) {
                                learn(&freshness, &e, structural);
                                let _ = events.send(e);
                            }
                        }
                        // The connection was lost (Ok(None)) or failed.
                        Ok(None) => break,
                        // The store is closing: give the connection back so close() can finish.
                        Err(sqlx::Error::PoolClosed) => {
                            freshness.lost();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "new-mail listener failed");
                            break;
                        }
                    }
                }
                freshness.lost();
                tracing::warn!("new-mail listener lost its connection; reconnecting");
                drop(listener);
                listener = loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    if pool.is_closed() {
                        return;
                    }
                    match sqlx::postgres::PgListener::connect_with(&pool).await {
                        Ok(mut l) => match l.listen(NOTIFY_CHANNEL).await {
                            Ok(()) => break l,
                            Err(e) => {
                                tracing::warn!(error = %e, "new-mail listener: LISTEN failed")
                            }
                        },
                        Err(e) => tracing::warn!(error = %e, "new-mail listener cannot connect"),
                    }
                };
                freshness.listening();
                // What was committed while nobody listened went unannounced.
                let _ = events.send(MailboxEvent::resync());
            }
        });
        *started = true;
        Ok(())
    }

    /// The messages of a mailbox as (uid, modseq, size), in UID order.
    pub async fn list_messages(&self, mailbox_id: i64) -> Result<Vec<(u32, u64, u64)>> {
        on_backend!(self, |pool| {
            let rows = sqlx::query(
                "SELECT uid, modseq, size FROM messages WHERE mailbox_id = $1 ORDER BY uid",
            )
            .bind(mailbox_id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push((
                    row.try_get::<i64, _>("uid")? as u32,
                    row.try_get::<i64, _>("modseq")? as u64,
                    row.try_get::<i64, _>("size")? as u64,
                ));
            }
            Ok(out)
        })
    }

    /// The full text of a stored message: its prefix, then the shared blob.
    pub async fn read_message(&self, mailbox_id: i64, uid: u32) -> Result<Option<Vec<u8>>> {
        on_backend!(self, |pool| {
            let row = sqlx::query(
                "SELECT m.prefix, b.data FROM messages m JOIN blobs b ON b.hash = m.blob_hash
                 WHERE m.mailbox_id = $1 AND m.uid = $2",
            )
            .bind(mailbox_id)
            .bind(i64::from(uid))
            .fetch_optional(pool)
            .await?;
            match row {
                Some(row) => {
                    let mut text: Vec<u8> = row.try_get("prefix")?;
                    text.extend_from_slice(&row.try_get::<Vec<u8>, _>("data")?);
                    Ok(Some(text))
                }
                None => Ok(None),
            }
        })
    }
}

/// [`Store::store_message`] on PostgreSQL in two round trips instead of a
/// seven-statement transaction: the mailbox is looked up, then one statement
/// checks idempotency, charges the quota, allocates the UID and MODSEQ and
/// inserts the row. Its data-modifying CTEs form one atomic statement; each
/// feeds on the one before (`charge` → `alloc` → `ins`), so the account row
/// is locked before the mailbox row, the lock order of every other writer.
/// When nothing was inserted, one more query tells a duplicate from a full
/// mailbox. A concurrent delivery of the same key loses on the unique index
/// and reads as "already there", as a retry would.
async fn store_message_pg(
    conn: &mut sqlx::PgConnection,
    target: &LocalTarget,
    folder: &Folder,
    msg: &NewMessage,
    size: i64,
    content: Option<(&[u8], i64)>,
) -> Result<Stored> {
    let (condition, key): (&str, &str) = match folder {
        Folder::Inbox => ("FALSE", ""),
        // Local parts are lower-cased, so a `+Tag` arrives as "tag": match names without case.
        Folder::Named(name) => ("lower(name) = lower($2)", name),
        Folder::Junk => ("special_use = $2", "\\Junk"),
    };
    // One statement: the mailbox (the folder asked for, else INBOX), the
    // idempotency check, the quota charge, UID/MODSEQ allocation and the
    // insert; with `content`, the content too, once the charge is made (its
    // DO UPDATE locks a row already there against a concurrent release).
    // `condition` and `content_cte` are constant texts, never input.
    let content_cte = if content.is_some() {
        ", content AS (
             INSERT INTO blobs (hash, size, data, created_at)
             SELECT $6, $9, $10, $11 WHERE EXISTS (SELECT 1 FROM charge)
             ON CONFLICT (hash) DO UPDATE SET size = blobs.size
             RETURNING hash
         )"
    } else {
        ""
    };
    let inserted = sqlx::query_as::<_, (Option<i64>, Option<i64>, Option<i64>, Option<i64>)>(
        sqlx::AssertSqlSafe(format!(
            "WITH mbox AS (
                 SELECT id FROM mailboxes WHERE account_id = $1 AND (name = 'INBOX' OR {condition})
                 ORDER BY CASE WHEN {condition} THEN 0 ELSE 1 END, name LIMIT 1
             ), dup AS (
                 SELECT uid FROM messages WHERE mailbox_id = (SELECT id FROM mbox) AND delivery_key = $3
             ), charge AS (
                 UPDATE accounts SET used_bytes = used_bytes + $4
                 WHERE id = $1 AND EXISTS (SELECT 1 FROM mbox) AND NOT EXISTS (SELECT 1 FROM dup)
                   AND (quota_bytes = 0 OR used_bytes + $4 <= quota_bytes)
                 RETURNING id
             ){content_cte}, alloc AS (
                 UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1
                 WHERE id = (SELECT id FROM mbox) AND EXISTS (SELECT 1 FROM charge)
                 RETURNING id, uidnext - 1 AS uid, highestmodseq AS modseq
             ), ins AS (
                 INSERT INTO messages (mailbox_id, uid, modseq, internal_date, size, blob_hash, prefix,
                                       parse_cache, delivery_key)
                 SELECT id, uid, modseq, $5, $4, $6, $7, $8, $3 FROM alloc
                 RETURNING uid, modseq
             )
             SELECT (SELECT id FROM mbox), (SELECT uid FROM dup), (SELECT uid FROM ins),
                    (SELECT modseq FROM ins)"
        )),
    )
    .bind(target.account_id)
    .bind(key)
    .bind(&msg.delivery_key)
    .bind(size)
    .bind(msg.internal_date)
    .bind(&msg.blob.0)
    .bind(&msg.prefix)
    .bind(msg.parse_cache.as_deref());
    let inserted = match content {
        Some((data, created)) => inserted.bind(data.len() as i64).bind(data).bind(created),
        None => inserted,
    }
    .fetch_one(&mut *conn)
    .await;
    let not_found = || StoreError::NotFound(format!("account {} has no INBOX", target.address));
    let inserted = match inserted {
        Ok((None, ..)) => return Err(not_found()),
        Ok((Some(mailbox_id), dup, uid, modseq)) => Ok((mailbox_id, dup, uid, modseq)),
        Err(e) => Err(e),
    };
    let (mailbox_id, dup, uid, modseq) = match inserted {
        Ok(row) => row,
        // The same delivery committed meanwhile (unique (mailbox, delivery key)).
        Err(e) if matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation()) => {
            let (mailbox_id, uid): (i64, i64) = sqlx::query_as(
                "SELECT mailbox_id, uid FROM messages
                 WHERE delivery_key = $2
                   AND mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = $1)
                 ORDER BY mailbox_id LIMIT 1",
            )
            .bind(target.account_id)
            .bind(&msg.delivery_key)
            .fetch_one(&mut *conn)
            .await?;
            (mailbox_id, Some(uid), None, None)
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(uid) = dup {
        return Ok(Stored::AlreadyThere {
            mailbox_id,
            uid: uid as u32,
        });
    }
    if let (Some(uid), Some(modseq)) = (uid, modseq) {
        return Ok(Stored::New(MailboxEvent {
            account_id: target.account_id,
            mailbox_id,
            uid: uid as u32,
            modseq: modseq as u64,
        }));
    }
    let (quota, used): (i64, i64) =
        sqlx::query_as("SELECT quota_bytes, used_bytes FROM accounts WHERE id = $1")
            .bind(target.account_id)
            .fetch_one(&mut *conn)
            .await?;
    Ok(Stored::OverQuota {
        quota: quota as u64,
        used: used as u64,
    })
}

/// The copies of [`Store::deliver_at_acceptance`] on PostgreSQL, on `conn`
/// (in the caller's transaction when there are several): the content goes
/// in with the first copy's statement, once its charge is made. `None` as
/// soon as a copy cannot be stored (the caller then rolls back).
async fn copies_pg(
    conn: &mut sqlx::PgConnection,
    copies: &[AcceptedCopy],
    messages: &[(NewMessage, i64)],
    content: (&[u8], i64),
) -> Result<Option<Vec<MailboxEvent>>> {
    let mut events = Vec::with_capacity(copies.len());
    for (i, (c, (msg, size))) in copies.iter().zip(messages).enumerate() {
        let content = (i == 0).then_some(content);
        match store_message_pg(conn, &c.target, &c.folder, msg, *size, content).await {
            Ok(Stored::New(event)) => events.push(event),
            Ok(_) | Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(events))
}

/// [`Store::store_message`] on SQLite, inside the caller's transaction.
async fn store_message_sqlite(
    tx: &mut sqlx::SqliteConnection,
    target: &LocalTarget,
    folder: &Folder,
    msg: &NewMessage,
    size_i64: i64,
) -> Result<Stored> {
    let (lookup_sql, key): (&'static str, &str) = match folder {
        Folder::Inbox => (
            "SELECT id FROM mailboxes WHERE account_id = $1 AND name = $2",
            "INBOX",
        ),
        // Local parts are lower-cased, so a `+Tag` arrives as "tag": match names without case.
        Folder::Named(name) => (
            "SELECT id FROM mailboxes WHERE account_id = $1 AND lower(name) = lower($2) ORDER BY name LIMIT 1",
            name,
        ),
        Folder::Junk => (
            "SELECT id FROM mailboxes WHERE account_id = $1 AND special_use = $2",
            "\\Junk",
        ),
    };
    let mut mailbox_id: Option<i64> = match sqlx::query(lookup_sql)
        .bind(target.account_id)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?
    {
        Some(row) => Some(row.try_get("id")?),
        None => None,
    };
    if mailbox_id.is_none() {
        mailbox_id =
            match sqlx::query("SELECT id FROM mailboxes WHERE account_id = $1 AND name = 'INBOX'")
                .bind(target.account_id)
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(row) => Some(row.try_get("id")?),
                None => None,
            };
    }
    let mailbox_id = mailbox_id
        .ok_or_else(|| StoreError::NotFound(format!("account {} has no INBOX", target.address)))?;

    let earlier =
        sqlx::query("SELECT uid FROM messages WHERE mailbox_id = $1 AND delivery_key = $2")
            .bind(mailbox_id)
            .bind(&msg.delivery_key)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(if let Some(row) = earlier {
        Stored::AlreadyThere {
            mailbox_id,
            uid: row.try_get::<i64, _>("uid")? as u32,
        }
    } else {
        let charged = sqlx::query(
            "UPDATE accounts SET used_bytes = used_bytes + $2
             WHERE id = $1 AND (quota_bytes = 0 OR used_bytes + $2 <= quota_bytes)
             RETURNING used_bytes",
        )
        .bind(target.account_id)
        .bind(size_i64)
        .fetch_optional(&mut *tx)
        .await?;
        if charged.is_none() {
            let row = sqlx::query("SELECT quota_bytes, used_bytes FROM accounts WHERE id = $1")
                .bind(target.account_id)
                .fetch_one(&mut *tx)
                .await?;
            Stored::OverQuota {
                quota: row.try_get::<i64, _>("quota_bytes")? as u64,
                used: row.try_get::<i64, _>("used_bytes")? as u64,
            }
        } else {
            let row = sqlx::query(
                "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1
                 WHERE id = $1 RETURNING uidnext, highestmodseq",
            )
            .bind(mailbox_id)
            .fetch_one(&mut *tx)
            .await?;
            let uid = row.try_get::<i64, _>("uidnext")? - 1;
            let modseq: i64 = row.try_get("highestmodseq")?;
            sqlx::query(
                "INSERT INTO messages (mailbox_id, uid, modseq, internal_date, size, blob_hash, prefix,
                                       parse_cache, delivery_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(mailbox_id)
            .bind(uid)
            .bind(modseq)
            .bind(msg.internal_date)
            .bind(size_i64)
            .bind(&msg.blob.0)
            .bind(&msg.prefix)
            .bind(msg.parse_cache.as_deref())
            .bind(&msg.delivery_key)
            .execute(&mut *tx)
            .await?;
            let event = MailboxEvent {
                account_id: target.account_id,
                mailbox_id,
                uid: uid as u32,
                modseq: modseq as u64,
            };
            Stored::New(event)
        }
    })
}
