//! IMAP NOTIFY (RFC 5465) and read-only ACL / LIST-MYRIGHTS (RFC 4314,
//! RFC 8440) through real sockets. One session sets NOTIFY and waits
//! between commands (or in IDLE); a second session of the same account
//! (or a delivery) changes mailboxes, and the first must be told at once,
//! without sending a command. On SQLite the changes come through the
//! in-process channel, on PostgreSQL through LISTEN/NOTIFY.

use std::time::Duration;

use mailroom_tests::imap_client::{ALICE, Imap, connect};
use mailroom_tests::{Backend, Running, deliver_message, start_with, with_accounts};
use tokio::net::TcpStream;

mailroom_tests::on_both!(
    other_mailboxes_report_status,
    flag_changes_report_highestmodseq_with_condstore,
    selected_mailbox_pushes_exists_fetch_and_expunge,
    selected_delayed_holds_expunges_until_a_command,
    mailbox_names_and_subscriptions,
    notify_none_stops_and_idle_follows_notify,
    metadata_changes,
);

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@remote.test>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@remote.test>\r\n\r\nbody of {subject}\r\n"
    )
    .into_bytes()
}

/// Two logged-in sessions of alice: the watcher and the one that acts.
async fn two_sessions(r: &Running) -> (Imap<TcpStream>, Imap<TcpStream>) {
    with_accounts(r, &[ALICE]).await;
    let addr = r.stack.addr("imap").unwrap();
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    a.login().await;
    b.login().await;
    (a, b)
}

/// The next line the watcher is sent unasked.
async fn pushed(a: &mut Imap<TcpStream>) -> String {
    a.line().await
}

/// After a moment, a NOOP answers with nothing unasked: nothing more was
/// pushed meanwhile either (it would have been read here first).
async fn nothing_more(a: &mut Imap<TcpStream>) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.ok("NOOP").await, Vec::<String>::new());
}

fn status_of(line: &str) -> (&str, &str) {
    let rest = line
        .strip_prefix("* STATUS ")
        .unwrap_or_else(|| panic!("not a STATUS: {line}"));
    let open = rest.find(" (").unwrap();
    (&rest[..open], &rest[open + 2..rest.len() - 1])
}

/// STATUS for another mailbox on new and expunged messages (RFC 5465
/// §5.2, §5.3), with the STATUS indicator's initial STATUS (§3.1); a
/// mailbox named but missing is ignored, not an error (§3.1); flag
/// changes nobody asked for are not reported.
async fn other_mailboxes_report_status(r: &Running) {
    let (mut a, mut b) = two_sessions(r).await;
    b.ok("CREATE Lists/A").await;
    let initial = a
        .ok("NOTIFY SET STATUS (SUBTREE Lists (MessageNew MessageExpunge)) (MAILBOXES (NoSuch \"Archive\") (MessageNew MessageExpunge))")
        .await;
    let names: Vec<&str> = initial.iter().map(|l| status_of(l).0).collect();
    assert_eq!(
        names,
        ["\"Archive\"", "\"Lists\"", "\"Lists/A\""],
        "{initial:#?}"
    );
    let (_, items) = status_of(&initial[2]);
    assert!(
        items.starts_with("MESSAGES 0 UIDNEXT 1 UIDVALIDITY "),
        "{items}"
    );
    assert!(items.ends_with(" UNSEEN 0"), "{items}");

    let (_, done) = b.append_plus("ap", "Lists/A", &message("one")).await;
    assert!(done.starts_with("ap OK"), "{done}");
    let line = pushed(&mut a).await;
    let (name, items) = status_of(&line);
    assert_eq!(name, "\"Lists/A\"");
    assert!(
        items.starts_with("MESSAGES 1 UIDNEXT 2 UIDVALIDITY "),
        "{items}"
    );
    assert!(items.ends_with(" UNSEEN 1"), "{items}");

    // A flag change: not asked for.
    b.ok("SELECT Lists/A").await;
    b.ok("STORE 1 +FLAGS (\\Flagged)").await;
    nothing_more(&mut a).await;
    // An expunge.
    b.ok("STORE 1 +FLAGS (\\Deleted)").await;
    b.ok("EXPUNGE").await;
    let line = pushed(&mut a).await;
    let (name, items) = status_of(&line);
    assert_eq!(name, "\"Lists/A\"");
    assert!(items.starts_with("MESSAGES 0 UIDNEXT 2 "), "{items}");
    // A mailbox nobody watches.
    b.append_plus("ap2", "Drafts", &message("two")).await;
    nothing_more(&mut a).await;
    // The session's own APPEND is not reported back to it (RFC 5465 §5).
    let (_, done) = a.append_plus("own", "Lists/A", &message("own")).await;
    assert!(done.starts_with("own OK"), "{done}");
    nothing_more(&mut a).await;
}

