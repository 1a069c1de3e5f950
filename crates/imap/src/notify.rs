//! NOTIFY (RFC 5465): one connection follows many mailboxes.
//!
//! `NOTIFY SET [STATUS] (filter events) …` replaces what the session is
//! told of; `NOTIFY NONE` stops it. The codec does not know the command:
//! [`parse`] reads it (pure, table-tested below) and [`command`] applies it.
//!
//! Where it comes from: the store's change events ([`MailboxEvent`]: *that*
//! a mailbox changed, from this process or, on PostgreSQL, any process).
//! A NOTIFY session keeps what it last knew of each of the account's
//! mailboxes ([`Known`]: the mailbox row, and its message and unseen counts
//! once read); an event makes it read the mailbox again and say what
//! differs, so every kind of event is derived from the one signal:
//!
//! * another name, or a mailbox gone or new: `* LIST` (MailboxName,
//!   RFC 5465 §5.4: `\NonExistent` for a deleted one, `OLDNAME` for a
//!   renamed one, only the top of a renamed subtree; the direct parent of a
//!   created or deleted mailbox too, its children changed);
//! * another subscription: `* LIST` with or without `\Subscribed`
//!   (SubscriptionChange, §5.5);
//! * other counts, UIDNEXT or UIDVALIDITY: `* STATUS (MESSAGES UIDNEXT
//!   UIDVALIDITY UNSEEN [HIGHESTMODSEQ])` for MessageNew/MessageExpunge
//!   (§5.2, §5.3); another HIGHESTMODSEQ or UNSEEN alone: the same STATUS
//!   for FlagChange when it says something new (§5.1: with CONDSTORE
//!   enabled, or when UNSEEN changed);
//! * the selected mailbox: EXISTS, EXPUNGE (VANISHED) and flag FETCHes as
//!   after a command ([`crate::selected`]), pushed at once for SELECTED,
//!   with expunges held until a command that may report them for
//!   SELECTED-DELAYED (§6.1.2), and a FETCH of the attributes given with
//!   `MessageNew (…)` for each new message (§5.2);
//! * an event with MODSEQ 0 (the store's METADATA changes): `* METADATA
//!   mailbox entry …` naming the entries set, changed or removed since the
//!   session last read them (MailboxMetadataChange and ServerMetadataChange,
//!   §5.6 and §5.7; the session keeps each watched scope's entry names and
//!   a hash of each value, read at NOTIFY SET).
//!
//! A lost notification (the broadcast channel lagged) or a resync of the
//! store's listener makes the session compare every mailbox.
//!
//! Invariants:
//! * a session without NOTIFY pays one pointer for it ([`State`]'s
//!   `notify` is `None`); the watch state is boxed;
//! * responses go out only between commands and during IDLE (RFC 5465 §3.1);
//! * changes this session made itself are taken into [`Known`] silently
//!   after its command ([`absorb`]), as §5 asks ("SHOULD omit notifying the
//!   client if the event is caused by this client");
//! * a session never watches (nor names) more than `max_notify_mailboxes`:
//!   NOTIFY SET beyond it is `NO [NOTIFICATIONOVERFLOW]`, and growing past it later is
//!   `* OK [NOTIFICATIONOVERFLOW]` and NOTIFY NONE (§5.8).

use std::collections::BTreeMap;

use imap_codec::{CommandCodec, decode::Decoder};
use imap_types::command::CommandBody;
use mailroom_store::{Mailbox, MailboxEvent};
use tokio::sync::broadcast;

use crate::ImapServer;
use crate::names;
use crate::preparse::Cursor;
use crate::session::{Failure, Io, Outcome, Phase, State};

/// The events this server reports, as BADEVENT lists them (RFC 5465 §3.1).
pub const SUPPORTED_EVENTS: &str = "MessageNew MessageExpunge FlagChange MailboxName \
     SubscriptionChange MailboxMetadataChange ServerMetadataChange";

/// Which events a group asks for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    /// MessageNew and MessageExpunge (always together, §5).
    pub messages: bool,
    /// FlagChange.
    pub flags: bool,
    /// MailboxName.
    pub names: bool,
    /// SubscriptionChange.
    pub subscriptions: bool,
    /// MailboxMetadataChange (RFC 5465 §5.6).
    pub metadata: bool,
    /// ServerMetadataChange (§5.7).
    pub server_metadata: bool,
}

impl Events {
    fn any(self) -> bool {
        self.messages || self.flags || self.names || self.subscriptions || self.metadata
    }

    fn union(self, o: Events) -> Events {
        Events {
            messages: self.messages || o.messages,
            flags: self.flags || o.flags,
            names: self.names || o.names,
            subscriptions: self.subscriptions || o.subscriptions,
            metadata: self.metadata || o.metadata,
            server_metadata: self.server_metadata || o.server_metadata,
        }
    }
}

/// Which mailboxes a group names (RFC 5465 §6), names as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// INBOXES: mail may be delivered to any mailbox (plus-addressing),
    /// so this is PERSONAL (§6.3 allows it).
    Inboxes,
    /// PERSONAL: every mailbox of the account.
    Personal,
    /// SUBSCRIBED: the subscribed mailboxes, as they are at each event.
    Subscribed,
    /// SUBTREE: these and everything below them.
    Subtree(Vec<Vec<u8>>),
    /// MAILBOXES: exactly these (no wildcards, §6.6).
    Mailboxes(Vec<Vec<u8>>),
}

