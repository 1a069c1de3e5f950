//! Sender authentication: what tells a receiver that mail claiming one of
//! our domains is ours, and what tells us whether mail claiming someone
//! else's domain is theirs.
//!
//! * [`inbound`]: SPF (RFC 7208) for HELO and MAIL FROM, DKIM verification
//!   (RFC 6376, RSA-SHA256, Ed25519 per RFC 8463, never RSA-SHA1 per RFC
//!   8301), ARC (RFC 8617, recorded only), DMARC (RFC 7489 as revised by
//!   DMARCbis) with the policy decision, and the `Authentication-Results`
//!   (RFC 8601) and `Received-SPF` header fields that record it all;
//! * [`policy`]: what failures do, per recipient domain with a global default;
//! * [`signing`]: DKIM signatures for mail leaving our domains;
//! * [`keys`]: DKIM key generation and the DNS records to publish;
//! * [`spf`]: our RFC 7208 SPF evaluator (record grammar, macros,
//!   `check_host()` with its limits);
//! * [`dns`]: the one resolver every lookup goes through.
//!
//! SPF is ours ([`spf`]: `mail-auth`'s deviated from RFC 7208 in 51 of the
//! OpenSPF suite's 203 tests). DKIM, ARC and DMARC are done by `mail-auth`
//! 0.13.3; this crate closes its known gaps there (RSA-SHA1 accepted, no cap
//! on the signatures checked) and owns the policy. That crate's DMARC follows
//! DMARCbis: the DNS tree walk replaces the public-suffix list, `np=` applies
//! to non-existent subdomains, `t=y` lowers the policy by one step, and
//! `pct=` is no longer read.
//!
//! No I/O but DNS: the SMTP session and the queue call in and keep the
//! socket and the store.

pub mod dns;
#[doc(hidden)]
pub mod fuzz;
pub mod inbound;
pub mod keys;
pub mod policy;
pub mod signing;
pub mod spf;

pub use inbound::{Action, Checker, InboundPolicy, Verdict};
pub use policy::{Decisions, DomainPolicy, Handling, Policies};