/// FlagChange in another mailbox: STATUS with HIGHESTMODSEQ once
/// CONDSTORE is enabled, and for a change of UNSEEN (RFC 5465 §5.1).
async fn flag_changes_report_highestmodseq_with_condstore(r: &Running) {
    let (mut a, mut b) = two_sessions(r).await;
    b.append_plus("ap", "Archive", &message("one")).await;
    a.ok("ENABLE CONDSTORE").await;
    a.ok("NOTIFY SET (PERSONAL (MessageNew MessageExpunge FlagChange))")
        .await;
    b.ok("SELECT Archive").await;
    b.ok("STORE 1 +FLAGS (\\Flagged)").await;
    let line = pushed(&mut a).await;
    let (name, items) = status_of(&line);
    assert_eq!(name, "\"Archive\"");
    assert!(items.contains(" UNSEEN 1 HIGHESTMODSEQ "), "{items}");
    b.ok("STORE 1 +FLAGS (\\Seen)").await;
    let line = pushed(&mut a).await;
    let (_, items) = status_of(&line);
    assert!(items.contains(" UNSEEN 0 HIGHESTMODSEQ "), "{items}");
    nothing_more(&mut a).await;
}

/// SELECTED (RFC 5465 §5.2, §5.3, §6.1.1): EXISTS and the FETCH asked for
/// with MessageNew, flag FETCHes and EXPUNGE, all at once between
/// commands; a new message this session appended itself gets no FETCH.
async fn selected_mailbox_pushes_exists_fetch_and_expunge(r: &Running) {
    let (mut a, mut b) = two_sessions(r).await;
    deliver_message(r, 1, ALICE, &message("first")).await;
    a.ok("ENABLE IMAP4rev2").await;
    a.ok("SELECT INBOX").await;
    b.ok("SELECT INBOX").await;
    a.ok("NOTIFY SET (SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (Subject)]) MessageExpunge FlagChange))")
        .await;
    deliver_message(r, 2, ALICE, &message("second")).await;
    assert_eq!(pushed(&mut a).await, "* 2 EXISTS");
    let fetch = pushed(&mut a).await;
    assert!(
        fetch.starts_with("* 2 FETCH (UID 2 BODY[HEADER.FIELDS (Subject)] {"),
        "{fetch}"
    );
    assert!(fetch.contains("Subject: second"), "{fetch}");
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert_eq!(pushed(&mut a).await, "* 1 FETCH (FLAGS (\\Deleted) UID 1)");
    b.ok("EXPUNGE").await;
    assert_eq!(pushed(&mut a).await, "* 1 EXPUNGE");
    // Its own APPEND: EXISTS with the command, no FETCH (§5.2 SHOULD NOT).
    let (untagged, done) = a.append_plus("ap", "INBOX", &message("own")).await;
    assert!(done.starts_with("ap OK"), "{done}");
    assert_eq!(untagged, ["* 2 EXISTS"]);
    nothing_more(&mut a).await;
    // The fetch attributes did not set \Seen.
    assert_eq!(a.ok("FETCH 1 (FLAGS)").await, ["* 1 FETCH (FLAGS ())"]);
}

