//! ACL (RFC 4314), read-only, and LIST-MYRIGHTS (RFC 8440).
//!
//! Mailboxes are not shared: each belongs to one account, whose user holds
//! every right on it and nobody else holds any. The commands say so:
//!
//! * `MYRIGHTS mailbox` → `* MYRIGHTS mailbox lrswipkxteacd` (§3.8; the
//!   virtual `c` and `d` are listed too, as §2.1.1 requires when their
//!   member rights `k x` and `t e` are held, for RFC 2086 clients);
//! * `GETACL mailbox` → `* ACL mailbox <user> lrswipkxteacd` (§3.3), the
//!   identifier being the login name;
//! * `LISTRIGHTS mailbox id` → every right fixed for the user (one rights
//!   set, nothing optional), none possible for anyone else (`""`) (§3.4);
//! * `SETACL` and `DELETEACL` → `NO [NOPERM]`: sharing is not supported;
//! * `LIST … RETURN (MYRIGHTS)` → a `* MYRIGHTS` after each mailbox's LIST
//!   (RFC 8440 §3, in `crate::session`).
//!
//! A mailbox that does not exist is `NO [NONEXISTENT]` in every command.
//! The capability is `ACL` with `RIGHTS=texk` (§2.1: the rights of RFC 4314
//! beyond RFC 2086's, all of which are implemented).

use crate::ImapServer;
use crate::names;
use crate::preparse::Cursor;
use crate::session::{Failure, Io, Outcome, State, existing_mailbox};

/// Every right of RFC 4314 §2.1, which the owner holds.
pub const OWNER_RIGHTS: &str = "lrswipkxteacd";

/// The ACL commands; `verb` is upper case, `args` follows `tag VERB `.
pub(crate) async fn command(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    verb: &str,
    args: &[u8],
) -> Outcome {
    let mut c = Cursor::new(args);
    let syntax = || Failure::Bad(format!("syntax error in {verb}"));
    let raw = c.astring().ok_or_else(syntax)?;
    let identifier = match verb {
        "LISTRIGHTS" | "SETACL" | "DELETEACL" => {
            c.sp().ok_or_else(syntax)?;
            Some(c.astring().ok_or_else(syntax)?)
        }
        _ => None,
    };
    if verb == "SETACL" {
        c.sp().ok_or_else(syntax)?;
        c.astring().ok_or_else(syntax)?;
    }
    if !c.at_end() {
        return Err(syntax());
    }
    let name = names::from_wire(&raw, state.utf8)?;
    let mb = existing_mailbox(server, state, &name).await?;
    let wire = names::quote(&names::to_wire(&mb.name, state.utf8), state.utf8);
    let user = state.account.as_ref().map_or("", |a| a.address.as_str());
    match verb {
        "MYRIGHTS" => io.line(&format!("* MYRIGHTS {wire} {OWNER_RIGHTS}")),
        "GETACL" => io.line(&format!(
            "* ACL {wire} {} {OWNER_RIGHTS}",
            names::quote(user, true)
        )),
        "LISTRIGHTS" => {
            let id = String::from_utf8_lossy(identifier.as_deref().unwrap_or_default());
            let rights = if id.eq_ignore_ascii_case(user) {
                OWNER_RIGHTS
            } else {
                "\"\""
            };
            io.line(&format!(
                "* LISTRIGHTS {wire} {} {rights}",
                names::quote(&id, true)
            ));
        }
        _ => {
            return Err(Failure::No(
                "[NOPERM] sharing mailboxes is not supported: each mailbox belongs to its \
                 owner alone, with all rights"
                    .into(),
            ));
        }
    }
    Ok(format!("OK {verb} completed"))
}