/// SELECTED or SELECTED-DELAYED (§6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedSpec {
    /// SELECTED-DELAYED: expunges wait for a command that may report them.
    pub delayed: bool,
    /// MessageNew/MessageExpunge asked for (else `NONE`).
    pub messages: bool,
    /// `MessageNew (fetch-att …)`: the list as sent, parentheses included.
    pub fetch: Option<Vec<u8>>,
}

/// A parsed `NOTIFY SET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The STATUS indicator: a STATUS for each watched mailbox now.
    pub status: bool,
    /// The selected mailbox's group, if any.
    pub selected: Option<SelectedSpec>,
    /// The other groups.
    pub groups: Vec<(Filter, Events)>,
}

/// Why a NOTIFY is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `BAD` with this text.
    Bad(&'static str),
    /// `NO [BADEVENT (…)]`: an event this server does not report.
    BadEvent,
}

/// Parses the arguments of NOTIFY (everything after `tag NOTIFY `, CRLF
/// included): `None` for NOTIFY NONE. Checks the rules RFC 5465 gives:
/// BAD for MessageNew without MessageExpunge or the reverse, FlagChange
/// without both, a fetch-att list outside SELECTED, a non-message event or
/// a second group for the selected mailbox; `NO [BADEVENT]` for an event
/// this server does not report (after the BAD checks).
pub fn parse(args: &[u8]) -> Result<Option<Request>, Refusal> {
    let mut c = Cursor::new(args);
    let verb = c.atom().ok_or(SYNTAX)?;
    let request = match verb.as_str() {
        "NONE" => None,
        "SET" => {
            c.sp().ok_or(SYNTAX)?;
            let mut status = false;
            if c.peek() != Some(b'(') {
                if c.atom().ok_or(SYNTAX)? != "STATUS" {
                    return Err(Refusal::Bad("expected STATUS or an event group"));
                }
                status = true;
                c.sp().ok_or(SYNTAX)?;
            }
            let mut request = Request {
                status,
                selected: None,
                groups: Vec::new(),
            };
            let mut unsupported = false;
            loop {
                unsupported |= group(&mut c, &mut request)?;
                if !c.eat(b' ') {
                    break;
                }
            }
            if unsupported {
                return Err(Refusal::BadEvent);
            }
            Some(request)
        }
        _ => return Err(Refusal::Bad("expected SET or NONE")),
    };
    if !c.at_end() {
        return Err(Refusal::Bad("unexpected text after the command"));
    }
    Ok(request)
}

const SYNTAX: Refusal = Refusal::Bad("syntax error in NOTIFY");

/// `mailbox / "(" mailbox *(SP mailbox) ")"`.
fn mailboxes(c: &mut Cursor<'_>) -> Option<Vec<Vec<u8>>> {
    if !c.eat(b'(') {
        return Some(vec![c.astring()?]);
    }
    let mut out = vec![c.astring()?];
    while !c.eat(b')') {
        c.sp()?;
        out.push(c.astring()?);
    }
    Some(out)
}

/// One `(filter events)` into `request`; whether it named an event this
/// server does not report.
fn group(c: &mut Cursor<'_>, request: &mut Request) -> Result<bool, Refusal> {
    if !c.eat(b'(') {
        return Err(Refusal::Bad("expected an event group"));
    }
    let word = c.atom().ok_or(SYNTAX)?;
    let filter = match word.as_str() {
        "SELECTED" | "SELECTED-DELAYED" => None,
        "INBOXES" => Some(Filter::Inboxes),
        "PERSONAL" => Some(Filter::Personal),
        "SUBSCRIBED" => Some(Filter::Subscribed),
        "SUBTREE" | "MAILBOXES" => {
            c.sp().ok_or(SYNTAX)?;
            let names = mailboxes(c).ok_or(Refusal::Bad("expected mailbox names"))?;
            Some(if word == "SUBTREE" {
                Filter::Subtree(names)
            } else {
                Filter::Mailboxes(names)
            })
        }
        _ => return Err(Refusal::Bad("unknown mailbox filter")),
    };
    c.sp().ok_or(SYNTAX)?;
    let mut events = Events::default();
    let (mut new, mut expunge, mut annotation, mut unsupported) = (false, false, false, false);
    let mut fetch = None;
    // `(event …)` by the grammar (§8); the examples of §3.1 leave the
    // parentheses out (`(selected MessageNew (uid) MessageExpunge)`), and
    // that is taken too.
    let listed = c.eat(b'(');
    let none = !listed && {
        let mark = c.mark();
        let word = c.atom();
        let none = word.as_deref() == Some("NONE") && c.at(b")");
        if !none {
            c.reset(mark);
        }
        none
    };
    if !none {
        loop {
            match c.atom().ok_or(SYNTAX)?.as_str() {
                "MESSAGENEW" => {
                    new = true;
                    if c.at(b" (") {
                        c.sp();
                        let atts = c
                            .raw_group()
                            .ok_or(Refusal::Bad("unbalanced fetch attribute list"))?;
                        check_fetch_atts(&atts)?;
                        fetch = Some(atts);
                    }
                }
                "MESSAGEEXPUNGE" => expunge = true,
                "FLAGCHANGE" => events.flags = true,
                "MAILBOXNAME" => events.names = true,
                "SUBSCRIPTIONCHANGE" => events.subscriptions = true,
                "MAILBOXMETADATACHANGE" => events.metadata = true,
                "SERVERMETADATACHANGE" => events.server_metadata = true,
                "ANNOTATIONCHANGE" => annotation = true,
                // Extensions.
                _ => unsupported = true,
            }
            if c.at(b")") {
                if listed {
                    c.eat(b')');
                }
                break;
            }
            c.sp().ok_or(SYNTAX)?;
        }
    }
    if !c.eat(b')') {
        return Err(Refusal::Bad("expected the end of the event group"));
    }
    if new != expunge {
        return Err(Refusal::Bad(
            "MessageNew and MessageExpunge go together (RFC 5465 section 5)",
        ));
    }
    if (events.flags || annotation) && !new {
        return Err(Refusal::Bad(
            "FlagChange needs MessageNew and MessageExpunge (RFC 5465 section 5)",
        ));
    }
    events.messages = new;
    match filter {
        None => {
            if request.selected.is_some() {
                return Err(Refusal::Bad(
                    "only one of SELECTED and SELECTED-DELAYED (RFC 5465 section 6.1)",
                ));
            }
            if events.names || events.subscriptions || events.metadata || events.server_metadata {
                return Err(Refusal::Bad(
                    "only message events apply to the selected mailbox",
                ));
            }
            request.selected = Some(SelectedSpec {
                delayed: word == "SELECTED-DELAYED",
                messages: events.messages,
                fetch,
            });
        }
        Some(filter) => {
            if fetch.is_some() {
                return Err(Refusal::Bad(
                    "fetch attributes apply to the selected mailbox only",
                ));
            }
            request.groups.push((filter, events));
        }
    }
    Ok(unsupported || annotation)
}

