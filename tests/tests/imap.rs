//! IMAP through real sockets: the state machine, login policy, mailbox
//! commands, FETCH/STORE/SEARCH/COPY/MOVE/EXPUNGE, CONDSTORE/QRESYNC, two
//! sessions seeing each other's changes, IDLE pushed by deliveries, limits.
//! Tests that exercise the store's concurrency run on SQLite and PostgreSQL.

use std::net::SocketAddr;
use std::time::Duration;

use mailroom_tests::imap_client::{ALICE, Imap, connect};
use mailroom_tests::{
    Backend, PASSWORD, Running, base64_encode, deliver_message, start, start_with, tls_connect,
    with_accounts,
};
use tokio::io::BufReader;

fn imap(r: &Running) -> SocketAddr {
    r.stack.addr("imap").unwrap()
}

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@remote.test>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\
         Date: Tue, 03 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@remote.test>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

async fn setup(r: &Running, n: usize) {
    with_accounts(r, &[ALICE, "bob@example.test"]).await;
    for i in 1..=n {
        deliver_message(
            r,
            i as i64,
            ALICE,
            &message(&format!("m{i}"), &format!("body {i}")),
        )
        .await;
    }
    claim_recent(r).await;
}

/// Selects INBOX once in an IMAP4rev1 session, as a client that already
/// looked at the mailbox would: the messages are then no longer `\Recent`
/// for the sessions a test opens (see `recent_is_seen_by_one_rev1_session_only`).
async fn claim_recent(r: &Running) {
    let mut c = connect(imap(r)).await;
    // (A stack that refuses LOGIN before TLS leaves them recent.)
    let (_, done) = c.cmd(&format!("LOGIN {ALICE} \"{PASSWORD}\"")).await;
    if done.contains(" OK") {
        c.ok("SELECT INBOX").await;
    }
    c.ok("LOGOUT").await;
}

fn find<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {lines:#?}"))
}

mailroom_tests::on_both!(
    select_fetch_store_search_expunge,
    two_sessions_see_each_others_changes,
    idle_pushes_new_mail_and_expunges,
    idle_reads_what_follows_done_after_giving_back_its_buffers,
    mailboxes_create_rename_delete_list_status,
    copy_move_append_with_uidplus,
    condstore_and_qresync,
    large_messages_are_sent_whole,
    fetch_never_describes_a_message_expunged_meanwhile_as_empty,
    new_keywords_are_announced_before_use,
    recent_is_seen_by_one_rev1_session_only,
    multiappend_is_all_or_nothing,
    create_special_use,
    unauthenticate_returns_to_the_greeting_state,
    object_ids,
    savedate,
    preview,
    sort_and_thread_per_rfc_5256,
);

/// `\Recent` (RFC 3501 §2.3.2): the first IMAP4rev1 session to select a
/// mailbox read-write gets its new messages as recent, and no other
/// session does; EXAMINE shows unclaimed ones without claiming them; rev2
/// sessions never see it.
async fn recent_is_seen_by_one_rev1_session_only(r: &Running) {
    with_accounts(r, &[ALICE]).await;
    for i in 1..=2 {
        deliver_message(r, i, ALICE, &message(&format!("m{i}"), "body")).await;
    }
    let mut status = connect(imap(r)).await;
    status.login().await;
    let st = status.ok("STATUS INBOX (MESSAGES RECENT)").await;
    assert_eq!(st, vec!["* STATUS \"INBOX\" (MESSAGES 2 RECENT 2)"]);
    // EXAMINE sees them as recent and leaves them so.
    let ex = status.ok("EXAMINE INBOX").await;
    assert!(ex.contains(&"* 2 RECENT".to_string()), "{ex:#?}");
    status.ok("CLOSE").await;
    let mut rev2 = connect(imap(r)).await;
    rev2.login().await;
    rev2.ok("ENABLE IMAP4rev2").await;
    let sel = rev2.ok("SELECT INBOX").await;
    assert!(!sel.iter().any(|l| l.contains("RECENT")), "{sel:#?}");
    let mut a = connect(imap(r)).await;
    let mut b = connect(imap(r)).await;
    a.login().await;
    b.login().await;
    let sa = a.ok("SELECT INBOX").await;
    assert!(sa.contains(&"* 2 RECENT".to_string()), "{sa:#?}");
    let sb = b.ok("SELECT INBOX").await;
    assert!(sb.contains(&"* 0 RECENT".to_string()), "{sb:#?}");
    assert_eq!(
        a.ok("FETCH 1 (FLAGS)").await,
        vec!["* 1 FETCH (FLAGS (\\Recent))"]
    );
    assert_eq!(b.ok("FETCH 1 (FLAGS)").await, vec!["* 1 FETCH (FLAGS ())"]);
    assert_eq!(a.ok("SEARCH RECENT").await, vec!["* SEARCH 1 2"]);
    a.ok("STORE 1 +FLAGS.SILENT (\\Seen)").await;
    assert_eq!(a.ok("SEARCH NEW").await, vec!["* SEARCH 2"]);
    assert_eq!(b.ok("SEARCH OLD").await[0], "* SEARCH 1 2");
    // A message delivered while both have the mailbox selected is recent
    // in exactly one of them.
    deliver_message(r, 3, ALICE, &message("m3", "body 3")).await;
    let na = a.ok("NOOP").await;
    let nb = b.ok("NOOP").await;
    assert!(na.contains(&"* 3 EXISTS".to_string()), "{na:#?}");
    assert!(nb.contains(&"* 3 EXISTS".to_string()), "{nb:#?}");
    let recent_in = |lines: &[String]| lines.iter().any(|l| l == "* 3 RECENT" || l == "* 1 RECENT");
    assert!(recent_in(&na) != recent_in(&nb), "a: {na:#?}\nb: {nb:#?}");
    let fa = a.ok("FETCH 3 (FLAGS)").await;
    let fb = b.ok("FETCH 3 (FLAGS)").await;
    assert_eq!(
        fa[0].contains("\\Recent") as u8 + fb[0].contains("\\Recent") as u8,
        1,
        "{fa:?} {fb:?}"
    );
    // Nobody's left to claim: STATUS RECENT is 0.
    let st = status.ok("STATUS INBOX (RECENT)").await;
    assert_eq!(st, vec!["* STATUS \"INBOX\" (RECENT 0)"]);
}

async fn select_fetch_store_search_expunge(r: &Running) {
    setup(r, 3).await;
    let mut c = connect(imap(r)).await;
    c.login().await;
    let sel = c.ok("SELECT INBOX").await;
    assert!(sel.contains(&"* 3 EXISTS".to_string()), "{sel:#?}");
    let validity = find(&sel, "* OK [UIDVALIDITY ");
    assert!(validity.len() > 20);
    assert!(find(&sel, "* OK [UIDNEXT 4]").contains("UIDNEXT 4"));
    find(
        &sel,
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
    );
    find(&sel, "* OK [PERMANENTFLAGS (");
    find(&sel, "* OK [HIGHESTMODSEQ ");

    // FETCH: flags, size, envelope; body with PEEK does not set \Seen.
    let f = c.ok("FETCH 1:3 (UID FLAGS RFC822.SIZE)").await;
    assert_eq!(f.len(), 3, "{f:#?}");
    assert!(
        f[0].starts_with("* 1 FETCH (UID 1 FLAGS () RFC822.SIZE "),
        "{}",
        f[0]
    );
    let f = c.ok("FETCH 2 (ENVELOPE)").await;
    assert!(
        f[0].contains("\"m2\"") && f[0].contains("(\"Sender\" NIL \"sender\" \"remote.test\")"),
        "{}",
        f[0]
    );
    let f = c.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").await;
    assert!(f[0].contains("Subject: m1\r\n\r\n"), "{}", f[0]);
    let f = c.ok("FETCH 1 (FLAGS)").await;
    assert_eq!(f[0], "* 1 FETCH (FLAGS ())");
    // Without PEEK: \Seen is set and reported.
    let f = c.ok("FETCH 1 (BODY[TEXT])").await;
    assert!(f[0].contains("body 1") && f[0].contains("\\Seen"), "{f:#?}");
    let f = c.ok("UID FETCH 1:* (FLAGS)").await;
    assert_eq!(f[0], "* 1 FETCH (UID 1 FLAGS (\\Seen))");
    // Partial fetch.
    let f = c.ok("FETCH 1 (BODY.PEEK[TEXT]<0.4>)").await;
    assert!(f[0].contains("BODY[TEXT]<0> {4}\r\nbody"), "{}", f[0]);
    // BODYSTRUCTURE of a plain message.
    let f = c.ok("FETCH 3 (BODYSTRUCTURE)").await;
    assert!(f[0].contains("(\"TEXT\" \"PLAIN\""), "{}", f[0]);

    // STORE forms.
    let s = c.ok("STORE 2 +FLAGS (\\Flagged $Work)").await;
    // The new keyword is announced first (RFC 9051 §7.3.5).
    assert_eq!(s.len(), 3, "{s:#?}");
    assert_eq!(s[2], "* 2 FETCH (FLAGS (\\Flagged $Work))");
    assert!(c.ok("STORE 2 -FLAGS.SILENT ($Work)").await.is_empty());
    let s = c.ok("UID STORE 3 FLAGS (\\Deleted)").await;
    assert_eq!(s, vec!["* 3 FETCH (FLAGS (\\Deleted) UID 3)".to_string()]);
    // DELETED-STORAGE: what EXPUNGE would free (RFC 9208 §4.2.3), the
    // size of the one \Deleted message.
    let f = c.ok("FETCH 3 (RFC822.SIZE)").await;
    let size = f[0]
        .trim_start_matches("* 3 FETCH (RFC822.SIZE ")
        .trim_end_matches(')');
    assert_eq!(
        c.ok("STATUS INBOX (DELETED DELETED-STORAGE)").await,
        [format!(
            "* STATUS \"INBOX\" (DELETED 1 DELETED-STORAGE {size})"
        )]
    );

    // SEARCH, rev1 and ESEARCH forms.
    assert_eq!(c.ok("SEARCH FLAGGED").await, vec!["* SEARCH 2"]);
    assert_eq!(c.ok("SEARCH UNSEEN").await, vec!["* SEARCH 2 3"]);
    assert_eq!(c.ok("UID SEARCH SUBJECT m3").await, vec!["* SEARCH 3"]);
    assert_eq!(c.ok("SEARCH BODY \"body 2\"").await, vec!["* SEARCH 2"]);
    assert_eq!(c.ok("SEARCH OR SEEN DELETED").await, vec!["* SEARCH 1 3"]);
    assert_eq!(c.ok("SEARCH NOT FROM nobody").await, vec!["* SEARCH 1 2 3"]);
    let e = c.ok("UID SEARCH RETURN (MIN MAX COUNT ALL) ALL").await;
    assert!(e[0].starts_with("* ESEARCH (TAG \"t"), "{}", e[0]);
    assert!(
        e[0].ends_with("UID MIN 1 MAX 3 COUNT 3 ALL 1:3"),
        "{}",
        e[0]
    );
    let (_, done) = c.cmd("SEARCH CHARSET KOI8-R ALL").await;
    assert!(done.contains("NO [BADCHARSET"), "{done}");

    // EXPUNGE removes only \Deleted.
    assert_eq!(c.ok("EXPUNGE").await, vec!["* 3 EXPUNGE"]);
    assert_eq!(c.ok("SEARCH ALL").await, vec!["* SEARCH 1 2"]);
    // Bad message numbers and syntax are BAD; the session goes on.
    let (_, done) = c.cmd("FETCH 7 FLAGS").await;
    assert!(done.contains(" BAD "), "{done}");
    let (_, done) = c.cmd("FETCH 1 (NOSUCHITEM)").await;
    assert!(done.contains(" BAD "), "{done}");
    c.ok("NOOP").await;
    // CLOSE expunges silently; commands of the selected state are then refused.
    c.ok("STORE 1 +FLAGS (\\Deleted)").await;
    assert!(c.ok("CLOSE").await.is_empty());
    let (_, done) = c.cmd("FETCH 1 FLAGS").await;
    assert!(done.contains("BAD"), "{done}");
    let st = c.ok("STATUS INBOX (MESSAGES UNSEEN UIDNEXT)").await;
    assert_eq!(
        st,
        vec!["* STATUS \"INBOX\" (MESSAGES 1 UNSEEN 1 UIDNEXT 4)"]
    );
    let (untagged, done) = c.cmd("LOGOUT").await;
    assert!(untagged[0].starts_with("* BYE"), "{untagged:?}");
    assert!(done.contains("OK"));
}

