//! CREATE-SPECIAL-USE (RFC 6154 §3): `CREATE name (USE (\Archive))`.
//!
//! Invariants:
//! * a mailbox gets only the uses Mailroom gives meaning to, `\Archive`,
//!   `\Drafts`, `\Junk`, `\Sent` and `\Trash`; `\All` and `\Flagged` name
//!   virtual mailboxes Mailroom does not keep, so they are refused, as is
//!   any unknown attribute, with `NO [USEATTR]` (RFC 6154 §3, §5.3);
//! * naming a use twice in one CREATE is `NO [USEATTR]`; a use another
//!   mailbox already has is allowed (every account starts with `\Sent`,
//!   `\Drafts`, `\Junk`, `\Trash` and `\Archive` mailboxes, and RFC 6154
//!   §2 does not make a use unique: a client creating its own `\Archive`
//!   folder must not be refused because the default one exists);
//! * several uses are stored space-separated in the mailbox's
//!   `special_use` column, in the canonical spelling, and LIST shows them
//!   as they are stored.

use crate::session::Failure;

/// The uses a mailbox may be created with, canonical spelling.
const USES: [&str; 5] = ["\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash"];

/// Checks the `USE` attributes `wanted` (upper case, as lifted); returns
/// what to store.
pub(crate) fn uses_for_create(wanted: &[String]) -> Result<String, Failure> {
    if wanted.is_empty() {
        return Err(Failure::Bad("USE needs at least one attribute".into()));
    }
    let mut out: Vec<&str> = Vec::new();
    for w in wanted {
        let Some(canonical) = USES.iter().find(|u| u.eq_ignore_ascii_case(w)) else {
            return Err(Failure::No(format!(
                "[USEATTR] {w} is not a special use this server supports"
            )));
        };
        if out.contains(canonical) {
            return Err(Failure::No(format!("[USEATTR] {canonical} is named twice")));
        }
        out.push(canonical);
    }
    Ok(out.join(" "))
}