/// Whether `atts` (`(…)`) is a fetch-att list FETCH would take.
fn check_fetch_atts(atts: &[u8]) -> Result<(), Refusal> {
    fetch_command(&[1], atts)
        .map(|_| ())
        .ok_or(Refusal::Bad("invalid fetch attributes"))
}

/// `UID FETCH uids atts` as a command line, when the codec takes it.
fn fetch_command(uids: &[u32], atts: &[u8]) -> Option<Vec<u8>> {
    let mut line = format!("n UID FETCH {} ", crate::selected::uid_set(uids)).into_bytes();
    line.extend_from_slice(atts);
    line.extend_from_slice(b"\r\n");
    match CommandCodec::default().decode(&line) {
        Ok((b"", _)) => Some(line),
        _ => None,
    }
}

/// A watched set of mailboxes with its events, names in store form.
#[derive(Debug)]
enum Watch {
    All,
    Subscribed,
    Subtree(Vec<String>),
    Mailboxes(Vec<String>),
}

impl Watch {
    fn covers(&self, mb: &Mailbox) -> bool {
        match self {
            Watch::All => true,
            Watch::Subscribed => mb.subscribed,
            Watch::Subtree(names) => names.iter().any(|n| {
                mb.name == *n
                    || (mb.name.starts_with(n.as_str()) && mb.name.as_bytes()[n.len()] == b'/')
            }),
            Watch::Mailboxes(names) => names.contains(&mb.name),
        }
    }
}

/// What the session last knew of one mailbox.
#[derive(Debug)]
struct Known {
    mailbox: Mailbox,
    /// MESSAGES and UNSEEN, when read at the mailbox's current state.
    counts: Option<(u32, u32)>,
}

/// A session's NOTIFY state (boxed in [`State`]).
#[derive(Debug)]
pub(crate) struct Notify {
    selected: Option<SelectedSpec>,
    groups: Vec<(Watch, Events)>,
    /// The account's mailboxes by id.
    boxes: BTreeMap<i64, Known>,
    /// METADATA entries, for the scopes watched for their changes (0: the
    /// server's): each name with a hash of its value.
    metadata: BTreeMap<i64, Vec<(String, u64)>>,
}

impl Notify {
    /// The events asked for `mb` by the non-selected groups.
    fn events_for(&self, mb: &Mailbox) -> Events {
        self.groups
            .iter()
            .filter(|(w, _)| w.covers(mb))
            .fold(Events::default(), |acc, (_, e)| acc.union(*e))
    }

    /// How many mailboxes some group watches.
    fn watched(&self) -> usize {
        self.boxes
            .values()
            .filter(|k| self.events_for(&k.mailbox).any())
            .count()
    }

    /// Whether a group asks for METADATA changes of `scope` (0: the
    /// server's entries).
    fn watches_metadata(&self, scope: i64) -> bool {
        if scope == 0 {
            return self.groups.iter().any(|(_, e)| e.server_metadata);
        }
        self.boxes
            .get(&scope)
            .is_some_and(|k| self.events_for(&k.mailbox).metadata)
    }

    /// The fetch-att list for new messages in the selected mailbox.
    pub(crate) fn fetch_atts(&self) -> Option<&[u8]> {
        self.selected
            .as_ref()
            .filter(|s| s.messages)
            .and_then(|s| s.fetch.as_deref())
    }
}

/// What the responses depend on, copied out of the session state.
#[derive(Debug, Clone, Copy)]
struct View {
    account: i64,
    utf8: bool,
    condstore: bool,
    selected: Option<i64>,
}

fn view(state: &State) -> View {
    View {
        account: state.account_id(),
        utf8: state.utf8,
        condstore: state.condstore,
        selected: match &state.phase {
            Phase::Selected(sel) => Some(sel.mailbox.id),
            _ => None,
        },
    }
}

fn wire(name: &str, utf8: bool) -> String {
    names::quote(&names::to_wire(name, utf8), utf8)
}