async fn two_sessions_see_each_others_changes(r: &Running) {
    setup(r, 3).await;
    let mut a = connect(imap(r)).await;
    let mut b = connect(imap(r)).await;
    a.login().await;
    b.login().await;
    a.ok("SELECT INBOX").await;
    b.ok("SELECT INBOX").await;
    a.ok("STORE 2 +FLAGS.SILENT (\\Seen)").await;
    let seen = b.ok("NOOP").await;
    assert_eq!(seen, vec!["* 2 FETCH (FLAGS (\\Seen) UID 2)"]);
    // b expunges message 1; a learns of it at its next command that may
    // renumber: not during FETCH (RFC 9051 §7.5.1), but at NOOP.
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert_eq!(b.ok("EXPUNGE").await, vec!["* 1 EXPUNGE"]);
    let during_fetch = a.ok("FETCH 1:3 (UID)").await;
    assert!(
        !during_fetch.iter().any(|l| l.contains("EXPUNGE")),
        "EXPUNGE sent during FETCH: {during_fetch:#?}"
    );
    // a still numbers the removed message 1 and answers from what it knows.
    assert_eq!(during_fetch.len(), 3, "{during_fetch:#?}");
    let after = a.ok("NOOP").await;
    assert!(after.contains(&"* 1 EXPUNGE".to_string()), "{after:#?}");
    assert_eq!(
        a.ok("FETCH 1:* (UID)").await,
        vec!["* 1 FETCH (UID 2)", "* 2 FETCH (UID 3)"]
    );
    // A delivery shows up as EXISTS.
    deliver_message(r, 10, ALICE, &message("new", "new")).await;
    let after = a.ok("NOOP").await;
    assert_eq!(after, vec!["* 3 EXISTS", "* 1 RECENT"]);
    // A STORE right after someone else's change reports that change too
    // (a's write did not get the next MODSEQ, so a reads what it missed)...
    b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)").await;
    let answer = a.ok("STORE 2 +FLAGS.SILENT (\\Answered)").await;
    assert!(
        answer.len() == 1
            && answer[0].starts_with("* 1 FETCH (FLAGS (")
            && answer[0].contains("\\Flagged")
            && answer[0].ends_with("UID 2)"),
        "{answer:#?}"
    );
    // ...and after its own STORE with nothing else changed there is
    // nothing left to report.
    assert_eq!(
        a.ok("STORE 3 +FLAGS.SILENT (\\Seen)").await,
        Vec::<String>::new()
    );
    assert_eq!(a.ok("NOOP").await, Vec::<String>::new());
    // A FETCH's read tells whether the mailbox changed: after someone
    // else's change it reports that change too, with the data asked for...
    b.ok("STORE 1 -FLAGS.SILENT (\\Flagged)").await;
    let answer = a.ok("UID FETCH 3 (ENVELOPE)").await;
    assert_eq!(answer.len(), 2, "{answer:#?}");
    assert!(
        answer[0].starts_with("* 2 FETCH (UID 3 ENVELOPE ("),
        "{answer:#?}"
    );
    assert!(
        answer[1].starts_with("* 1 FETCH (FLAGS (") && !answer[1].contains("\\Flagged"),
        "{answer:#?}"
    );
    b.ok("STORE 3 +FLAGS.SILENT (\\Draft)").await;
    let answer = a
        .ok("UID FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await;
    assert!(
        answer
            .iter()
            .any(|l| l.starts_with("* 3 FETCH (FLAGS (") && l.contains("\\Draft")),
        "{answer:#?}"
    );
    // ...and with nothing changed, nothing more.
    assert_eq!(a.ok("UID FETCH 3 (ENVELOPE)").await.len(), 1);
    assert_eq!(a.ok("NOOP").await, Vec::<String>::new());

    // SELECT of the selected mailbox: with nothing changed it answers from
    // the session's view, and it matches a fresh session's answer...
    let mut c = connect(imap(r)).await;
    c.login().await;
    let mut again = a.ok("SELECT INBOX").await;
    // Selecting again closes the mailbox first (RFC 9051 §6.3.1: [CLOSED]).
    assert_eq!(
        again.first().map(String::as_str),
        Some("* OK [CLOSED] previous mailbox closed")
    );
    again.remove(0);
    // (a keeps the message delivered earlier as \Recent; c is not the
    // first to see anything.)
    let no_recent = |v: Vec<String>| -> Vec<String> {
        v.into_iter().filter(|l| !l.ends_with(" RECENT")).collect()
    };
    assert!(again.contains(&"* 1 RECENT".to_string()), "{again:#?}");
    assert_eq!(
        no_recent(again.clone()),
        no_recent(c.ok("SELECT INBOX").await)
    );
    assert!(again.contains(&"* 3 EXISTS".to_string()), "{again:#?}");
    // ...after another session's change it reads the store again...
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    b.ok("EXPUNGE").await;
    let again = a.ok("SELECT INBOX").await;
    assert!(again.contains(&"* 2 EXISTS".to_string()), "{again:#?}");
    assert_eq!(
        a.ok("FETCH 1:* (UID)").await,
        vec!["* 1 FETCH (UID 3)", "* 2 FETCH (UID 4)"]
    );
    // ...and a removal the session had learnt of but not yet announced (it
    // came during a FETCH) is gone from the new view.
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    b.ok("EXPUNGE").await;
    let during_fetch = a.ok("FETCH 1:* (UID)").await;
    assert!(
        !during_fetch.iter().any(|l| l.contains("EXPUNGE")),
        "{during_fetch:#?}"
    );
    let again = a.ok("SELECT INBOX").await;
    assert!(again.contains(&"* 1 EXISTS".to_string()), "{again:#?}");
    assert_eq!(a.ok("FETCH 1:* (UID)").await, vec!["* 1 FETCH (UID 4)"]);
    assert_eq!(no_recent(again), no_recent(c.ok("SELECT INBOX").await));
}

async fn idle_pushes_new_mail_and_expunges(r: &Running) {
    setup(r, 1).await;
    let mut a = connect(imap(r)).await;
    let mut b = connect(imap(r)).await;
    a.login().await;
    b.login().await;
    a.ok("SELECT INBOX").await;
    b.ok("SELECT INBOX").await;
    a.send(b"idle1 IDLE\r\n").await;
    assert_eq!(a.line().await, "+ idling");
    let sent = std::time::Instant::now();
    deliver_message(r, 20, ALICE, &message("pushed", "x")).await;
    assert_eq!(a.line().await, "* 2 EXISTS");
    assert_eq!(a.line().await, "* 1 RECENT");
    // Pushed, not found by polling (the session's timeout is minutes); the
    // latency itself (median 60 ms to 100 sessions) is measured by
    // bench/imap-mixed.py, not here: a loaded machine must not fail this.
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert_eq!(a.line().await, "* 1 FETCH (FLAGS (\\Deleted) UID 1)");
    b.ok("EXPUNGE").await;
    assert_eq!(a.line().await, "* 1 EXPUNGE");
    a.send(b"DONE\r\n").await;
    assert_eq!(a.line().await, "idle1 OK IDLE terminated");
    assert_eq!(a.ok("FETCH 1 (UID)").await, vec!["* 1 FETCH (UID 2)"]);
}

/// An idling session gives back its read and output buffers and its
/// framer (they held a 300 KB APPEND) and reads in small pieces: DONE split
/// over two writes, and DONE with two commands after it in one write (the
/// second longer than a small read), are all answered in order.
async fn idle_reads_what_follows_done_after_giving_back_its_buffers(r: &Running) {
    setup(r, 1).await;
    let mut a = connect(imap(r)).await;
    a.login().await;
    let big = message("big", &"0123456789abcdef ".repeat(300_000 / 17));
    let (_, done) = a.append_plus("ap", "INBOX", &big).await;
    assert!(done.starts_with("ap OK"), "{done}");
    a.ok("SELECT INBOX").await;
    for round in 0..2 {
        a.send(format!("i{round} IDLE\r\n").as_bytes()).await;
        assert_eq!(a.line().await, "+ idling");
        deliver_message(r, 30 + round, ALICE, &message("pushed", "x")).await;
        assert_eq!(a.line().await, format!("* {} EXISTS", 3 + round));
        if round == 0 {
            a.send(b"DO").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.send(b"NE\r\n").await;
            let (_, done) = a.until("i0").await;
            assert_eq!(done, "i0 OK IDLE terminated");
        } else {
            a.send(
                b"DONE\r\nf1 UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (Subject Message-ID Date)])\r\nf2 NOOP\r\n",
            )
            .await;
            let (_, done) = a.until("i1").await;
            assert_eq!(done, "i1 OK IDLE terminated");
            let (untagged, done) = a.until("f1").await;
            assert!(done.starts_with("f1 OK"), "{done}");
            let text = untagged.join("\n");
            assert_eq!(
                untagged.iter().filter(|l| l.contains(" FETCH ")).count(),
                4,
                "{text}"
            );
            assert!(text.contains("Subject: big"), "{text}");
            let (_, done) = a.until("f2").await;
            assert!(done.starts_with("f2 OK"), "{done}");
        }
    }
    let fetched = a.ok("FETCH 2 (BODY.PEEK[])").await.join("\r\n");
    assert!(
        fetched.contains(&String::from_utf8_lossy(&big)[..2000]),
        "the APPENDed message reads back"
    );
}

async fn mailboxes_create_rename_delete_list_status(r: &Running) {
    setup(r, 2).await;
    let mut c = connect(imap(r)).await;
    c.login().await;
    c.ok("CREATE Projects/2026/Q4").await;
    let (_, done) = c.cmd("CREATE Projects").await;
    assert!(done.contains("NO [ALREADYEXISTS]"), "{done}");
    let (_, done) = c.cmd("CREATE inbox").await;
    assert!(done.contains("NO [ALREADYEXISTS]"), "{done}");
    for bad in ["\"a//b\"", "\"a/../b\"", "\"&Jjo!-\"", "\"x*\""] {
        let (_, done) = c.cmd(&format!("CREATE {bad}")).await;
        assert!(
            done.contains(" NO ") || done.contains(" BAD "),
            "{bad}: {done}"
        );
    }
    // International names: modified UTF-7 on the wire in rev1.
    c.ok("CREATE \"Entw&APw-rfe\"").await;
    let l = c.ok("LIST \"\" \"*\"").await;
    for want in [
        "* LIST (\\HasNoChildren) \"/\" \"INBOX\"",
        "* LIST (\\HasChildren) \"/\" \"Projects\"",
        "* LIST (\\HasNoChildren) \"/\" \"Projects/2026/Q4\"",
        "* LIST (\\Sent \\HasNoChildren) \"/\" \"Sent\"",
        "* LIST (\\HasNoChildren) \"/\" \"Entw&APw-rfe\"",
    ] {
        assert!(l.contains(&want.to_string()), "{want} missing in {l:#?}");
    }
    let l = c.ok("LIST \"\" %").await;
    assert!(!l.iter().any(|x| x.contains("Projects/2026")), "{l:#?}");
    let l = c.ok("LIST \"Projects/\" %").await;
    assert_eq!(l, vec!["* LIST (\\HasChildren) \"/\" \"Projects/2026\""]);
    let l = c.ok("LIST \"\" \"\"").await;
    assert_eq!(l, vec!["* LIST (\\Noselect) \"/\" \"\""]);
    // LIST-EXTENDED / LIST-STATUS / SPECIAL-USE.
    let l = c
        .ok("LIST (SPECIAL-USE) \"\" \"*\" RETURN (STATUS (MESSAGES))")
        .await;
    assert!(
        l.contains(&"* LIST (\\Junk \\HasNoChildren) \"/\" \"Junk\"".to_string()),
        "{l:#?}"
    );
    assert!(
        l.contains(&"* STATUS \"Junk\" (MESSAGES 0)".to_string()),
        "{l:#?}"
    );
    assert!(!l.iter().any(|x| x.contains("\"INBOX\"")), "{l:#?}");
    let l = c
        .ok("LIST \"\" \"INBOX\" RETURN (STATUS (MESSAGES UNSEEN SIZE))")
        .await;
    assert_eq!(l[0], "* LIST (\\HasNoChildren) \"/\" \"INBOX\"");
    assert!(
        l[1].starts_with("* STATUS \"INBOX\" (MESSAGES 2 UNSEEN 2 SIZE "),
        "{}",
        l[1]
    );
    // Subscriptions.
    c.ok("UNSUBSCRIBE Sent").await;
    let subs = c.ok("LSUB \"\" \"*\"").await;
    assert!(!subs.iter().any(|x| x.ends_with("\"Sent\"")), "{subs:#?}");
    c.ok("SUBSCRIBE Projects/2026/Q4").await;
    let subs = c.ok("LIST (SUBSCRIBED) \"\" \"Projects/*\"").await;
    assert_eq!(
        subs,
        vec!["* LIST (\\Subscribed \\HasNoChildren) \"/\" \"Projects/2026/Q4\""]
    );
    // RENAME takes the children along; renaming INBOX moves its messages.
    c.ok("RENAME Projects Archive2").await;
    let l = c.ok("LIST \"\" \"Archive2/*\"").await;
    assert!(
        l.iter().any(|x| x.ends_with("\"Archive2/2026/Q4\"")),
        "{l:#?}"
    );
    let (_, done) = c.cmd("RENAME Nope Other").await;
    assert!(done.contains("NO [NONEXISTENT]"), "{done}");
    c.ok("RENAME INBOX \"Old mail\"").await;
    let st = c.ok("STATUS \"Old mail\" (MESSAGES)").await;
    assert_eq!(st, vec!["* STATUS \"Old mail\" (MESSAGES 2)"]);
    let st = c.ok("STATUS INBOX (MESSAGES)").await;
    assert_eq!(st, vec!["* STATUS \"INBOX\" (MESSAGES 0)"]);
    // DELETE.
    let (_, done) = c.cmd("DELETE INBOX").await;
    assert!(done.contains(" NO "), "{done}");
    c.ok("DELETE \"Old mail\"").await;
    let (_, done) = c.cmd("STATUS \"Old mail\" (MESSAGES)").await;
    assert!(done.contains("NO [NONEXISTENT]"), "{done}");
    // NAMESPACE, ID, quota.
    assert_eq!(
        c.ok("NAMESPACE").await,
        vec!["* NAMESPACE ((\"\" \"/\")) NIL NIL"]
    );
    assert!(c.ok("ID NIL").await[0].starts_with("* ID (\"name\" \"Mailroom\""));
    assert_eq!(
        c.ok("GETQUOTAROOT INBOX").await,
        vec!["* QUOTAROOT \"INBOX\""]
    );
}