/// SELECTED-DELAYED (RFC 5465 §6.1.2): new messages at once, expunges
/// only with a command that may report them (NOOP), never with FETCH.
async fn selected_delayed_holds_expunges_until_a_command(r: &Running) {
    let (mut a, mut b) = two_sessions(r).await;
    deliver_message(r, 1, ALICE, &message("first")).await;
    a.ok("ENABLE IMAP4rev2").await;
    a.ok("SELECT INBOX").await;
    b.ok("SELECT INBOX").await;
    a.ok("NOTIFY SET (SELECTED-DELAYED (MessageNew MessageExpunge))")
        .await;
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert_eq!(pushed(&mut a).await, "* 1 FETCH (FLAGS (\\Deleted) UID 1)");
    b.ok("EXPUNGE").await;
    deliver_message(r, 2, ALICE, &message("second")).await;
    // The arrival is pushed; the expunged message keeps its number.
    assert_eq!(pushed(&mut a).await, "* 2 EXISTS");
    assert_eq!(a.ok("FETCH 2 (UID)").await, ["* 2 FETCH (UID 2)"]);
    assert_eq!(a.ok("NOOP").await, ["* 1 EXPUNGE"]);
}

/// MailboxName (RFC 5465 §5.4) on CREATE, RENAME (the top of a renamed
/// subtree only, with OLDNAME) and DELETE (\NonExistent), and
/// SubscriptionChange (§5.5); the session's own CREATE is not reported.
async fn mailbox_names_and_subscriptions(r: &Running) {
    let (mut a, mut b) = two_sessions(r).await;
    a.ok("NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))")
        .await;
    b.ok("CREATE New").await;
    assert_eq!(
        pushed(&mut a).await,
        "* LIST (\\HasNoChildren) \"/\" \"New\""
    );
    b.ok("SUBSCRIBE New").await;
    assert_eq!(
        pushed(&mut a).await,
        "* LIST (\\Subscribed \\HasNoChildren) \"/\" \"New\""
    );
    b.ok("CREATE New/Child").await;
    assert_eq!(
        pushed(&mut a).await,
        "* LIST (\\HasNoChildren) \"/\" \"New/Child\""
    );
    // The parent's children changed (§5.4: it is affected too).
    assert_eq!(
        pushed(&mut a).await,
        "* LIST (\\Subscribed \\HasChildren) \"/\" \"New\""
    );
    b.ok("RENAME New Newer").await;
    assert_eq!(
        pushed(&mut a).await,
        "* LIST (\\Subscribed \\HasChildren) \"/\" \"Newer\" (\"OLDNAME\" (\"New\"))"
    );
    b.ok("UNSUBSCRIBE Newer").await;
    assert_eq!(
        pushed(&mut a).await,
        "* LIST (\\HasChildren) \"/\" \"Newer\""
    );
    b.ok("DELETE Newer/Child").await;
    assert_eq!(
        pushed(&mut a).await,
        "* LIST (\\NonExistent) \"/\" \"Newer/Child\""
    );
    assert_eq!(
        pushed(&mut a).await,
        "* LIST (\\HasNoChildren) \"/\" \"Newer\""
    );
    nothing_more(&mut a).await;
    a.ok("CREATE Mine").await;
    a.ok("DELETE Mine").await;
    nothing_more(&mut a).await;
}