/// NOTIFY SET / NOTIFY NONE. `args` follows `tag NOTIFY `.
pub(crate) async fn command(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    args: &[u8],
) -> Outcome {
    let request = match parse(args) {
        Ok(Some(r)) => r,
        Ok(None) => {
            state.notify = None;
            return Ok("OK NOTIFY NONE completed".into());
        }
        Err(Refusal::Bad(text)) => return Err(Failure::Bad(text.into())),
        Err(Refusal::BadEvent) => {
            return Err(Failure::No(format!(
                "[BADEVENT ({SUPPORTED_EVENTS})] unsupported event"
            )));
        }
    };
    let named: usize = request
        .groups
        .iter()
        .map(|(f, _)| match f {
            Filter::Subtree(n) | Filter::Mailboxes(n) => n.len(),
            _ => 0,
        })
        .sum();
    if named > server.settings.max_notify_mailboxes {
        // Each name is matched against every mailbox at each event.
        return Err(Failure::No(format!(
            "[NOTIFICATIONOVERFLOW] at most {} mailboxes can be named",
            server.settings.max_notify_mailboxes
        )));
    }
    let decode = |raw: &Vec<u8>| names::from_wire(raw, state.utf8).ok();
    let groups = request
        .groups
        .iter()
        .map(|(filter, events)| {
            let watch = match filter {
                Filter::Inboxes | Filter::Personal => Watch::All,
                Filter::Subscribed => Watch::Subscribed,
                // A name that cannot be a mailbox's is ignored, like one
                // that is none (RFC 5465 §3.1).
                Filter::Subtree(n) => Watch::Subtree(n.iter().filter_map(decode).collect()),
                Filter::Mailboxes(n) => Watch::Mailboxes(n.iter().filter_map(decode).collect()),
            };
            (watch, *events)
        })
        .collect();
    let v = view(state);
    // Whatever was announced before is covered by what is read now (a
    // change committed after the drain is heard of).
    drain(state);
    let mut notify = Notify {
        selected: request.selected,
        groups,
        boxes: BTreeMap::new(),
        metadata: BTreeMap::new(),
    };
    for mb in server.store.list_mailboxes(v.account).await? {
        notify.boxes.insert(
            mb.id,
            Known {
                mailbox: mb,
                counts: None,
            },
        );
    }
    if notify.watched() > server.settings.max_notify_mailboxes {
        return Err(Failure::No(format!(
            "[NOTIFICATIONOVERFLOW] at most {} mailboxes can be watched",
            server.settings.max_notify_mailboxes
        )));
    }
    let scopes: Vec<i64> = std::iter::once(0)
        .chain(notify.boxes.keys().copied())
        .filter(|&s| notify.watches_metadata(s))
        .collect();
    for scope in scopes {
        let entries = metadata_of(server, v.account, scope).await?;
        notify.metadata.insert(scope, entries);
    }
    if request.status {
        // RFC 5465 §3.1: a STATUS for each mailbox with message events,
        // other than the selected one, before the tagged OK.
        let ids: Vec<i64> = notify.boxes.keys().copied().collect();
        for id in ids {
            let known = &notify.boxes[&id];
            let events = notify.events_for(&known.mailbox);
            if Some(id) == v.selected || !(events.messages || events.flags) {
                continue;
            }
            let counts = server.store.mailbox_counts(id).await?;
            let known = notify.boxes.get_mut(&id).expect("listed");
            known.counts = Some((counts.messages, counts.unseen));
            io.line(&status_line(&known.mailbox, known.counts, v));
        }
    }
    state.notify = Some(Box::new(notify));
    Ok("OK NOTIFY completed".into())
}

/// Drops the events queued so far (the session is about to read the
/// store afresh).
fn drain(state: &mut State) {
    if let Some(rx) = state.events.as_mut() {
        while !matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
    }
}

/// The METADATA entries of `scope` (0: the server's), each name with a
/// hash of its value.
async fn metadata_of(
    server: &ImapServer,
    account: i64,
    scope: i64,
) -> mailroom_store::Result<Vec<(String, u64)>> {
    use std::hash::{Hash, Hasher};
    let entries = server
        .store
        .get_metadata(account, (scope != 0).then_some(scope))
        .await?;
    Ok(entries
        .into_iter()
        .map(|(name, value)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            value.hash(&mut h);
            (name, h.finish())
        })
        .collect())
}

/// A METADATA change in `scope` (0: the server's entries): `* METADATA
/// mailbox entry …` with the entries set, changed or removed since the
/// session last looked (RFC 5465 §5.6, §5.7; RFC 5464 §4.4.2), unless
/// `silent`.
async fn metadata_change(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    scope: i64,
    silent: bool,
) -> mailroom_store::Result<()> {
    let v = view(state);
    let Some(notify) = state.notify.as_mut() else {
        return Ok(());
    };
    if !notify.watches_metadata(scope) {
        notify.metadata.remove(&scope);
        return Ok(());
    }
    let fresh = metadata_of(server, v.account, scope).await?;
    let old = notify
        .metadata
        .insert(scope, fresh.clone())
        .unwrap_or_default();
    let mut changed: Vec<&str> = fresh
        .iter()
        .filter(|e| !old.contains(e))
        .chain(
            old.iter()
                .filter(|(n, _)| !fresh.iter().any(|(f, _)| f == n)),
        )
        .map(|(n, _)| n.as_str())
        .collect();
    changed.sort_unstable();
    if changed.is_empty() || silent {
        return Ok(());
    }
    let mailbox = match notify.boxes.get(&scope) {
        Some(k) => wire(&k.mailbox.name, v.utf8),
        None => "\"\"".to_string(),
    };
    io.line(&format!("* METADATA {mailbox} {}", changed.join(" ")));
    Ok(())
}