async fn copy_move_append_with_uidplus(r: &Running) {
    setup(r, 3).await;
    let mut c = connect(imap(r)).await;
    c.login().await;
    c.ok("SELECT INBOX").await;
    let (_, done) = c.cmd("COPY 1 Nowhere").await;
    assert!(done.contains("NO [TRYCREATE]"), "{done}");
    let (_, done) = c.cmd("COPY 1:2 Archive").await;
    assert!(done.contains("OK [COPYUID "), "{done}");
    assert!(done.contains(" 1:2 1:2]"), "{done}");
    let moved = c.ok("UID MOVE 3 Archive").await;
    assert!(
        moved[0].starts_with("* OK [COPYUID ") && moved[0].contains(" 3 3]"),
        "{moved:#?}"
    );
    assert_eq!(moved[1], "* 3 EXPUNGE");
    let st = c.ok("STATUS Archive (MESSAGES UIDNEXT)").await;
    assert_eq!(st, vec!["* STATUS \"Archive\" (MESSAGES 3 UIDNEXT 4)"]);
    // APPEND with a synchronising literal, flags and a date.
    let msg = message("appended", "hello");
    c.send(
        format!(
            "a1 APPEND Drafts (\\Draft \\Seen) \"05-Nov-2026 08:00:00 +0100\" {{{}}}\r\n",
            msg.len()
        )
        .as_bytes(),
    )
    .await;
    assert!(c.line().await.starts_with("+ "));
    c.send(&msg).await;
    c.send(b"\r\n").await;
    let (_, done) = c.until("a1").await;
    assert!(done.starts_with("a1 OK [APPENDUID "), "{done}");
    assert!(done.contains(" 1] "), "{done}");
    // LITERAL+ needs no continuation.
    let (_, done) = c.append_plus("a2", "Drafts", &msg).await;
    assert!(
        done.contains("[APPENDUID ") && done.contains(" 2] "),
        "{done}"
    );
    c.ok("EXAMINE Drafts").await;
    let f = c.ok("FETCH 1 (FLAGS INTERNALDATE BODY.PEEK[])").await;
    // Nobody selected Drafts since: EXAMINE shows it \Recent (RFC 3501 §6.3.2).
    assert!(f[0].contains("FLAGS (\\Seen \\Draft \\Recent)"), "{}", f[0]);
    assert!(
        f[0].contains("INTERNALDATE \"05-Nov-2026 07:00:00 +0000\""),
        "{}",
        f[0]
    );
    assert!(f[0].contains("Subject: appended"), "{}", f[0]);
    // EXAMINE is read-only.
    let (_, done) = c.cmd("STORE 1 +FLAGS (\\Deleted)").await;
    assert!(
        done.contains("NO [READ-ONLY]") || done.contains(" NO "),
        "{done}"
    );
    // APPEND to the selected mailbox announces it (EXISTS) once, with the
    // flags, size and UID the store gave it.
    let before = c.ok("SELECT INBOX").await;
    let exists = before
        .iter()
        .find_map(|l| {
            l.strip_suffix(" EXISTS")?
                .strip_prefix("* ")?
                .parse::<usize>()
                .ok()
        })
        .expect("EXISTS");
    let (untagged, done) = c.append_plus("a4", "INBOX (\\Flagged)", &msg).await;
    assert!(done.starts_with("a4 OK [APPENDUID "), "{done}");
    let uid: u32 = done
        .split(']')
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("APPENDUID");
    // Appended into the selected mailbox: this session is the first to see
    // it, so it is \Recent here (RFC 3501 §2.3.2).
    assert_eq!(
        untagged,
        vec![format!("* {} EXISTS", exists + 1), "* 1 RECENT".to_string()]
    );
    assert_eq!(
        c.ok(&format!("FETCH {} (UID FLAGS RFC822.SIZE)", exists + 1))
            .await,
        vec![format!(
            "* {} FETCH (UID {uid} FLAGS (\\Flagged \\Recent) RFC822.SIZE {})",
            exists + 1,
            msg.len()
        )]
    );
    assert_eq!(c.ok("NOOP").await, Vec::<String>::new());
    // A huge synchronising literal is refused before it is sent.
    c.send(b"a3 APPEND INBOX {4294967295}\r\n").await;
    let line = c.line().await;
    assert!(line.starts_with("a3 NO [TOOBIG]"), "{line}");
    c.ok("NOOP").await;
    // APPEND to a mailbox that does not exist, and over the quota: refused
    // with the response codes clients act on, and nothing stored.
    let (_, done) = c.append_plus("a5", "Nowhere", &msg).await;
    assert!(done.starts_with("a5 NO [TRYCREATE]"), "{done}");
    let status = c.ok("STATUS INBOX (MESSAGES UIDNEXT)").await;
    let store = mailroom_tests::open_store(r).await;
    let alice = mailroom_address::Address::parse(ALICE).unwrap();
    store.set_quota(&alice, 1).await.unwrap();
    let (untagged, done) = c.append_plus("a6", "INBOX", &msg).await;
    assert!(done.starts_with("a6 NO [OVERQUOTA]"), "{done}");
    assert_eq!(untagged, Vec::<String>::new());
    assert_eq!(c.ok("STATUS INBOX (MESSAGES UIDNEXT)").await, status);
    store.set_quota(&alice, 0).await.unwrap();
    let (_, done) = c.append_plus("a7", "INBOX", &msg).await;
    assert!(done.starts_with("a7 OK [APPENDUID "), "{done}");
}

async fn condstore_and_qresync(r: &Running) {
    setup(r, 3).await;
    let mut c = connect(imap(r)).await;
    c.login().await;
    assert_eq!(c.ok("ENABLE QRESYNC").await, vec!["* ENABLED QRESYNC"]);
    let sel = c.ok("SELECT INBOX").await;
    let hms: u64 = find(&sel, "* OK [HIGHESTMODSEQ ")
        .trim_start_matches("* OK [HIGHESTMODSEQ ")
        .split(']')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let validity: u32 = find(&sel, "* OK [UIDVALIDITY ")
        .trim_start_matches("* OK [UIDVALIDITY ")
        .split(']')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let s = c.ok("STORE 1 +FLAGS (\\Flagged)").await;
    assert!(
        s[0].starts_with("* 1 FETCH (FLAGS (\\Flagged) MODSEQ ("),
        "{}",
        s[0]
    );
    let f = c
        .ok(&format!("FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})"))
        .await;
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(
        f[0].starts_with("* 1 FETCH (FLAGS (\\Flagged) MODSEQ ("),
        "{}",
        f[0]
    );
    // UNCHANGEDSINCE older than the message's MODSEQ: refused, MODIFIED.
    let (_, done) = c
        .cmd(&format!("STORE 1 (UNCHANGEDSINCE {hms}) +FLAGS (\\Seen)"))
        .await;
    assert!(done.contains("OK [MODIFIED 1]"), "{done}");
    c.ok("STORE 2 +FLAGS.SILENT (\\Deleted)").await;
    assert_eq!(c.ok("EXPUNGE").await, vec!["* VANISHED 2"]);
    c.ok("UNSELECT").await;
    // Resynchronise from the old MODSEQ: one VANISHED (EARLIER), one FETCH.
    let sel = c
        .ok(&format!("SELECT INBOX (QRESYNC ({validity} {hms} 1:3))"))
        .await;
    assert!(
        sel.contains(&"* VANISHED (EARLIER) 2".to_string()),
        "{sel:#?}"
    );
    assert!(
        sel.iter()
            .any(|l| l.starts_with("* 1 FETCH (FLAGS (\\Flagged) UID 1 MODSEQ (")),
        "{sel:#?}"
    );
    let s = c.ok("SEARCH MODSEQ 1").await;
    assert!(s[0].starts_with("* SEARCH 1 2 (MODSEQ "), "{}", s[0]);
    // ESEARCH with MODSEQ: the MODSEQ of the messages returned (RFC 7162
    // §3.1.5): with MIN alone, of the first match; with MAX, of the last;
    // with ALL, the highest of all.
    let f = c.ok("FETCH 1:2 (MODSEQ)").await;
    let modseq = |line: &str| {
        line.split("MODSEQ (")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let (first, last) = (modseq(&f[0]), modseq(&f[1]));
    assert_ne!(first, last, "{f:#?}");
    let highest = first.max(last);
    let e = c.ok("SEARCH RETURN (MIN) MODSEQ 1").await;
    assert!(e[0].ends_with(&format!(" MIN 1 MODSEQ {first}")), "{e:#?}");
    let e = c.ok("SEARCH RETURN (MAX) MODSEQ 1").await;
    assert!(e[0].ends_with(&format!(" MAX 2 MODSEQ {last}")), "{e:#?}");
    let e = c.ok("SEARCH RETURN (ALL) MODSEQ 1").await;
    assert!(
        e[0].ends_with(&format!(" ALL 1:2 MODSEQ {highest}")),
        "{e:#?}"
    );

    // CONDSTORE enabled by a FETCH of MODSEQ after SELECT: HIGHESTMODSEQ
    // is announced first, once (RFC 7162 §3.1).
    let mut d = connect(imap(r)).await;
    d.login().await;
    let sel = d.ok("SELECT INBOX").await;
    let announced = find(&sel, "* OK [HIGHESTMODSEQ ")
        .split(']')
        .next()
        .unwrap();
    let f = d.ok("FETCH 1 (MODSEQ)").await;
    assert_eq!(f.len(), 2, "{f:#?}");
    assert!(f[0].starts_with(&format!("{announced}]")), "{f:#?}");
    assert!(f[1].starts_with("* 1 FETCH (MODSEQ ("), "{f:#?}");
    assert_eq!(d.ok("FETCH 1 (MODSEQ)").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_needs_tls_except_on_loopback_and_failures_are_throttled() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.imap.allow_plaintext_auth_on_loopback = false;
    })
    .await
    .unwrap();
    setup(&r, 1).await;
    let mut c = connect(imap(&r)).await;
    let caps = c.ok("CAPABILITY").await;
    assert!(
        caps[0].contains("STARTTLS") && caps[0].contains("LOGINDISABLED"),
        "{caps:?}"
    );
    assert!(!caps[0].contains("AUTH=PLAIN"), "{caps:?}");
    let (_, done) = c.cmd(&format!("LOGIN {ALICE} \"{PASSWORD}\"")).await;
    assert!(done.contains("NO [PRIVACYREQUIRED]"), "{done}");
    let (_, done) = c.cmd("SELECT INBOX").await;
    assert!(done.contains("BAD"), "{done}");
    // STARTTLS; whatever was pipelined after it is discarded (CVE-2011-0411).
    c.send(b"s1 STARTTLS\r\ns2 LOGIN injected x\r\n").await;
    assert_eq!(c.line().await, "s1 OK begin TLS negotiation now");
    let tcp = c.io.into_inner();
    let tls = tls_connect(&r, tcp).await.unwrap();
    let mut c = Imap {
        io: BufReader::new(tls),
        next: 100,
    };
    let caps = c.ok("CAPABILITY").await;
    assert!(
        !caps[0].contains("STARTTLS") && caps[0].contains("AUTH=SCRAM-SHA-256"),
        "{caps:?}"
    );
    // Wrong passwords: NO, then BYE after three.
    for i in 0..3 {
        let (untagged, done) = c.cmd(&format!("LOGIN {ALICE} wrong{i}")).await;
        assert!(done.contains("NO [AUTHENTICATIONFAILED]"), "{done}");
        let _ = untagged;
    }
    assert!(c.line().await.starts_with("* BYE"));
    // AUTHENTICATE PLAIN with SASL-IR over implicit TLS.
    let tcp = tokio::net::TcpStream::connect(r.stack.addr("imaps").unwrap())
        .await
        .unwrap();
    let mut c = Imap {
        io: BufReader::new(tls_connect(&r, tcp).await.unwrap()),
        next: 0,
    };
    assert!(c.line().await.starts_with("* OK"));
    let ir = base64_encode(format!("\0{ALICE}\0{PASSWORD}").as_bytes());
    let (_, done) = c.cmd(&format!("AUTHENTICATE PLAIN {ir}")).await;
    assert!(done.contains("OK [CAPABILITY "), "{done}");
    c.ok("SELECT INBOX").await;
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_garbage_keep_the_server_serving() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.imap.max_message_size = 10_000;
        c.imap.max_line_length = 2_000;
    })
    .await
    .unwrap();
    setup(&r, 1).await;
    let mut c = connect(imap(&r)).await;
    // Garbage, a line without a tag, an unknown command: BAD each time.
    for junk in ["\u{1}\u{2}", "FETCH", "x UNKNOWNCMD", "x SELECT"] {
        c.send(format!("{junk}\r\n").as_bytes()).await;
        let line = c.line().await;
        assert!(line.contains("BAD"), "{junk:?} -> {line}");
    }
    // A too-long line is refused and the session goes on.
    let long = "a".repeat(5_000);
    let (_, done) = c.cmd(&format!("LOGIN {long} x")).await;
    assert!(done.contains("BAD") || done.contains("NO"), "{done}");
    c.login().await;
    // A non-synchronising literal over the limit is swallowed, then refused.
    let big = vec![b'x'; 20_000];
    let (_, done) = c.append_plus("a9", "INBOX", &big).await;
    assert!(done.contains("NO [TOOBIG]"), "{done}");
    // Another session is served all along.
    let mut d = connect(imap(&r)).await;
    d.login().await;
    d.ok("SELECT INBOX").await;
    c.ok("SELECT INBOX").await;
    r.stack.stop(Duration::from_secs(5)).await;
}