/// NOTIFY NONE stops the notifications; in IDLE a NOTIFY session is told
/// what NOTIFY asked for (RFC 5465 §4), other mailboxes included.
async fn notify_none_stops_and_idle_follows_notify(r: &Running) {
    let (mut a, mut b) = two_sessions(r).await;
    a.ok("ENABLE IMAP4rev2").await;
    a.ok("SELECT INBOX").await;
    a.ok("NOTIFY SET (SELECTED (MessageNew MessageExpunge)) (MAILBOXES Archive (MessageNew MessageExpunge))")
        .await;
    a.send(b"i1 IDLE\r\n").await;
    assert_eq!(a.line().await, "+ idling");
    b.append_plus("ap", "Archive", &message("one")).await;
    let line = pushed(&mut a).await;
    assert_eq!(status_of(&line).0, "\"Archive\"");
    deliver_message(r, 1, ALICE, &message("inbox")).await;
    assert_eq!(pushed(&mut a).await, "* 1 EXISTS");
    a.send(b"DONE\r\n").await;
    assert_eq!(a.line().await, "i1 OK IDLE terminated");

    a.ok("NOTIFY NONE").await;
    b.append_plus("ap2", "Archive", &message("two")).await;
    nothing_more(&mut a).await;
}

/// Refusals: BAD for what RFC 5465 §5 and §6.1 forbid, NO [BADEVENT]
/// with the supported events for what this server does not report,
/// NO [NOTIFICATIONOVERFLOW] beyond the configured number of mailboxes,
/// and `* OK [NOTIFICATIONOVERFLOW]` when the watched set grows past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_overflow() {
    let r = start_with(Backend::Sqlite, None, |c| c.imap.max_notify_mailboxes = 3)
        .await
        .unwrap();
    let (mut a, mut b) = two_sessions(&r).await;
    let (_, done) = a.cmd("NOTIFY SET (PERSONAL (MessageNew))").await;
    assert!(done.contains(" BAD "), "{done}");
    let (_, done) = a.cmd("NOTIFY SET (SELECTED (MailboxName))").await;
    assert!(done.contains(" BAD "), "{done}");
    let (_, done) = a
        .cmd("NOTIFY SET (PERSONAL (MessageNew MessageExpunge AnnotationChange))")
        .await;
    assert!(
        done.contains(
            " NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName \
             SubscriptionChange MailboxMetadataChange ServerMetadataChange)]"
        ),
        "{done}"
    );
    // Six mailboxes to begin with.
    let (_, done) = a.cmd("NOTIFY SET (PERSONAL (MailboxName))").await;
    assert!(done.contains(" NO [NOTIFICATIONOVERFLOW]"), "{done}");
    // Names count too, existing or not.
    let (_, done) = a
        .cmd("NOTIFY SET (MAILBOXES (a b) (MailboxName)) (SUBTREE (c d) (MailboxName))")
        .await;
    assert!(done.contains(" NO [NOTIFICATIONOVERFLOW]"), "{done}");
    a.ok("NOTIFY SET (SUBTREE X (MailboxName))").await;
    for name in ["X", "X/1", "X/2"] {
        b.ok(&format!("CREATE {name}")).await;
        let line = pushed(&mut a).await;
        assert_eq!(line, format!("* LIST (\\HasNoChildren) \"/\" \"{name}\""));
        if name != "X" {
            // And the parent, which has children now.
            assert_eq!(pushed(&mut a).await, "* LIST (\\HasChildren) \"/\" \"X\"");
        }
    }
    b.ok("CREATE X/3").await;
    assert_eq!(
        pushed(&mut a).await,
        "* OK [NOTIFICATIONOVERFLOW] too many mailboxes to watch: NOTIFY is off"
    );
    b.ok("CREATE X/4").await;
    nothing_more(&mut a).await;
    // Not before login.
    let mut c = connect(r.stack.addr("imap").unwrap()).await;
    let (_, done) = c.cmd("NOTIFY NONE").await;
    assert!(done.contains(" BAD "), "{done}");
    r.stack.stop(Duration::from_secs(5)).await;
}