/// `* STATUS name (MESSAGES UIDNEXT UIDVALIDITY UNSEEN [HIGHESTMODSEQ])`.
fn status_line(mb: &Mailbox, counts: Option<(u32, u32)>, v: View) -> String {
    let (messages, unseen) = counts.unwrap_or_default();
    let mut line = format!(
        "* STATUS {} (MESSAGES {messages} UIDNEXT {} UIDVALIDITY {} UNSEEN {unseen}",
        wire(&mb.name, v.utf8),
        mb.uidnext,
        mb.uidvalidity
    );
    if v.condstore {
        line.push_str(&format!(" HIGHESTMODSEQ {}", mb.highestmodseq.max(1)));
    }
    line.push(')');
    line
}

/// `* LIST (attributes) "/" name`, with the attributes LIST would give.
fn list_line(mb: &Mailbox, boxes: &BTreeMap<i64, Known>, v: View, oldname: Option<&str>) -> String {
    let prefix = format!("{}/", mb.name);
    let children = boxes.values().any(|k| k.mailbox.name.starts_with(&prefix));
    let mut attrs: Vec<&str> = Vec::new();
    if let Some(su) = &mb.special_use {
        attrs.push(su);
    }
    if mb.subscribed {
        attrs.push("\\Subscribed");
    }
    attrs.push(if children {
        "\\HasChildren"
    } else {
        "\\HasNoChildren"
    });
    let old = oldname
        .map(|o| format!(" (\"OLDNAME\" ({}))", wire(o, v.utf8)))
        .unwrap_or_default();
    format!(
        "* LIST ({}) \"/\" {}{old}",
        attrs.join(" "),
        wire(&mb.name, v.utf8)
    )
}

/// Takes one store event. `in_idle`: the session is in IDLE, which may
/// report expunges whatever the filter (RFC 5465 §6.1.2).
pub(crate) async fn on_event(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    event: Result<MailboxEvent, broadcast::error::RecvError>,
    in_idle: bool,
) {
    let v = view(state);
    let everything = match event {
        Err(broadcast::error::RecvError::Closed) => {
            state.events = None;
            return;
        }
        Err(broadcast::error::RecvError::Lagged(_)) => true,
        Ok(ev) if ev.is_resync() || (ev.account_id == v.account && ev.mailbox_id == 0) => true,
        Ok(ev) if ev.account_id != v.account => return,
        Ok(ev) if ev.modseq == 0 && ev.uid == 0 => {
            // A METADATA change (or a mailbox new and never written).
            if ev.mailbox_id != 0
                && let Err(e) = Box::pin(refresh_one(server, io, state, ev.mailbox_id, v)).await
            {
                tracing::warn!(error = %e, "NOTIFY: reading a mailbox failed");
            }
            if let Err(e) = Box::pin(metadata_change(server, io, state, ev.mailbox_id, false)).await
            {
                tracing::warn!(error = %e, "NOTIFY: reading METADATA failed");
            }
            return;
        }
        Ok(ev) => {
            if let Err(e) = Box::pin(refresh_one(server, io, state, ev.mailbox_id, v)).await {
                tracing::warn!(error = %e, "NOTIFY: reading a mailbox failed");
            }
            if Some(ev.mailbox_id) == v.selected {
                push_selected(server, io, state, in_idle).await;
            }
            return;
        }
    };
    if everything {
        if let Err(e) = Box::pin(refresh_all(server, io, state, v, false)).await {
            tracing::warn!(error = %e, "NOTIFY: reading the mailboxes failed");
        }
        let scopes: Vec<i64> = state
            .notify
            .as_ref()
            .map(|n| n.metadata.keys().copied().collect())
            .unwrap_or_default();
        for scope in scopes {
            if let Err(e) = Box::pin(metadata_change(server, io, state, scope, false)).await {
                tracing::warn!(error = %e, "NOTIFY: reading METADATA failed");
            }
        }
        if v.selected.is_some() {
            push_selected(server, io, state, in_idle).await;
        }
    }
}

/// The selected mailbox's changes, as its group asks.
async fn push_selected(server: &ImapServer, io: &mut Io, state: &mut State, in_idle: bool) {
    let Some(spec) = state.notify.as_ref().and_then(|n| n.selected.clone()) else {
        return;
    };
    if spec.messages {
        if let Phase::Selected(sel) = &mut state.phase {
            // An event says the store changed: no earlier read vouches for it.
            sel.up_to_date = false;
        }
        crate::session::sync_selected(server, io, state, in_idle || !spec.delayed).await;
    }
}