mailroom_tests::on_both!(pop3_deletions_reach_imap_sessions_as_expunges,);

async fn pop3_deletions_reach_imap_sessions_as_expunges(r: &Running) {
    setup(r, 3).await;
    let mut c = connect(imap(r)).await;
    c.login().await;
    c.ok("SELECT INBOX").await;
    // A POP3 session deletes message 2 and QUITs (the UPDATE state).
    let tcp = tokio::net::TcpStream::connect(r.stack.addr("pop3").unwrap())
        .await
        .unwrap();
    let mut p = Imap {
        io: BufReader::new(tcp),
        next: 0,
    };
    assert!(p.line().await.starts_with("+OK"));
    for cmd in [
        format!("USER {ALICE}"),
        format!("PASS {PASSWORD}"),
        "DELE 2".to_string(),
        "QUIT".to_string(),
    ] {
        p.send(format!("{cmd}\r\n").as_bytes()).await;
        let line = p.line().await;
        assert!(line.starts_with("+OK"), "{cmd}: {line}");
    }
    assert_eq!(c.ok("NOOP").await, vec!["* 2 EXPUNGE"]);
    assert_eq!(
        c.ok("UID SEARCH ALL").await,
        vec!["* SEARCH 1 3".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap4rev2_and_utf8_names() {
    let r = start(Backend::Sqlite).await.unwrap();
    setup(&r, 2).await;
    let mut c = connect(imap(&r)).await;
    c.login().await;
    // Before ENABLE: modified UTF-7 on the wire, 8-bit names refused.
    c.ok("CREATE \"Entw&APw-rfe\"").await;
    let (_, done) = c.cmd("CREATE \"Grüße\"").await;
    assert!(done.contains(" NO ") || done.contains(" BAD "), "{done}");
    assert_eq!(
        c.ok("ENABLE IMAP4rev2 UTF8=ACCEPT").await,
        vec!["* ENABLED IMAP4REV2 UTF8=ACCEPT"]
    );
    c.ok("CREATE \"Grüße\"").await;
    let l = c.ok("LIST \"\" \"*\"").await;
    assert!(
        l.contains(&"* LIST (\\HasNoChildren) \"/\" \"Entwürfe\"".to_string()),
        "{l:#?}"
    );
    assert!(
        l.contains(&"* LIST (\\HasNoChildren) \"/\" \"Grüße\"".to_string()),
        "{l:#?}"
    );
    // IMAP4rev2 SELECT: no RECENT, a LIST response; SEARCH answers with ESEARCH.
    let sel = c.ok("SELECT INBOX").await;
    assert!(!sel.iter().any(|l| l.contains("RECENT")), "{sel:#?}");
    assert!(
        sel.contains(&"* LIST (\\HasNoChildren) \"/\" \"INBOX\"".to_string()),
        "{sel:#?}"
    );
    let s = c.ok("SEARCH ALL").await;
    assert!(
        s[0].starts_with("* ESEARCH (TAG \"") && s[0].ends_with(" ALL 1:2"),
        "{}",
        s[0]
    );
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodystructure_sections_and_binary_of_a_multipart_message() {
    let r = start(Backend::Sqlite).await.unwrap();
    with_accounts(&r, &[ALICE]).await;
    let msg = concat!(
        "From: sender@remote.test\r\n",
        "To: alice@example.test\r\n",
        "Subject: parts\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: multipart/mixed; boundary=\"b1\"\r\n",
        "\r\n",
        "--b1\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        "Content-Transfer-Encoding: quoted-printable\r\n",
        "\r\n",
        "Gr=C3=BC=C3=9Fe\r\n",
        "--b1\r\n",
        "Content-Type: application/octet-stream; name=\"x.bin\"\r\n",
        "Content-Transfer-Encoding: base64\r\n",
        "Content-Disposition: attachment; filename=\"x.bin\"\r\n",
        "\r\n",
        "AAECAwQ=\r\n",
        "--b1--\r\n",
    );
    deliver_message(&r, 1, ALICE, msg.as_bytes()).await;
    let mut c = connect(imap(&r)).await;
    c.login().await;
    c.ok("SELECT INBOX").await;
    let f = c.ok("FETCH 1 (BODYSTRUCTURE)").await;
    assert!(
        f[0].contains(
            "(\"TEXT\" \"PLAIN\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" 15 0"
        ) && f[0]
            .contains("\"APPLICATION\" \"OCTET-STREAM\" (\"name\" \"x.bin\") NIL NIL \"base64\" 8")
            && f[0].contains("\"MIXED\" (\"boundary\" \"b1\")"),
        "{}",
        f[0]
    );
    let f = c.ok("FETCH 1 (BODY.PEEK[1] BODY.PEEK[2.MIME])").await;
    // The CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1).
    assert!(
        f[0].contains("BODY[1] {15}\r\nGr=C3=BC=C3=9Fe BODY[2.MIME]"),
        "{}",
        f[0]
    );
    assert!(f[0].contains("Content-Disposition: attachment"), "{}", f[0]);
    let f = c.ok("FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[2])").await;
    assert!(f[0].contains("BINARY.SIZE[1] 7"), "{}", f[0]);
    assert!(
        f[0].contains("BINARY[2] ~{5}\r\n\u{0}\u{1}\u{2}\u{3}\u{4}"),
        "{:?}",
        f[0]
    );
    // A partial BINARY names its origin octet (RFC 3516 §4.2), the other
    // items around it as usual.
    let f = c
        .ok("FETCH 1 (UID BINARY.PEEK[1]<0.7> BINARY.PEEK[2]<1.2> FLAGS)")
        .await;
    assert_eq!(
        f,
        [
            "* 1 FETCH (UID 1 BINARY[1]<0> ~{7}\r\nGrüße BINARY[2]<1> ~{2}\r\n\u{1}\u{2} FLAGS (\\Recent))"
        ]
    );
    let f = c.ok("FETCH 1 (BODY.PEEK[3])").await;
    assert!(f[0].contains("BODY[3] NIL"), "{}", f[0]);
    assert_eq!(
        c.ok("SEARCH CHARSET UTF-8 BODY {7+}\r\ngrüße").await,
        vec!["* SEARCH 1"]
    );
    r.stack.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed_after_the_timeouts() {
    let r = start_with(Backend::Sqlite, None, |c| {
        c.imap.idle_timeout_secs = 1;
        c.imap.authenticated_idle_timeout_secs = 60;
    })
    .await
    .unwrap();
    setup(&r, 0).await;
    let mut c = connect(imap(&r)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bye = c.line().await;
    assert!(bye.starts_with("* BYE") && bye.contains("idle"), "{bye}");
    assert_eq!(c.line().await, "", "the connection is closed after BYE");
    r.stack.stop(Duration::from_secs(5)).await;
}

/// Sends NOOP until its answer is `line` (else nothing), for up to 10 s.
async fn noop_until(c: &mut Imap<tokio::net::TcpStream>, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = c.ok("NOOP").await;
        if seen.iter().any(|l| l == line) {
            return;
        }
        assert!(seen.is_empty(), "{seen:#?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "NOOP never answered {line:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends NOOP until one line of its answer ends with `suffix`, for up to 10 s.
async fn noop_until_one_ends(c: &mut Imap<tokio::net::TcpStream>, suffix: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !c.ok("NOOP").await.iter().any(|l| l.ends_with(suffix)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "NOOP never answered …{suffix}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A second store on the stack's PostgreSQL database, standing for another
/// process that shares it (a separate MDA, another IMAP replica), and
/// Alice's account id.
async fn another_process(r: &Running) -> (mailroom_store::Store, i64) {
    let other = mailroom_store::Store::connect(&r.db.url, &mailroom_store::StoreOptions::default())
        .await
        .unwrap();
    let alice = other
        .get_account(&mailroom_address::Address::parse(ALICE).unwrap())
        .await
        .unwrap()
        .unwrap();
    (other, alice.id)
}

/// PostgreSQL: a change committed by another process sharing the database
/// (here a second store connected to it, as a separate MDA or another IMAP
/// replica would be) reaches a selected session within a moment, through
/// NOOP and through SELECT of the selected mailbox, though the session no
/// longer asks the database at every command (it trusts what its process
/// heard through the change notifications).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_by_another_process_reach_sessions() {
    use mailroom_store::{FlagOp, flag_bits};
    let Some(r) = start(Backend::Postgres).await else {
        return;
    };
    setup(&r, 2).await;
    let (other, alice) = another_process(&r).await;
    let inbox = other
        .mailbox_by_name(alice, "INBOX")
        .await
        .unwrap()
        .unwrap();
    let mut a = connect(imap(&r)).await;
    a.login().await;
    a.ok("SELECT INBOX").await;
    a.ok("FETCH 1:2 (FLAGS)").await;
    other
        .store_flags(inbox.id, &[1], FlagOp::Add, flag_bits::FLAGGED, &[], None)
        .await
        .unwrap();
    noop_until(&mut a, "* 1 FETCH (FLAGS (\\Flagged) UID 1)").await;
    // A STORE that changes nothing (as the session knows the mailbox) is
    // answered without a write...
    let highest = async || {
        other
            .mailbox_by_name(alice, "INBOX")
            .await
            .unwrap()
            .unwrap()
            .highestmodseq
    };
    let before = highest().await;
    assert_eq!(
        a.ok("STORE 1 +FLAGS (\\Flagged)").await,
        vec!["* 1 FETCH (FLAGS (\\Flagged))"]
    );
    assert_eq!(highest().await, before);
    // ...and once the other process has undone it, the same STORE writes.
    other
        .store_flags(
            inbox.id,
            &[1],
            FlagOp::Remove,
            flag_bits::FLAGGED,
            &[],
            None,
        )
        .await
        .unwrap();
    noop_until(&mut a, "* 1 FETCH (FLAGS () UID 1)").await;
    a.ok("STORE 1 +FLAGS.SILENT (\\Flagged)").await;
    let snapshot = other.open_mailbox(alice, "INBOX").await.unwrap().unwrap();
    assert_eq!(
        snapshot.messages[0].flags & flag_bits::FLAGGED,
        flag_bits::FLAGGED
    );
    assert_eq!(snapshot.mailbox.highestmodseq, before + 2);
    other
        .append_message_to(alice, "INBOX", &message("m3", "x"), 0, &[], 0, None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sel = a.ok("SELECT INBOX").await;
        if sel.contains(&"* 3 EXISTS".to_string()) {
            assert!(
                sel.iter().any(|l| l.starts_with("* OK [UIDNEXT 4]")),
                "{sel:#?}"
            );
            break;
        }
        assert!(sel.contains(&"* 2 EXISTS".to_string()), "{sel:#?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other process's APPEND never reached SELECT"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the session then reads of the new message is the message.
    let body = a
        .ok("UID FETCH 3 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await;
    assert!(body.concat().contains("Subject: m3"), "{body:#?}");
    other.close().await;
    r.stack.stop(Duration::from_secs(5)).await;
}

/// A message over 1 MiB fetched whole (BODY[], BODY.PEEK[], RFC822) is read
/// from the store and sent in pieces; what the client gets is the message,
/// exactly, with the other items asked for before it.
async fn large_messages_are_sent_whole(r: &Running) {
    with_accounts(r, &[ALICE]).await;
    let mut big = message("big", "").to_vec();
    let mut n = 0;
    while big.len() < 3 << 20 {
        n += 1;
        big.extend_from_slice(
            format!("line {n} of a large message, to be sent in pieces\r\n").as_bytes(),
        );
    }
    let text = String::from_utf8(big.clone()).unwrap();
    let mut c = connect(imap(r)).await;
    c.login().await;
    let (_, done) = c.append_plus("a1", "INBOX", &big).await;
    assert!(done.starts_with("a1 OK"), "{done}");
    c.ok("SELECT INBOX").await;
    let got = c.ok("UID FETCH 1 (FLAGS BODY.PEEK[])").await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0],
        format!(
            "* 1 FETCH (UID 1 FLAGS (\\Recent) BODY[] {{{}}}\r\n{text})",
            big.len()
        )
    );
    // Without PEEK: \Seen is set first and its FLAGS come with the text.
    let got = c.ok("FETCH 1 RFC822").await;
    assert_eq!(
        got,
        vec![format!(
            "* 1 FETCH (FLAGS (\\Seen \\Recent) RFC822 {{{}}}\r\n{text})",
            big.len()
        )]
    );
    let got = c.ok("FETCH 1 BODY[]").await;
    assert_eq!(
        got,
        vec![format!("* 1 FETCH (BODY[] {{{}}}\r\n{text})", big.len())]
    );
    // A part of it, or with another section, is cut from the whole as before.
    let got = c
        .ok("FETCH 1 (BODY.PEEK[]<0.10> BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await;
    assert_eq!(
        got,
        vec![format!(
            "* 1 FETCH (BODY[]<0> {{10}}\r\n{} BODY[HEADER.FIELDS (SUBJECT)] {{16}}\r\nSubject: big\r\n\r\n)",
            &text[..10]
        )]
    );
}

/// PostgreSQL: an APPEND committed by another process while this process's
/// LISTEN connection is down (a PostgreSQL restart, an operator's
/// `pg_terminate_backend`) still reaches an idling session: its notification
/// is lost, but once LISTEN is back every session is told to look again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_hears_of_what_was_committed_while_listen_was_down() {
    let Some(r) = start(Backend::Postgres).await else {
        return;
    };
    setup(&r, 2).await;
    let (other, alice) = another_process(&r).await;
    let mut a = connect(imap(&r)).await;
    a.login().await;
    a.ok("SELECT INBOX").await;
    a.send(b"i1 IDLE\r\n").await;
    assert_eq!(a.line().await, "+ idling");
    assert_eq!(
        mailroom_store::testing::end_listen_connections(&r.db.url).await,
        1
    );
    other
        .append_message_to(alice, "INBOX", &message("m3", "x"), 0, &[], 0, None)
        .await
        .unwrap();
    // The listener comes back after about a second; `line` waits up to 10.
    assert_eq!(a.line().await, "* 3 EXISTS");
    assert_eq!(a.line().await, "* 1 RECENT");
    a.send(b"DONE\r\n").await;
    assert_eq!(a.line().await, "i1 OK IDLE terminated");
    other.close().await;
    r.stack.stop(Duration::from_secs(5)).await;
}

/// A FETCH of a message that another process expunged after the session
/// last synchronised (the session still lists it, and has no pending
/// expunge for it) leaves that message out, whatever the items: it never
/// describes it as an empty message (issue #13: under concurrent load on
/// PostgreSQL, FETCH answered `BODYSTRUCTURE ("TEXT" "PLAIN" … 0 0 …)` and
/// `ENVELOPE (NIL …)` for such messages, and clients cache those forever).
/// The expunge goes through another store, as another process's would:
/// nothing reaches the session before its FETCH, which sessions never
/// precede with a sync (RFC 9051 §7.5.1 lets FETCH answer only for the
/// messages that still exist).
async fn fetch_never_describes_a_message_expunged_meanwhile_as_empty(r: &Running) {
    use mailroom_store::{FlagOp, flag_bits};
    with_accounts(r, &[ALICE]).await;
    let (other, alice) = another_process(r).await;
    let inbox = other
        .mailbox_by_name(alice, "INBOX")
        .await
        .unwrap()
        .unwrap();
    let mut a = connect(imap(r)).await;
    a.login().await;
    a.ok("SELECT INBOX").await;
    let rounds = [
        "BODYSTRUCTURE",
        "ENVELOPE",
        "BODY",
        "(FLAGS BODYSTRUCTURE ENVELOPE)",
        "(ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
        "(BODYSTRUCTURE BODY.PEEK[]<0.10>)",
        "(BINARY.PEEK[1] BINARY.SIZE[1])",
        "(RFC822.HEADER BODY.PEEK[TEXT])",
    ];
    for (round, items) in rounds.iter().enumerate() {
        let mut uids = Vec::new();
        for which in ["gone", "kept"] {
            let subject = format!("{which}{round}");
            let (_, appended) = other
                .append_message_to(alice, "INBOX", &message(&subject, "x"), 0, &[], 0, None)
                .await
                .unwrap();
            uids.push(appended.uid);
        }
        let [gone, kept] = uids[..] else {
            unreachable!()
        };
        // The session learns of both messages...
        noop_until_one_ends(&mut a, " EXISTS").await;
        // ...then the first goes, behind its back.
        other
            .store_flags(
                inbox.id,
                &[gone],
                FlagOp::Add,
                flag_bits::DELETED,
                &[],
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            other
                .expunge_deleted(inbox.id, Some(&[gone]))
                .await
                .unwrap(),
            [gone]
        );
        let got = a.ok(&format!("UID FETCH {gone}:{kept} {items}")).await;
        let fetches: Vec<&String> = got.iter().filter(|l| l.contains(" FETCH (")).collect();
        assert_eq!(fetches.len(), 1, "{items}: {got:#?}");
        assert!(fetches[0].contains(&format!("UID {kept}")), "{got:#?}");
        assert!(
            !fetches[0].contains("\"7bit\" 0 0") && !fetches[0].contains("ENVELOPE (NIL"),
            "{got:#?}"
        );
        if items.contains("ENVELOPE") || items.contains("HEADER") {
            assert!(fetches[0].contains(&format!("kept{round}")), "{got:#?}");
        }
        // The expunge is announced once a command allows it (UID FETCH
        // does, when the session has heard of it by then).
        if !got.iter().any(|l| l.ends_with(" EXPUNGE")) {
            noop_until_one_ends(&mut a, " EXPUNGE").await;
        }
    }
    other.close().await;
}

/// The position of the first line starting with `prefix`.
fn position(lines: &[String], prefix: &str) -> usize {
    lines
        .iter()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {lines:#?}"))
}

/// Keywords new to the mailbox, set by the session itself or by another
/// one, are announced with `* FLAGS` and `* OK [PERMANENTFLAGS (… \*)]`
/// before any FETCH response names them (RFC 9051 §7.3.5, RFC 3501
/// §7.2.6); SELECT lists the keywords in use.
async fn new_keywords_are_announced_before_use(r: &Running) {
    const SYSTEM: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";
    setup(r, 2).await;
    let mut a = connect(imap(r)).await;
    a.login().await;
    let sel = a.ok("SELECT INBOX").await;
    assert!(sel.contains(&format!("* FLAGS ({SYSTEM})")), "{sel:#?}");
    let got = a.ok("STORE 1 +FLAGS ($Label1)").await;
    let flags = position(&got, &format!("* FLAGS ({SYSTEM} $Label1)"));
    let permanent = position(
        &got,
        &format!("* OK [PERMANENTFLAGS ({SYSTEM} $Label1 \\*)]"),
    );
    let fetch = position(&got, "* 1 FETCH (FLAGS ($Label1))");
    assert!(flags < fetch && permanent < fetch, "{got:#?}");
    // Known already (keywords compare without case): nothing more.
    let got = a.ok("STORE 2 +FLAGS ($label1)").await;
    assert_eq!(got, ["* 2 FETCH (FLAGS ($label1))"]);
    // Set by another session: announced before the FETCH that tells it.
    let mut b = connect(imap(r)).await;
    b.login().await;
    b.ok("SELECT INBOX").await;
    b.ok("STORE 2 +FLAGS.SILENT ($Junk)").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = a.ok("NOOP").await;
        if !got.is_empty() {
            break got;
        }
        assert!(tokio::time::Instant::now() < deadline, "no news of $Junk");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let flags = position(&got, &format!("* FLAGS ({SYSTEM} $Label1 $Junk)"));
    let fetch = position(&got, "* 2 FETCH (FLAGS ($label1 $Junk)");
    assert!(flags < fetch, "{got:#?}");
    // A later SELECT lists them; EXAMINE too, with nothing permanent.
    let sel = a.ok("SELECT INBOX").await;
    assert!(
        sel.contains(&format!("* FLAGS ({SYSTEM} $Label1 $Junk)")),
        "{sel:#?}"
    );
    let sel = a.ok("EXAMINE INBOX").await;
    position(&sel, &format!("* FLAGS ({SYSTEM} $Label1 $Junk)"));
    position(&sel, "* OK [PERMANENTFLAGS ()]");
}

/// LIST-EXTENDED (RFC 5258): an unknown selection option, or RECURSIVEMATCH
/// alone, is refused with BAD and the session goes on; several patterns in
/// parentheses list what any of them matches, once; a pattern of unusual
/// atom characters (not valid modified UTF-7) is taken as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_extended_patterns_and_options() {
    let r = start(Backend::Sqlite).await.unwrap();
    with_accounts(&r, &[ALICE]).await;
    let mut c = connect(imap(&r)).await;
    c.login().await;
    c.ok("CREATE a/b/c").await;
    c.ok("CREATE a/d").await;
    for refused in [
        "LIST (FOO) \"\" \"*\"",
        "LIST (RECURSIVEMATCH) \"\" \"*\"",
        "LIST (SUBSCRIBED FOO (BAR)) \"\" \"*\"",
    ] {
        let (_, done) = c.cmd(refused).await;
        assert!(done.contains(" BAD "), "{refused}: {done}");
    }
    let l = c.ok("LIST \"\" (a/* a/b)").await;
    assert_eq!(
        l,
        [
            "* LIST (\\HasChildren) \"/\" \"a/b\"",
            "* LIST (\\HasNoChildren) \"/\" \"a/b/c\"",
            "* LIST (\\HasNoChildren) \"/\" \"a/d\"",
        ]
    );
    let l = c.ok("LIST \"\" (\"a/d\" INBOX) RETURN (CHILDREN)").await;
    assert_eq!(
        l,
        [
            "* LIST (\\HasNoChildren) \"/\" \"INBOX\"",
            "* LIST (\\HasNoChildren) \"/\" \"a/d\"",
        ]
    );
    let l = c.ok("LIST (SUBSCRIBED) \"\" (a/b/c a/d)").await;
    assert!(l.len() <= 2, "{l:#?}");
    assert!(
        c.ok("LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*")
            .await
            .is_empty()
    );
    // LSUB with `%`: the unsubscribed parent of a subscribed mailbox the
    // pattern does not reach is returned, \Noselect (RFC 3501 §6.3.9).
    c.ok("SUBSCRIBE a/b/c").await;
    let l = c.ok("LSUB \"\" %").await;
    assert!(
        l.contains(&"* LSUB (\\Noselect) \"/\" \"a\"".to_string()),
        "{l:#?}"
    );
    assert!(!l.iter().any(|x| x.contains("\"a/")), "{l:#?}");
    assert_eq!(
        c.ok("LSUB \"\" a/%").await,
        ["* LSUB (\\Noselect) \"/\" \"a/b\""]
    );
    assert_eq!(c.ok("LSUB \"\" a/*").await, ["* LSUB () \"/\" \"a/b/c\""]);
    c.ok("NOOP").await;
    r.stack.stop(Duration::from_secs(5)).await;
}

/// ENVELOPE of group syntax: each group gives its start and end markers
/// and its members only; a comment inside a group is no member (RFC 3501
/// §7.4.2, RFC 9051 §7.5.2). SEARCH FROM/TO/CC/BCC finds an address
/// written with comments inside it (RFC 5322 §3.4.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_of_groups_and_search_of_commented_addresses() {
    let r = start(Backend::Sqlite).await.unwrap();
    with_accounts(&r, &[ALICE]).await;
    let msg = b"From: Sender <sender@remote.test>\r\nTo: Team: ann@example.com;\r\n\
                Cc: group:;, group2: (foo) ;\r\nSubject: groups\r\n\r\nbody\r\n";
    let mut c = connect(imap(&r)).await;
    c.login().await;
    let (_, done) = c.append_plus("a1", "INBOX", msg).await;
    assert!(done.starts_with("a1 OK"), "{done}");
    c.ok("SELECT INBOX").await;
    let f = c.ok("FETCH 1 (ENVELOPE)").await;
    assert!(
        f[0].contains(concat!(
            " ((NIL NIL \"Team\" NIL)(NIL NIL \"ann\" \"example.com\")(NIL NIL NIL NIL))",
            " ((NIL NIL \"group\" NIL)(NIL NIL NIL NIL)(NIL NIL \"group2\" NIL)(NIL NIL NIL NIL))",
            " NIL NIL NIL)"
        )),
        "{}",
        f[0]
    );
    let commented = b"From: <user-from (comment)@ (comment) domain.org>\r\n\
                      To: Ann <ann (x) @example.com>\r\nSubject: c\r\n\r\nbody\r\n";
    let (_, done) = c.append_plus("a2", "INBOX", commented).await;
    assert!(done.starts_with("a2 OK"), "{done}");
    c.ok("NOOP").await;
    assert_eq!(
        c.ok("SEARCH FROM user-from@domain.org").await,
        ["* SEARCH 2"]
    );
    assert_eq!(c.ok("SEARCH TO ann@example.com").await, ["* SEARCH 1 2"]);
    r.stack.stop(Duration::from_secs(5)).await;
}

/// A realistic message of about `kib` KiB: text and HTML alternatives and a
/// base64 attachment.
fn realistic_message(kib: usize) -> Vec<u8> {
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do.\r\n";
    let text = line.repeat(kib * 4);
    let attachment =
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2\r\n".repeat(kib * 12);
    format!(
        "From: Sender <sender@remote.test>\r\nTo: Team: ann@example.test;\r\n\
         Subject: report\r\nDate: Tue, 03 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <report@remote.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n\
         --m\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n\
         --a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\
         --a\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>{text}</p>\r\n--a--\r\n\
         --m\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{attachment}--m--\r\n"
    )
    .into_bytes()
}

/// Issue #13 at the concurrency it was seen at, on PostgreSQL: sessions in
/// pairs on the same INBOXes of several accounts run a random mix of APPEND
/// (the same realistic messages everywhere), FETCH of structures, headers
/// and partial bodies, STORE, EXPUNGE, COPY, LIST and STATUS. No FETCH may
/// describe a message as empty: every message appended is the realistic
/// one, so an empty structure or envelope is a wrong answer, whatever the
/// races between the sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mix_never_describes_a_message_as_empty() {
    let Some(r) = start(Backend::Postgres).await else {
        return;
    };
    let accounts: Vec<String> = (0..4).map(|i| format!("u{i}@example.test")).collect();
    let names: Vec<&str> = accounts.iter().map(String::as_str).collect();
    with_accounts(&r, &names).await;
    let messages = [
        realistic_message(1),
        realistic_message(8),
        realistic_message(40),
    ];
    let addr = imap(&r);
    let mut tasks = Vec::new();
    for session in 0..8u64 {
        let account = accounts[session as usize % accounts.len()].clone();
        let messages = messages.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            c.ok(&format!("LOGIN {account} \"{PASSWORD}\"")).await;
            c.ok("SELECT INBOX").await;
            let mut wrong = Vec::new();
            let mut seed = session.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
            let mut n = 0;
            while tokio::time::Instant::now() < deadline {
                // xorshift64: a fixed, reproducible mix per session.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                n += 1;
                let tag = format!("x{n}");
                let (lines, done) = match seed % 10 {
                    0 | 1 => {
                        let msg = &messages[(seed >> 8) as usize % messages.len()];
                        c.append_plus(&tag, "INBOX", msg).await
                    }
                    2 | 3 => c.cmd("UID FETCH 1:* (BODYSTRUCTURE ENVELOPE)").await,
                    4 => {
                        c.cmd("UID FETCH 1:* (BODY BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[1]<0.100>)")
                            .await
                    }
                    5 => {
                        let k = (seed >> 20) % 40 + 1;
                        c.cmd(&format!("UID STORE {k}:{} +FLAGS ($Label1 \\Deleted)", k + 2))
                            .await
                    }
                    6 => c.cmd("EXPUNGE").await,
                    7 => c.cmd("UID COPY 1:3 INBOX").await,
                    8 => c.cmd("STATUS INBOX (MESSAGES UNSEEN)").await,
                    _ => c.cmd("LIST \"\" *").await,
                };
                assert!(!done.contains(" BAD "), "{done}");
                for line in lines {
                    if line.contains("\"7bit\" 0 0") || line.contains("ENVELOPE (NIL NIL NIL") {
                        wrong.push(line);
                    }
                }
            }
            c.ok("LOGOUT").await;
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for t in tasks {
        wrong.extend(t.await.unwrap());
    }
    assert!(
        wrong.is_empty(),
        "{} FETCH responses described a message as empty: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    r.stack.stop(Duration::from_secs(5)).await;
}

/// `APPEND mailbox (flags) date {n}… (flags) {m}…` with `LITERAL+` literals.
fn multiappend(tag: &str, mailbox: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = format!("{tag} APPEND {mailbox}").into_bytes();
    for (args, data) in parts {
        if !args.is_empty() {
            out.extend_from_slice(format!(" {args}").as_bytes());
        }
        out.extend_from_slice(format!(" {{{}+}}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// MULTIAPPEND (RFC 3502): several messages in one command, one APPENDUID
/// with the UID set, and all or nothing: a message too big, a bad date or a
/// set over the quota stores none of them and leaves no UID gap.
async fn multiappend_is_all_or_nothing(r: &Running) {
    setup(r, 0).await;
    let mut c = connect(imap(r)).await;
    c.login().await;
    let caps = c.ok("CAPABILITY").await;
    assert!(caps[0].split(' ').any(|w| w == "MULTIAPPEND"), "{caps:?}");
    let (m1, m2, m3) = (
        message("one", "1"),
        message("two", "2"),
        message("three", "3"),
    );
    // RFC 3502 §6.3.11's shape: flags and a date on some messages only.
    c.send(&multiappend(
        "a1",
        "Drafts",
        &[
            ("(\\Seen) \"05-Nov-2026 08:00:00 +0100\"", &m1),
            ("", &m2),
            ("(\\Flagged $Later)", &m3),
        ],
    ))
    .await;
    let (_, done) = c.until("a1").await;
    let uidvalidity = done
        .strip_prefix("a1 OK [APPENDUID ")
        .and_then(|s| s.strip_suffix(" 1:3] APPEND completed"))
        .unwrap_or_else(|| panic!("{done}"));
    c.ok("EXAMINE Drafts").await;
    let f = c
        .ok("FETCH 1:3 (UID FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await;
    assert_eq!(f.len(), 3, "{f:#?}");
    assert!(
        f[0].starts_with(
            "* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) INTERNALDATE \"05-Nov-2026 07:00:00 +0000\""
        ),
        "{}",
        f[0]
    );
    assert!(f[0].ends_with("Subject: one\r\n\r\n)"), "{}", f[0]);
    assert!(
        f[1].starts_with("* 2 FETCH (UID 2 FLAGS (\\Recent) "),
        "{}",
        f[1]
    );
    assert!(f[1].ends_with("Subject: two\r\n\r\n)"), "{}", f[1]);
    assert!(
        f[2].starts_with("* 3 FETCH (UID 3 FLAGS (\\Flagged \\Recent $Later) "),
        "{}",
        f[2]
    );
    assert!(f[2].ends_with("Subject: three\r\n\r\n)"), "{}", f[2]);
    c.ok("UNSELECT").await;
    let status = vec!["* STATUS \"Drafts\" (MESSAGES 3 UIDNEXT 4)".to_string()];

    // Synchronising literals: the third is too big, refused before it is
    // sent; the two the server already read are not stored.
    c.send(format!("a2 APPEND Drafts {{{}}}\r\n", m1.len()).as_bytes())
        .await;
    assert!(c.line().await.starts_with("+ "));
    c.send(&m1).await;
    c.send(format!(" (\\Seen) {{{}}}\r\n", m2.len()).as_bytes())
        .await;
    assert!(c.line().await.starts_with("+ "));
    c.send(&m2).await;
    c.send(b" {4294967295}\r\n").await;
    let line = c.line().await;
    assert!(line.starts_with("a2 NO [TOOBIG]"), "{line}");
    assert_eq!(c.ok("STATUS Drafts (MESSAGES UIDNEXT)").await, status);

    // A bad date or flag on the second message: BAD, nothing stored.
    for (tag, args) in [
        ("a3", "\"31-Feb-2026 08:00:00 +0100\""),
        ("a4", "(bad%keyword)"),
        ("a5", "(\\Seen"),
    ] {
        c.send(&multiappend(
            tag,
            "Drafts",
            &[("", &m1), (args, &m2), ("", &m3)],
        ))
        .await;
        let (_, done) = c.until(tag).await;
        assert!(done.starts_with(&format!("{tag} BAD")), "{args} -> {done}");
    }
    assert_eq!(c.ok("STATUS Drafts (MESSAGES UIDNEXT)").await, status);

    // Into a mailbox that does not exist: TRYCREATE, nothing created.
    c.send(&multiappend("a6", "Nowhere", &[("", &m1), ("", &m2)]))
        .await;
    let (_, done) = c.until("a6").await;
    assert!(done.starts_with("a6 NO [TRYCREATE]"), "{done}");

    // Over the quota part-way: the first would fit, the set does not.
    let big = realistic_message(3);
    let used = (m1.len() + m2.len() + m3.len()) as u64;
    let store = mailroom_tests::open_store(r).await;
    let alice = mailroom_address::Address::parse(ALICE).unwrap();
    store
        .set_quota(&alice, used + big.len() as u64 + 100)
        .await
        .unwrap();
    c.send(&multiappend("a7", "Drafts", &[("", &big), ("", &big)]))
        .await;
    let (untagged, done) = c.until("a7").await;
    assert!(done.starts_with("a7 NO [OVERQUOTA]"), "{done}");
    assert_eq!(untagged, Vec::<String>::new());
    assert_eq!(c.ok("STATUS Drafts (MESSAGES UIDNEXT)").await, status);
    // The single one fits and takes the next UID: no gap was left.
    let (_, done) = c.append_plus("a8", "Drafts", &big).await;
    assert!(
        done.starts_with(&format!("a8 OK [APPENDUID {uidvalidity} 4]")),
        "{done}"
    );
    store.set_quota(&alice, 0).await.unwrap();

    // Into the selected mailbox: the session is told of both.
    c.ok("SELECT Drafts").await;
    c.send(&multiappend(
        "a9",
        "Drafts",
        &[("", &m1), ("(\\Answered)", &m2)],
    ))
    .await;
    let (untagged, done) = c.until("a9").await;
    assert!(
        done.starts_with(&format!("a9 OK [APPENDUID {uidvalidity} 5:6]")),
        "{done}"
    );
    assert!(
        untagged.contains(&"* 6 EXISTS".to_string()),
        "{untagged:#?}"
    );
    let f = c.ok("UID FETCH 5:6 (FLAGS)").await;
    assert_eq!(
        f,
        vec![
            "* 5 FETCH (UID 5 FLAGS (\\Recent))",
            "* 6 FETCH (UID 6 FLAGS (\\Answered \\Recent))"
        ]
    );
    // A single APPEND is still a single APPEND.
    let (_, done) = c.append_plus("a10", "Drafts", &m3).await;
    assert!(
        done.starts_with(&format!("a10 OK [APPENDUID {uidvalidity} 7]")),
        "{done}"
    );
}

/// CREATE-SPECIAL-USE (RFC 6154 §3 and the example of §5.3): a mailbox
/// created with a use is listed with it; an unknown or unsupported use, or
/// one named twice, is `NO [USEATTR]` and creates nothing.
async fn create_special_use(r: &Running) {
    setup(r, 0).await;
    let mut c = connect(imap(r)).await;
    c.login().await;
    let caps = c.ok("CAPABILITY").await;
    assert!(
        caps[0].split(' ').any(|w| w == "CREATE-SPECIAL-USE"),
        "{caps:?}"
    );
    c.ok("CREATE MySpecialArchive (USE (\\Archive))").await;
    assert_eq!(
        c.ok("LIST \"\" MySpecialArchive").await,
        vec!["* LIST (\\Archive \\HasNoChildren) \"/\" \"MySpecialArchive\""]
    );
    // Several uses, any case, a quoted name, a hierarchy.
    c.ok("CREATE \"Old Mail/Sent 2025\" (USE (\\sent \\JUNK))")
        .await;
    assert_eq!(
        c.ok("LIST (SPECIAL-USE) \"\" \"Old Mail/*\"").await,
        vec!["* LIST (\\Sent \\Junk \\HasNoChildren) \"/\" \"Old Mail/Sent 2025\""]
    );
    for (tag, command, answer) in [
        ("t1", "CREATE Everything (USE (\\All))", "NO [USEATTR]"),
        ("t2", "CREATE Starred (USE (\\Flagged))", "NO [USEATTR]"),
        ("t3", "CREATE Odd (USE (\\Important))", "NO [USEATTR]"),
        ("t4", "CREATE Twice (USE (\\Trash \\trash))", "NO [USEATTR]"),
        ("t5", "CREATE Empty (USE ())", "BAD"),
        ("t6", "CREATE Unknown (FOO (\\Archive))", "BAD"),
        ("t7", "CREATE Unclosed (USE (\\Archive)", "BAD"),
    ] {
        c.send(format!("{tag} {command}\r\n").as_bytes()).await;
        let (_, done) = c.until(tag).await;
        assert!(
            done.starts_with(&format!("{tag} {answer}")),
            "{command} -> {done}"
        );
    }
    for name in [
        "Everything",
        "Starred",
        "Odd",
        "Twice",
        "Empty",
        "Unknown",
        "Unclosed",
    ] {
        assert_eq!(
            c.ok(&format!("LIST \"\" {name}")).await,
            Vec::<String>::new()
        );
    }
    // A plain CREATE still makes a mailbox without a use.
    c.ok("CREATE Plain").await;
    assert_eq!(
        c.ok("LIST \"\" Plain").await,
        vec!["* LIST (\\HasNoChildren) \"/\" \"Plain\""]
    );
}

/// UNAUTHENTICATE (RFC 8437): back to the not-authenticated state without
/// closing the connection; the selected mailbox is left without an expunge,
/// ENABLEd extensions are forgotten, and another user may log in.
async fn unauthenticate_returns_to_the_greeting_state(r: &Running) {
    setup(r, 2).await;
    let mut c = connect(imap(r)).await;
    // Only after authentication.
    let (_, done) = c.cmd("UNAUTHENTICATE").await;
    assert!(done.ends_with(" BAD log in first"), "{done}");
    c.login().await;
    let caps = c.ok("CAPABILITY").await;
    assert!(
        caps[0].split(' ').any(|w| w == "UNAUTHENTICATE"),
        "{caps:?}"
    );
    assert_eq!(
        c.ok("ENABLE UTF8=ACCEPT").await,
        vec!["* ENABLED UTF8=ACCEPT"]
    );
    c.ok("SELECT INBOX").await;
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    let (untagged, done) = c.cmd("unauthenticate").await;
    assert_eq!(untagged, Vec::<String>::new());
    assert!(done.contains(" OK "), "{done}");
    // Not authenticated: mailbox commands are refused, login is offered.
    let (_, done) = c.cmd("SELECT INBOX").await;
    assert!(done.ends_with(" BAD log in first"), "{done}");
    let caps = c.ok("CAPABILITY").await;
    assert!(caps[0].contains("AUTH=PLAIN"), "{caps:?}");
    assert!(!caps[0].contains("UNAUTHENTICATE"), "{caps:?}");
    // Another user, on the same connection, sees only their own mail.
    c.ok(&format!("LOGIN bob@example.test \"{PASSWORD}\""))
        .await;
    let sel = c.ok("SELECT INBOX").await;
    assert!(sel.contains(&"* 0 EXISTS".to_string()), "{sel:#?}");
    c.ok("UNAUTHENTICATE").await;
    // Back as alice: nothing was expunged, ENABLE starts afresh.
    c.login().await;
    assert_eq!(
        c.ok("ENABLE UTF8=ACCEPT").await,
        vec!["* ENABLED UTF8=ACCEPT"]
    );
    let sel = c.ok("EXAMINE INBOX").await;
    assert!(sel.contains(&"* 2 EXISTS".to_string()), "{sel:#?}");
    let f = c.ok("FETCH 1 (FLAGS)").await;
    assert_eq!(f, vec!["* 1 FETCH (FLAGS (\\Deleted))"]);
    // Arguments make it a different command.
    let (_, done) = c.cmd("UNAUTHENTICATE now").await;
    assert!(done.contains(" BAD "), "{done}");
    c.ok("NOOP").await;
}

/// The object id in `(…)` after `key` in `line`.
fn object_id(line: &str, key: &str) -> String {
    let at = line
        .find(&format!("{key} ("))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    let rest = &line[at + key.len() + 2..];
    rest[..rest.find(')').unwrap()].to_string()
}

/// OBJECTID (RFC 8474): MAILBOXID from CREATE, SELECT and STATUS, kept by
/// RENAME and new for a new mailbox of the same name; EMAILID from FETCH,
/// the same after COPY and MOVE, found by SEARCH; THREADID NIL (threads
/// are not tracked, §5.2).
async fn object_ids(r: &Running) {
    setup(r, 2).await;
    let mut c = connect(imap(r)).await;
    c.login().await;
    let caps = c.ok("CAPABILITY").await;
    assert!(caps[0].split(' ').any(|w| w == "OBJECTID"), "{caps:?}");
    // MAILBOXID (§4).
    let (_, done) = c.cmd("CREATE Projects").await;
    assert!(done.contains(" OK [MAILBOXID ("), "{done}");
    let id = object_id(&done, "MAILBOXID");
    assert!(
        id.len() <= 255
            && id.starts_with(|c: char| c.is_ascii_alphabetic())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{id}"
    );
    assert_eq!(
        c.ok("STATUS Projects (MAILBOXID)").await,
        vec![format!("* STATUS \"Projects\" (MAILBOXID ({id}))")]
    );
    c.ok("RENAME Projects Work").await;
    assert_eq!(
        c.ok("STATUS Work (UIDNEXT MAILBOXID)").await,
        vec![format!("* STATUS \"Work\" (UIDNEXT 1 MAILBOXID ({id}))")]
    );
    let sel = c.ok("SELECT Work").await;
    assert!(
        sel.iter()
            .any(|l| l.starts_with(&format!("* OK [MAILBOXID ({id})]"))),
        "{sel:#?}"
    );
    c.ok("UNSELECT").await;
    c.ok("DELETE Work").await;
    let (_, done) = c.cmd("CREATE Work").await;
    assert_ne!(object_id(&done, "MAILBOXID"), id);
    let inbox = c.ok("STATUS INBOX (MAILBOXID)").await;
    assert_ne!(object_id(&inbox[0], "MAILBOXID"), id);

    // EMAILID and THREADID (§5).
    c.ok("SELECT INBOX").await;
    let f = c.ok("FETCH 1:2 (EMAILID THREADID)").await;
    assert_eq!(f.len(), 2, "{f:#?}");
    let (e1, e2) = (object_id(&f[0], "EMAILID"), object_id(&f[1], "EMAILID"));
    assert_ne!(e1, e2);
    assert_eq!(f[0], format!("* 1 FETCH (EMAILID ({e1}) THREADID NIL)"));
    assert_eq!(
        c.ok("FETCH 2 (FLAGS EMAILID)").await,
        vec![format!("* 2 FETCH (FLAGS () EMAILID ({e2}))")]
    );
    assert_eq!(
        c.ok("UID FETCH 1 EMAILID").await,
        vec![format!("* 1 FETCH (UID 1 EMAILID ({e1}))")]
    );
    assert_eq!(
        c.ok(&format!("SEARCH EMAILID {e2}")).await,
        vec!["* SEARCH 2"]
    );
    assert_eq!(
        c.ok(&format!("SEARCH UNSEEN EMAILID {e1}")).await,
        vec!["* SEARCH 1"]
    );
    assert_eq!(
        c.ok(&format!("SEARCH SEEN EMAILID {e1}")).await,
        vec!["* SEARCH"]
    );
    assert_eq!(c.ok("SEARCH EMAILID Enothing").await, vec!["* SEARCH"]);
    assert_eq!(c.ok("SEARCH THREADID T1").await, vec!["* SEARCH"]);
    // Stable across COPY and MOVE within the account.
    c.ok("COPY 1 Archive").await;
    c.ok("MOVE 2 Archive").await;
    c.ok("SELECT Archive").await;
    let f = c.ok("FETCH 1:* (EMAILID)").await;
    assert_eq!(
        f,
        vec![
            format!("* 1 FETCH (EMAILID ({e1}))"),
            format!("* 2 FETCH (EMAILID ({e2}))")
        ]
    );
    c.ok("SELECT INBOX").await;
    assert_eq!(
        c.ok("FETCH 1 (EMAILID)").await,
        vec![format!("* 1 FETCH (EMAILID ({e1}))")]
    );
    // Bad input.
    for bad in [
        "SEARCH EMAILID",
        "FETCH 1 (EMAILID",
        "STATUS INBOX (MAILBOXID",
    ] {
        let (_, done) = c.cmd(bad).await;
        assert!(done.contains(" BAD "), "{bad} -> {done}");
    }
}

/// Today's date (UTC) in IMAP's `d-Mon-yyyy` form.
fn imap_today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Days to civil date (H. Hinnant's algorithm).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let names = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!("{day}-{}-{year}", names[(month - 1) as usize])
}

/// SAVEDATE (RFC 8514): an APPENDed message's save date is when it was
/// saved, not its INTERNALDATE; SEARCH SAVEDBEFORE/SAVEDON/SAVEDSINCE use
/// it, SAVEDATESUPPORTED matches every message; delivered and copied
/// messages have one too.
async fn savedate(r: &Running) {
    setup(r, 1).await;
    let mut c = connect(imap(r)).await;
    c.login().await;
    let caps = c.ok("CAPABILITY").await;
    assert!(caps[0].split(' ').any(|w| w == "SAVEDATE"), "{caps:?}");
    let before = imap_today();
    let msg = message("saved", "body");
    let (_, done) = c
        .append_plus("a1", "Drafts \"05-Nov-2020 08:00:00 +0100\"", &msg)
        .await;
    assert!(done.starts_with("a1 OK"), "{done}");
    let after = imap_today();
    c.ok("SELECT Drafts").await;
    let f = c.ok("FETCH 1 (INTERNALDATE SAVEDATE)").await;
    let line = &f[0];
    assert!(
        line.starts_with("* 1 FETCH (INTERNALDATE \"05-Nov-2020 07:00:00 +0000\" SAVEDATE \""),
        "{line}"
    );
    let saved = line.split("SAVEDATE \"").nth(1).unwrap();
    let day = saved
        .split(' ')
        .next()
        .unwrap()
        .trim_start_matches('0')
        .to_string();
    assert!(day == before || day == after, "{line} (today {before})");
    assert!(saved.ends_with(" +0000\")"), "{line}");
    assert_eq!(
        c.ok(&format!("SEARCH SAVEDON {day}")).await,
        vec!["* SEARCH 1"]
    );
    assert_eq!(
        c.ok(&format!("SEARCH SAVEDSINCE {day}")).await,
        vec!["* SEARCH 1"]
    );
    assert_eq!(
        c.ok(&format!("SEARCH SAVEDBEFORE {day}")).await,
        vec!["* SEARCH"]
    );
    assert_eq!(c.ok("SEARCH SAVEDON 5-Nov-2020").await, vec!["* SEARCH"]);
    assert_eq!(c.ok("SEARCH ON 5-Nov-2020").await, vec!["* SEARCH 1"]);
    assert_eq!(
        c.ok("SEARCH SAVEDBEFORE 1-Jan-2200").await,
        vec!["* SEARCH 1"]
    );
    assert_eq!(c.ok("SEARCH SAVEDATESUPPORTED").await, vec!["* SEARCH 1"]);
    assert_eq!(
        c.ok("UID SEARCH SAVEDATESUPPORTED SAVEDSINCE 1-Jan-2000 UNSEEN")
            .await,
        vec!["* SEARCH 1"]
    );
    // A delivered message and a copy have save dates of their own.
    c.ok("COPY 1 Archive").await;
    c.ok("SELECT INBOX").await;
    let f = c.ok("FETCH 1 (SAVEDATE)").await;
    assert!(f[0].starts_with("* 1 FETCH (SAVEDATE \""), "{f:?}");
    c.ok("SELECT Archive").await;
    let f = c.ok("FETCH 1 (SAVEDATE INTERNALDATE)").await;
    assert!(
        f[0].contains("INTERNALDATE \"05-Nov-2020 07:00:00 +0000\""),
        "{f:?}"
    );
    let copied = f[0].split("SAVEDATE \"").nth(1).unwrap();
    let copied_day = copied.split(' ').next().unwrap().trim_start_matches('0');
    assert!(copied_day == before || copied_day == after, "{f:?}");
    // Bad input.
    for bad in [
        "SEARCH SAVEDON 31-Feb-2020",
        "SEARCH SAVEDON",
        "SEARCH SAVEDSINCE yesterday",
        "FETCH 1 (SAVEDATE",
    ] {
        let (_, done) = c.cmd(bad).await;
        assert!(done.contains(" BAD "), "{bad} -> {done}");
    }
}

/// PREVIEW (RFC 8970): up to 200 characters of the first text part,
/// whitespace normalised, HTML without tags, decoded from its transfer
/// encoding and charset; LAZY changes nothing; reading it does not set
/// \Seen; a message without text has the empty preview.
async fn preview(r: &Running) {
    setup(r, 1).await;
    let mut c = connect(imap(r)).await;
    c.login().await;
    let caps = c.ok("CAPABILITY").await;
    assert!(caps[0].split(' ').any(|w| w == "PREVIEW"), "{caps:?}");
    c.ok("SELECT INBOX").await;
    assert_eq!(
        c.ok("FETCH 1 (PREVIEW)").await,
        vec!["* 1 FETCH (PREVIEW \"body 1\")"]
    );
    assert_eq!(
        c.ok("FETCH 1 (FLAGS PREVIEW (LAZY))").await,
        vec!["* 1 FETCH (FLAGS () PREVIEW \"body 1\")"]
    );
    assert_eq!(
        c.ok("UID FETCH 1 (PREVIEW)").await,
        vec!["* 1 FETCH (UID 1 PREVIEW \"body 1\")"]
    );
    // Not \Seen by it.
    assert_eq!(c.ok("FETCH 1 (FLAGS)").await, vec!["* 1 FETCH (FLAGS ())"]);
    let html = b"From: a@example.test\r\nSubject: h\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><style>p {color: red}</style>\
<p>Hello   <b>there</b>,</p>\r\n<p>second &amp; last</p></html>\r\n--b--\r\n";
    c.append_plus("a1", "INBOX", html).await;
    let qp = "From: a@example.test\r\nSubject: q\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=C3=A9 \"au\"\r\n\r\n  lait\r\n"
        .as_bytes();
    c.append_plus("a2", "INBOX", qp).await;
    let long = message("long", &"0123456789 ".repeat(40));
    c.append_plus("a3", "INBOX", &long).await;
    c.append_plus("a4", "INBOX", b"Subject: empty\r\n\r\n")
        .await;
    let f = c.ok("FETCH 2:5 (PREVIEW)").await;
    assert_eq!(f[0], "* 2 FETCH (PREVIEW \"Hello there , second & last\")");
    // Not ASCII, or with a quote: a literal.
    let cafe = "Caf\u{e9} \"au\" lait";
    assert_eq!(
        f[1],
        format!("* 3 FETCH (PREVIEW {{{}}}\r\n{cafe})", cafe.len())
    );
    let cut = f[2]
        .strip_prefix("* 4 FETCH (PREVIEW \"")
        .and_then(|p| p.strip_suffix("\")"))
        .unwrap_or_else(|| panic!("{}", f[2]));
    assert_eq!(cut.chars().count(), 200, "{cut}");
    assert!("0123456789 ".repeat(40).starts_with(cut), "{cut}");
    assert_eq!(f[3], "* 5 FETCH (PREVIEW \"\")");
    // An unknown modifier is refused.
    let (_, done) = c.cmd("FETCH 1 (PREVIEW (FUZZY))").await;
    assert!(done.contains(" BAD "), "{done}");
}

/// The messages of the SORT and THREAD test, appended with INTERNALDATEs
/// running backwards (message i on 10 - i November): (internal date,
/// text). Message 3 has no Date (its sent date is its INTERNALDATE, RFC
/// 5256 §2.2), 4 and 5 refer to each other (a reference loop), 4 has an
/// 8-bit subject and 5 the same one encoded in ISO-8859-1, 1 and 6 share a
/// sent date (ordered by sequence number).
fn sort_messages() -> Vec<(String, Vec<u8>)> {
    let texts: [&[u8]; 6] = [
        b"From: Zed <zed@x.test>\r\nTo: bob@x.test\r\nSubject: Re: Hello\r\n\
          Date: Tue, 03 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@t>\r\n\r\none\r\n",
        b"From: amy@x.test\r\nTo: Carl@x.test\r\nCc: dan@x.test\r\n\
          Subject: =?UTF-8?Q?=C3=A9t=C3=A9?=\r\nDate: Sun, 01 Nov 2026 10:00:00 +0000\r\n\
          Message-ID: <2@t>\r\nReferences: <1@t>\r\n\r\ntwo\r\n",
        b"From: \"Bob\" <Bob@x.test>\r\nTo: alice@example.test\r\n\
          Subject: [list] Fwd: hello (fwd)\r\nMessage-ID: <3@t>\r\nIn-Reply-To: <2@t>\r\n\r\nthree\r\n",
        "From: carl@x.test\r\nTo: alice@example.test\r\nSubject: \u{e4}rger\r\n\
          Date: Wed, 04 Nov 2026 10:00:00 +0000\r\nMessage-ID: <4@t>\r\nReferences: <5@t>\r\n\r\nfour\r\n"
            .as_bytes(),
        b"To: alice@example.test\r\nSubject: Re: =?ISO-8859-1?Q?=C4rger?=\r\n\
          Date: Wed, 04 Nov 2026 11:00:00 +0000\r\nMessage-ID: <5@t>\r\nReferences: <4@t>\r\n\r\nfive\r\n",
        b"From: zed@x.test\r\nTo: alice@example.test\r\nSubject: hello\r\n\
          Date: Tue, 03 Nov 2026 10:00:00 +0000\r\nMessage-ID: <6@t>\r\n\r\nsix\r\n",
    ];
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                format!("\"{:02}-Nov-2026 09:00:00 +0000\"", 9 - i),
                t.to_vec(),
            )
        })
        .collect()
}

/// SORT and THREAD (RFC 5256) through a real session: every sort key,
/// REVERSE, several keys, UID SORT with search criteria, base subjects
/// (Re:, Fwd:, [blob], (fwd), encoded words, 8-bit text, case), the
/// INTERNALDATE fallback for a missing Date, ties by sequence number,
/// ORDEREDSUBJECT and REFERENCES over a reference loop with subject
/// merging, and bad input.
async fn sort_and_thread_per_rfc_5256(r: &Running) {
    with_accounts(r, &[ALICE]).await;
    let mut c = connect(imap(r)).await;
    let caps = c.ok("CAPABILITY").await;
    assert!(!caps[0].contains("SORT"), "{caps:?}");
    c.login().await;
    let caps = c.ok("CAPABILITY").await;
    for cap in [
        " SORT ",
        " SORT=DISPLAY",
        " ESORT",
        " THREAD=ORDEREDSUBJECT",
        " THREAD=REFERENCES",
    ] {
        assert!(caps[0].contains(cap), "{cap} missing: {caps:?}");
    }
    // A first message expunged, so that UIDs are sequence numbers + 1.
    let (_, done) = c.append_plus("a0", "INBOX", &message("gone", "x")).await;
    assert!(done.starts_with("a0 OK"), "{done}");
    for (i, (date, text)) in sort_messages().iter().enumerate() {
        let tag = format!("a{}", i + 1);
        let (_, done) = c.append_plus(&tag, &format!("INBOX {date}"), text).await;
        assert!(done.starts_with(&format!("{tag} OK")), "{done}");
    }
    c.ok("SELECT INBOX").await;
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    c.ok("EXPUNGE").await;
    let sort = async |c: &mut Imap<_>, args: &str| {
        let lines = c.ok(args).await;
        assert_eq!(lines.len(), 1, "{args}: {lines:?}");
        lines[0].clone()
    };
    for (command, expected) in [
        // Ä (A + U+0308) < É (E + U+0301) < H; Hello, hello and the
        // forwarded hello tie and go by sequence number.
        ("SORT (SUBJECT) UTF-8 ALL", "* SORT 4 5 2 1 3 6"),
        ("SORT (ARRIVAL) UTF-8 ALL", "* SORT 6 5 4 3 2 1"),
        ("SORT (REVERSE ARRIVAL) US-ASCII ALL", "* SORT 1 2 3 4 5 6"),
        // Message 3 has no Date: its INTERNALDATE (7 Nov) is its date.
        ("SORT (DATE) UTF-8 ALL", "* SORT 2 1 6 4 5 3"),
        // REVERSE never reverses the tie-break by sequence number.
        ("SORT (REVERSE DATE) UTF-8 ALL", "* SORT 3 5 4 1 6 2"),
        // No From sorts first; the local part, case-insensitively.
        ("SORT (FROM) UTF-8 ALL", "* SORT 5 2 3 4 1 6"),
        ("SORT (TO) UTF-8 ALL", "* SORT 3 4 5 6 1 2"),
        // RFC 5957: the display name, else the addr-spec (AMY@X.TEST <
        // BOB < CARL@X.TEST < ZED < ZED@X.TEST).
        ("SORT (DISPLAYFROM) UTF-8 ALL", "* SORT 5 2 3 4 1 6"),
        ("SORT (REVERSE DISPLAYTO) UTF-8 ALL", "* SORT 2 1 3 4 5 6"),
        ("SORT (CC) UTF-8 ALL", "* SORT 1 3 4 5 6 2"),
        ("SORT (REVERSE CC) UTF-8 ALL", "* SORT 2 1 3 4 5 6"),
        (
            "SORT (SUBJECT REVERSE DATE) UTF-8 ALL",
            "* SORT 5 4 2 3 1 6",
        ),
        ("SORT (SUBJECT) UTF-8 SUBJECT hello", "* SORT 1 3 6"),
        ("UID SORT (DATE) UTF-8 SUBJECT hello", "* SORT 2 7 4"),
        ("UID SORT (SUBJECT) UTF-8 5:6", "* SORT 6 7"),
        ("SORT (DATE) UTF-8 SUBJECT nothing-matches", "* SORT"),
        // ESORT (RFC 5267 §3.2): MIN/MAX first and last in sort order,
        // ALL in sort order with ascending runs joined.
        (
            "SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL",
            "* ESEARCH (TAG \"t{}\") MIN 2 MAX 3 COUNT 6",
        ),
        (
            "UID SORT RETURN (ALL) (REVERSE ARRIVAL) UTF-8 ALL",
            "* ESEARCH (TAG \"t{}\") UID ALL 2:7",
        ),
        (
            "SORT RETURN () (SUBJECT) UTF-8 ALL",
            "* ESEARCH (TAG \"t{}\") ALL 4:5,2,1,3,6",
        ),
        (
            "SORT RETURN (COUNT MIN) (DATE) UTF-8 SUBJECT nothing-matches",
            "* ESEARCH (TAG \"t{}\") COUNT 0",
        ),
        // ORDEREDSUBJECT: one thread per base subject, by first date.
        (
            "THREAD ORDEREDSUBJECT UTF-8 ALL",
            "* THREAD (2)(1 (6)(3))(4 5)",
        ),
        // REFERENCES: 1-2-3 by references; hello (6, not a reply) takes
        // Re: Hello (1) as its child; 4 and 5 refer to each other.
        ("THREAD REFERENCES UTF-8 ALL", "* THREAD (6 1 2 3)(5 4)"),
        ("UID THREAD REFERENCES UTF-8 ALL", "* THREAD (7 2 3 4)(6 5)"),
        // 2 refers to 1, which is not searched: a dummy, promoted.
        ("THREAD REFERENCES US-ASCII 2:3", "* THREAD (2 3)"),
        (
            "THREAD REFERENCES UTF-8 SUBJECT nothing-matches",
            "* THREAD",
        ),
    ] {
        let expected = expected.replace("t{}", &format!("t{}", c.next + 1));
        assert_eq!(sort(&mut c, command).await, expected, "{command}");
    }
    // Sizes: message i's text is the only thing that differs.
    let sizes = c.ok("FETCH 1:6 (RFC822.SIZE)").await;
    let mut by_size: Vec<(u64, usize)> = sizes
        .iter()
        .map(|l| {
            let seq: usize = l.split(' ').nth(1).unwrap().parse().unwrap();
            let size: u64 = l
                .rsplit(' ')
                .next()
                .unwrap()
                .trim_end_matches(')')
                .parse()
                .unwrap();
            (size, seq)
        })
        .collect();
    by_size.sort_unstable();
    let expected: Vec<String> = by_size.iter().map(|(_, s)| s.to_string()).collect();
    assert_eq!(
        sort(&mut c, "SORT (SIZE) UTF-8 ALL").await,
        format!("* SORT {}", expected.join(" "))
    );
    // Bad input.
    let (_, done) = c.cmd("SORT (SUBJECT) KOI8-R ALL").await;
    assert!(done.contains(" NO [BADCHARSET (UTF-8 US-ASCII)]"), "{done}");
    let (_, done) = c.cmd("THREAD REFERENCES X-UNKNOWN ALL").await;
    assert!(done.contains(" NO [BADCHARSET (UTF-8 US-ASCII)]"), "{done}");
    for bad in [
        "SORT (COLOUR) UTF-8 ALL",
        "SORT () UTF-8 ALL",
        "SORT SUBJECT UTF-8 ALL",
        "SORT (SUBJECT) UTF-8",
        "THREAD XYZZY UTF-8 ALL",
        "SORT RETURN (FIRST) (DATE) UTF-8 ALL",
    ] {
        let (_, done) = c.cmd(bad).await;
        assert!(done.split(' ').nth(1) == Some("BAD"), "{bad} -> {done}");
    }
    c.ok("CLOSE").await;
    let (_, done) = c.cmd("SORT (SUBJECT) UTF-8 ALL").await;
    assert!(
        done.split(' ').nth(1) == Some("BAD"),
        "not selected -> {done}"
    );
    c.ok("LOGOUT").await;
}