/// ACL read-only (RFC 4314) and LIST-MYRIGHTS (RFC 8440): the owner has
/// every right, nobody else any, and the ACL cannot be changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_is_read_only_and_owner_has_all_rights() {
    let r = start_with(Backend::Sqlite, None, |_| {}).await.unwrap();
    let (mut a, _b) = two_sessions(&r).await;
    let caps = a.ok("CAPABILITY").await;
    for cap in [" ACL", " RIGHTS=texk", " LIST-MYRIGHTS", " NOTIFY"] {
        assert!(caps[0].contains(cap), "{cap} in {caps:?}");
    }
    assert_eq!(
        a.ok("MYRIGHTS INBOX").await,
        ["* MYRIGHTS \"INBOX\" lrswipkxteacd"]
    );
    assert_eq!(
        a.ok("GETACL \"Sent\"").await,
        ["* ACL \"Sent\" \"alice@example.test\" lrswipkxteacd"]
    );
    assert_eq!(
        a.ok("LISTRIGHTS INBOX alice@example.test").await,
        ["* LISTRIGHTS \"INBOX\" \"alice@example.test\" lrswipkxteacd"]
    );
    assert_eq!(
        a.ok("LISTRIGHTS INBOX bob@example.test").await,
        ["* LISTRIGHTS \"INBOX\" \"bob@example.test\" \"\""]
    );
    let (_, done) = a.cmd("SETACL INBOX bob@example.test lr").await;
    assert!(
        done.contains(" NO [NOPERM] sharing mailboxes is not supported"),
        "{done}"
    );
    let (_, done) = a.cmd("DELETEACL INBOX bob@example.test").await;
    assert!(done.contains(" NO [NOPERM]"), "{done}");
    let (_, done) = a.cmd("MYRIGHTS NoSuch").await;
    assert!(done.contains(" NO [NONEXISTENT]"), "{done}");
    let (_, done) = a.cmd("MYRIGHTS").await;
    assert!(done.contains(" BAD "), "{done}");
    let list = a.ok("LIST \"\" \"*\" RETURN (MYRIGHTS)").await;
    assert_eq!(list.len(), 12, "{list:#?}");
    for pair in list.chunks(2) {
        let name = pair[0].rsplit(' ').next().unwrap();
        assert_eq!(pair[1], format!("* MYRIGHTS {name} lrswipkxteacd"));
    }
    r.stack.stop(Duration::from_secs(5)).await;
}

/// MailboxMetadataChange and ServerMetadataChange (RFC 5465 §5.6, §5.7):
/// `* METADATA mailbox entry …` with the entries set, changed or removed
/// (RFC 5464 §4.4.2), for the selected mailbox too (they are not message
/// events); the session's own SETMETADATA is not reported back.
async fn metadata_changes(r: &Running) {
    let (mut a, mut b) = two_sessions(r).await;
    b.ok("SETMETADATA INBOX (/private/kept \"1\")").await;
    a.ok("SELECT INBOX").await;
    a.ok("NOTIFY SET (PERSONAL (MailboxMetadataChange ServerMetadataChange))")
        .await;
    b.ok("SETMETADATA INBOX (/private/comment \"one\" /shared/comment \"two\")")
        .await;
    assert_eq!(
        pushed(&mut a).await,
        "* METADATA \"INBOX\" /private/comment /shared/comment"
    );
    b.ok("SETMETADATA INBOX (/private/comment \"changed\")")
        .await;
    assert_eq!(
        pushed(&mut a).await,
        "* METADATA \"INBOX\" /private/comment"
    );
    b.ok("SETMETADATA INBOX (/shared/comment NIL)").await;
    assert_eq!(pushed(&mut a).await, "* METADATA \"INBOX\" /shared/comment");
    b.ok("SETMETADATA Archive (/private/x \"y\")").await;
    assert_eq!(pushed(&mut a).await, "* METADATA \"Archive\" /private/x");
    b.ok("SETMETADATA \"\" (/private/vendor/x \"y\")").await;
    assert_eq!(pushed(&mut a).await, "* METADATA \"\" /private/vendor/x");
    a.ok("SETMETADATA INBOX (/private/mine \"z\")").await;
    nothing_more(&mut a).await;
}