/// After `sync` announced new messages (UIDs above `last_uid`): their
/// FETCH with the attributes of `MessageNew (…)` (RFC 5465 §5.2).
pub(crate) async fn fetch_new(server: &ImapServer, io: &mut Io, state: &mut State, last_uid: u32) {
    let Some(atts) = state
        .notify
        .as_ref()
        .and_then(|n| n.fetch_atts())
        .map(<[u8]>::to_vec)
    else {
        return;
    };
    let Phase::Selected(sel) = &state.phase else {
        return;
    };
    let uids: Vec<u32> = sel
        .messages
        .iter()
        .map(|m| m.uid)
        .filter(|&u| u > last_uid)
        .collect();
    if uids.is_empty() {
        return;
    }
    let Some(line) = fetch_command(&uids, &atts) else {
        return;
    };
    let Ok((_, command)) = CommandCodec::default().decode(&line) else {
        return;
    };
    if let CommandBody::Fetch {
        sequence_set,
        macro_or_item_names,
        modifiers,
        ..
    } = command.body
    {
        let lifted = crate::preparse::Lifted::default();
        let fetched = Box::pin(crate::fetch::fetch(
            server,
            io,
            state,
            &sequence_set,
            macro_or_item_names,
            true,
            &modifiers,
            &lifted,
        ))
        .await;
        if let Err(Failure::Store(e)) = fetched {
            tracing::warn!(error = %e, "NOTIFY: FETCH of new messages failed");
        }
        // What that FETCH read vouches for nothing after it (see
        // `Selected::up_to_date`: only a command about to end may).
        if let Phase::Selected(sel) = &mut state.phase {
            sel.up_to_date = false;
        }
    }
}

/// One mailbox changed: its STATUS if that says something new, or (its
/// name or subscription changed, it is new or gone) a comparison of all.
async fn refresh_one(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    id: i64,
    v: View,
) -> mailroom_store::Result<()> {
    let fresh = server.store.mailbox_by_id(id).await?;
    let Some(notify) = state.notify.as_mut() else {
        return Ok(());
    };
    let same_shape = match (&fresh, notify.boxes.get(&id)) {
        (Some(f), Some(k)) => f.name == k.mailbox.name && f.subscribed == k.mailbox.subscribed,
        (None, None) => true,
        _ => false,
    };
    if !same_shape {
        return refresh_all(server, io, state, v, false).await;
    }
    if let Some(fresh) = fresh {
        let line = status_change(server, notify, fresh, v).await?;
        if let Some(line) = line {
            io.line(&line);
        }
    }
    Ok(())
}

/// Takes `fresh` into what the session knows of it; the STATUS line to
/// send, if its groups ask for what changed (see the module docs).
async fn status_change(
    server: &ImapServer,
    notify: &mut Notify,
    fresh: Mailbox,
    v: View,
) -> mailroom_store::Result<Option<String>> {
    let events = notify.events_for(&fresh);
    let Some(known) = notify.boxes.get_mut(&fresh.id) else {
        return Ok(None);
    };
    let old = &known.mailbox;
    let moved = old.uidnext != fresh.uidnext || old.uidvalidity != fresh.uidvalidity;
    let touched = moved || old.highestmodseq != fresh.highestmodseq;
    if !touched {
        return Ok(None);
    }
    let old_counts = known.counts.take();
    known.mailbox = fresh;
    if Some(known.mailbox.id) == v.selected || !(events.messages || events.flags) {
        return Ok(None);
    }
    let c = server.store.mailbox_counts(known.mailbox.id).await?;
    known.counts = Some((c.messages, c.unseen));
    let messages_changed = moved || old_counts.is_none_or(|(m, _)| m != c.messages);
    let unseen_changed = old_counts.is_none_or(|(_, u)| u != c.unseen);
    let say = (events.messages && messages_changed)
        || (events.flags && (v.condstore || unseen_changed || moved));
    Ok(say.then(|| status_line(&known.mailbox, known.counts, v)))
}

/// Compares every mailbox of the account with what the session knew, says
/// what changed (unless `silent`) and keeps the new state.
async fn refresh_all(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    v: View,
    silent: bool,
) -> mailroom_store::Result<()> {
    let list = server.store.list_mailboxes(v.account).await?;
    let Some(notify) = state.notify.as_mut() else {
        return Ok(());
    };
    let mut lines = Vec::new();
    let fresh: BTreeMap<i64, Mailbox> = list.into_iter().map(|m| (m.id, m)).collect();
    let old = std::mem::take(&mut notify.boxes);
    // The new shape first, so that LIST attributes describe it.
    notify.boxes = fresh
        .values()
        .map(|m| {
            let carried = old.get(&m.id).map(|k| Known {
                mailbox: k.mailbox.clone(),
                counts: k.counts,
            });
            (
                m.id,
                carried.unwrap_or_else(|| Known {
                    mailbox: m.clone(),
                    counts: None,
                }),
            )
        })
        .collect();
    for k in notify.boxes.values_mut() {
        // Names and subscriptions now; counts when compared below.
        let m = &fresh[&k.mailbox.id];
        k.mailbox.name.clone_from(&m.name);
        k.mailbox.subscribed = m.subscribed;
        k.mailbox.special_use.clone_from(&m.special_use);
    }
    let mut parents: Vec<String> = Vec::new();
    // Deleted.
    for (id, k) in &old {
        if !fresh.contains_key(id) && notify.events_for(&k.mailbox).names {
            lines.push(format!(
                "* LIST (\\NonExistent) \"/\" {}",
                wire(&k.mailbox.name, v.utf8)
            ));
            parents.extend(direct_parent(&k.mailbox.name));
        }
    }
    // Created.
    for (id, m) in &fresh {
        if !old.contains_key(id) && notify.events_for(m).names {
            lines.push(list_line(m, &notify.boxes, v, None));
            parents.extend(direct_parent(&m.name));
        }
    }
    // Renamed: the top of each renamed subtree only (RFC 5465 §5.4).
    let renamed: Vec<(&str, &str, &Mailbox)> = fresh
        .values()
        .filter_map(|m| {
            let k = old.get(&m.id)?;
            (k.mailbox.name != m.name).then_some((k.mailbox.name.as_str(), m.name.as_str(), m))
        })
        .collect();
    for &(from, to, m) in &renamed {
        let below_another = renamed.iter().any(|&(pf, pt, _)| {
            from.len() > pf.len()
                && from.starts_with(pf)
                && from.as_bytes()[pf.len()] == b'/'
                && to == format!("{pt}{}", &from[pf.len()..])
        });
        let was = &old[&m.id].mailbox;
        if !below_another && (notify.events_for(was).names || notify.events_for(m).names) {
            lines.push(list_line(m, &notify.boxes, v, Some(from)));
        }
    }
    // Subscriptions.
    for (id, m) in &fresh {
        if let Some(k) = old.get(id)
            && k.mailbox.subscribed != m.subscribed
            && (notify.events_for(&k.mailbox).subscriptions || notify.events_for(m).subscriptions)
        {
            lines.push(list_line(m, &notify.boxes, v, None));
        }
    }
    parents.sort();
    parents.dedup();
    // (One created or deleted in the same change was told of already.)
    parents.retain(|p| {
        let created = fresh
            .values()
            .any(|m| m.name == *p && !old.contains_key(&m.id));
        let deleted = old
            .iter()
            .any(|(id, k)| k.mailbox.name == *p && !fresh.contains_key(id));
        !created && !deleted
    });
    for p in parents {
        if let Some(m) = fresh.values().find(|m| m.name == p)
            && notify.events_for(m).names
        {
            lines.push(list_line(m, &notify.boxes, v, None));
        }
    }
    // Counts.
    for m in fresh.into_values() {
        if let Some(line) = status_change(server, notify, m, v).await? {
            lines.push(line);
        }
    }
    let overflow = notify.watched() > server.settings.max_notify_mailboxes;
    if overflow {
        // RFC 5465 §5.8: say so, and behave as after NOTIFY NONE.
        state.notify = None;
        io.line("* OK [NOTIFICATIONOVERFLOW] too many mailboxes to watch: NOTIFY is off");
        return Ok(());
    }
    if !silent {
        for line in lines {
            io.line(&line);
        }
    }
    Ok(())
}

fn direct_parent(name: &str) -> Option<String> {
    name.rsplit_once('/').map(|(p, _)| p.to_string())
}

/// After a command of this session that may have changed mailboxes
/// (`target`: the mailbox APPEND, COPY or MOVE wrote; `None`: the names or
/// subscriptions changed): take the new state in without a word, so the
/// session is not told of its own change (RFC 5465 §5).
pub(crate) async fn absorb(server: &ImapServer, io: &mut Io, state: &mut State, target: Absorb) {
    let v = view(state);
    let result = match target {
        Absorb::Nothing => return,
        Absorb::Structure => refresh_all(server, io, state, v, true).await,
        Absorb::Metadata(None) => metadata_change(server, io, state, 0, true).await,
        Absorb::Metadata(Some(name)) => {
            match server.store.mailbox_by_name(v.account, &name).await {
                Ok(Some(mb)) => metadata_change(server, io, state, mb.id, true).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Absorb::Mailbox(name) => match server.store.mailbox_by_name(v.account, &name).await {
            Ok(Some(fresh)) => match state.notify.as_mut() {
                Some(notify) if notify.boxes.contains_key(&fresh.id) => {
                    status_change(server, notify, fresh, v).await.map(|_| ())
                }
                _ => Ok(()),
            },
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "NOTIFY: reading own changes failed");
    }
}

/// What a command may have changed, for [`absorb`].
#[derive(Debug)]
pub(crate) enum Absorb {
    /// Nothing NOTIFY reports.
    Nothing,
    /// Names or subscriptions.
    Structure,
    /// The messages of this mailbox (store form).
    Mailbox(String),
    /// The METADATA of this mailbox (`None`: the server's entries).
    Metadata(Option<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(args: &str) -> Request {
        parse(format!("{args}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("{args}: {e:?}"))
            .expect("SET")
    }

    fn refused(args: &str) -> Refusal {
        parse(format!("{args}\r\n").as_bytes()).expect_err(args)
    }

    const MESSAGES: Events = Events {
        messages: true,
        flags: false,
        names: false,
        subscriptions: false,
        metadata: false,
        server_metadata: false,
    };

    #[test]
    fn rfc_5465_examples_parse() {
        // §3.1's example, as printed, names the subtree's event without
        // parentheses and MessageNew without MessageExpunge: BAD by its
        // own grammar (§8) and §5. Corrected, it parses.
        assert!(matches!(
            refused(
                "set status (selected MessageNew (uid body.peek[header.fields (from to subject)]) MessageExpunge) (subtree Lists MessageNew)"
            ),
            Refusal::Bad(_)
        ));
        let r = set(
            "set status (selected MessageNew (uid body.peek[header.fields (from to subject)]) MessageExpunge) (subtree Lists (MessageNew MessageExpunge))",
        );
        assert!(r.status);
        let sel = r.selected.unwrap();
        assert!(!sel.delayed && sel.messages);
        assert_eq!(
            sel.fetch.as_deref(),
            Some(&b"(uid body.peek[header.fields (from to subject)])"[..])
        );
        assert_eq!(
            r.groups,
            vec![(Filter::Subtree(vec![b"Lists".to_vec()]), MESSAGES)]
        );
        // §6.
        let r = set(
            "set (mailboxes INBOX (Messagenew messageExpunge)) (personal (SubscriptionChange))",
        );
        assert!(!r.status && r.selected.is_none());
        assert_eq!(
            r.groups[0],
            (Filter::Mailboxes(vec![b"INBOX".to_vec()]), MESSAGES)
        );
        assert_eq!(
            r.groups[1],
            (
                Filter::Personal,
                Events {
                    subscriptions: true,
                    ..Events::default()
                }
            )
        );
        let r = set(
            "set (selected (Messagenew (uid flags) messageExpunge)) (personal (MessageNew FlagChange MessageExpunge))",
        );
        assert!(r.groups[0].1.flags);
        assert_eq!(parse(b"NONE\r\n"), Ok(None));
    }

    #[test]
    fn mailbox_lists_quoted_names_and_literals() {
        let r = set("SET (MAILBOXES (\"a b\" {3}\r\nc)d x) (MailboxName)) (SELECTED-DELAYED NONE)");
        assert_eq!(
            r.groups[0].0,
            Filter::Mailboxes(vec![b"a b".to_vec(), b"c)d".to_vec(), b"x".to_vec()])
        );
        assert_eq!(
            r.selected,
            Some(SelectedSpec {
                delayed: true,
                messages: false,
                fetch: None
            })
        );
        let r =
            set("SET (SUBTREE \"Lists\" (MessageNew MessageExpunge FlagChange)) (INBOXES NONE)");
        assert_eq!(r.groups[1], (Filter::Inboxes, Events::default()));
    }

    #[test]
    fn rfc_5465_rules_are_enforced() {
        // §5: MessageNew and MessageExpunge together; FlagChange with both.
        assert!(matches!(
            refused("SET (PERSONAL (MessageNew))"),
            Refusal::Bad(_)
        ));
        assert!(matches!(
            refused("SET (PERSONAL (MessageExpunge))"),
            Refusal::Bad(_)
        ));
        assert!(matches!(
            refused("SET (PERSONAL (FlagChange))"),
            Refusal::Bad(_)
        ));
        // §6.1: one selected group, message events only.
        assert!(matches!(
            refused("SET (SELECTED (MessageNew MessageExpunge)) (SELECTED-DELAYED NONE)"),
            Refusal::Bad(_)
        ));
        assert!(matches!(
            refused("SET (SELECTED (MailboxName))"),
            Refusal::Bad(_)
        ));
        // Fetch attributes outside SELECTED, and invalid ones.
        assert!(matches!(
            refused("SET (PERSONAL (MessageNew (UID) MessageExpunge))"),
            Refusal::Bad(_)
        ));
        assert!(matches!(
            refused("SET (SELECTED (MessageNew (NOSUCHATT) MessageExpunge))"),
            Refusal::Bad(_)
        ));
        // Syntax.
        for bad in [
            "SET",
            "SET ()",
            "SET (NOWHERE (MailboxName))",
            "SET (PERSONAL)",
            "SET (PERSONAL (MailboxName)",
            "SET (PERSONAL (MailboxName)) trailing",
            "SET STATUSX (PERSONAL (MailboxName))",
            "MAYBE",
        ] {
            assert!(matches!(refused(bad), Refusal::Bad(_)), "{bad}");
        }
        // Unsupported events: NO [BADEVENT], after the BAD checks.
        assert_eq!(
            refused("SET (PERSONAL (MessageNew MessageExpunge AnnotationChange))"),
            Refusal::BadEvent
        );
        assert_eq!(
            set("SET (PERSONAL (MailboxMetadataChange ServerMetadataChange))").groups[0].1,
            Events {
                metadata: true,
                server_metadata: true,
                ..Events::default()
            }
        );
        assert!(matches!(
            refused("SET (SELECTED (MailboxMetadataChange))"),
            Refusal::Bad(_)
        ));
        assert_eq!(refused("SET (PERSONAL (X-Whatever))"), Refusal::BadEvent);
        assert!(matches!(
            refused("SET (PERSONAL (X-Whatever)) (PERSONAL (MessageNew))"),
            Refusal::Bad(_)
        ));
    }

    #[test]
    fn sessions_without_notify_pay_one_pointer() {
        assert_eq!(
            std::mem::size_of::<Option<Box<Notify>>>(),
            std::mem::size_of::<usize>()
        );
        // What a watched mailbox costs, besides its name's bytes.
        assert!(
            std::mem::size_of::<Known>() <= 128,
            "{}",
            std::mem::size_of::<Known>()
        );
    }

    #[test]
    fn watches_cover_what_they_name() {
        let mb = |name: &str, subscribed| Mailbox {
            id: 1,
            account_id: 1,
            name: name.into(),
            special_use: None,
            subscribed,
            uidvalidity: 1,
            uidnext: 1,
            highestmodseq: 0,
        };
        let subtree = Watch::Subtree(vec!["Lists".into()]);
        assert!(subtree.covers(&mb("Lists", false)));
        assert!(subtree.covers(&mb("Lists/a/b", false)));
        assert!(!subtree.covers(&mb("Listsx", false)));
        let exact = Watch::Mailboxes(vec!["Lists".into()]);
        assert!(exact.covers(&mb("Lists", false)) && !exact.covers(&mb("Lists/a", false)));
        assert!(
            Watch::Subscribed.covers(&mb("x", true)) && !Watch::Subscribed.covers(&mb("x", false))
        );
    }
}
