//! Service authentication and authorisation on the internal gRPC links
//! (`Queue.Enqueue`, `Delivery.Deliver`): who may hand mail to the queue,
//! and who may write into mailboxes.
//!
//! Trust model:
//! * A deployment has one **internal secret** (32 random bytes, written as
//!   64 hex digits), distinct from the admin token. A service that *serves*
//!   an internal link (the MTA's Queue, the MDA's Delivery) holds it.
//! * Each caller presents a **role credential**
//!   `mailroom-internal.<role>.<hex HMAC-SHA256(secret, "mailroom-internal-v1:" role)>`
//!   in `authorization: Bearer …`. A service that only calls (the MSA) may
//!   be given just its role credential (`mailroom internal token msa`), so
//!   that a compromised MSA cannot mint the MTA's credential and write into
//!   mailboxes.
//! * The server recomputes the MAC of the role the credential names and
//!   compares it in constant time; a missing or wrong one is
//!   `UNAUTHENTICATED`, a valid one of a role the service does not admit is
//!   `PERMISSION_DENIED`, and both are logged with the peer's address. The
//!   admitted role is put into the request's extensions as a [`Caller`]; the
//!   service implementations refuse any request without one, so a service
//!   wired without the check is closed, not open.
//! * Roles: [`Role::Msa`] (authenticated submission) and [`Role::Inbound`]
//!   (port-25 sessions) may call `Enqueue`; [`Role::Mta`] (the queue's local
//!   delivery worker) may call `Deliver`. The Queue additionally lets only
//!   the MSA role enqueue for a non-local recipient, and only for a message
//!   that says it came from an authenticated submission.
//! * In one process (the embedded default) the services call each other
//!   directly and attach their [`Caller`] themselves; no internal port is
//!   bound unless `internal.expose` asks for it.
//!
//! Health and reflection stay open: they neither read nor write mail.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::{Request, Status};

/// What a caller of an internal service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The submission server (MSA): enqueues mail of authenticated users.
    Msa,
    /// The inbound SMTP server (port 25): enqueues mail for local domains.
    Inbound,
    /// The MTA's queue worker: delivers local mail through the MDA.
    Mta,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Msa, Role::Inbound, Role::Mta];

    /// The role's name in credentials, logs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Role::Msa => "msa",
            Role::Inbound => "inbound",
            Role::Mta => "mta",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The authenticated caller of a request, in its extensions: put there by
/// [`RequireRole`] after checking the credential, or by an in-process caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller(pub Role);

impl Caller {
    /// The caller of `request`, when one was authenticated.
    pub fn of<T>(request: &Request<T>) -> Option<Role> {
        request.extensions().get::<Caller>().map(|c| c.0)
    }

    /// Marks `request` as made by `role` (in-process calls only: the
    /// caller is this very process).
    pub fn attach<T>(request: &mut Request<T>, role: Role) {
        request.extensions_mut().insert(Caller(role));
    }
}

const PREFIX: &str = "mailroom-internal";
const CONTEXT: &str = "mailroom-internal-v1:";

/// The deployment's internal secret.
#[derive(Clone)]
pub struct InternalSecret(Arc<[u8; 32]>);

impl std::fmt::Debug for InternalSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalSecret(…)")
    }
}

impl InternalSecret {
    /// A new random secret.
    pub fn generate() -> InternalSecret {
        InternalSecret(Arc::new(rand::random()))
    }

    /// Reads the text of a secret file: 64 hex digits (surrounding
    /// whitespace, such as a final newline, is ignored).
    pub fn parse(text: &str) -> Result<InternalSecret, String> {
        let text = text.trim();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| {
            "the internal secret must be 64 hexadecimal digits \
             (make one with `openssl rand -hex 32`)"
                .to_string()
        })?;
        Ok(InternalSecret(Arc::new(bytes)))
    }

    /// The text to store in a secret file.
    pub fn to_text(&self) -> String {
        format!("{}\n", hex::encode(*self.0))
    }

    fn mac(&self, role: Role) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0[..]).expect("HMAC takes keys of any length");
        mac.update(CONTEXT.as_bytes());
        mac.update(role.name().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The credential of `role`.
    pub fn credential(&self, role: Role) -> Credential {
        Credential(format!("{PREFIX}.{role}.{}", hex::encode(self.mac(role))).into())
    }

    /// The role a presented credential proves, if it is valid (the MAC is
    /// compared in constant time).
    pub fn verify(&self, presented: &str) -> Option<Role> {
        let mut parts = presented.trim().splitn(3, '.');
        if parts.next()? != PREFIX {
            return None;
        }
        let role = Role::parse(parts.next()?)?;
        let mut given = [0u8; 32];
        hex::decode_to_slice(parts.next()?, &mut given).ok()?;
        let expected = self.mac(role);
        let diff = given
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(role)
    }
}

/// A role credential, as a caller presents it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(Arc<str>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, …)", self.role_name())
    }
}

impl Credential {
    /// Reads a credential file's text (it is checked by the server, not here,
    /// beyond its shape).
    pub fn parse(text: &str) -> Result<Credential, String> {
        let text = text.trim();
        let mut parts = text.splitn(3, '.');
        let ok = parts.next() == Some(PREFIX)
            && parts.next().and_then(Role::parse).is_some()
            && parts
                .next()
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(format!(
                "not an internal credential (expected {PREFIX}.<role>.<64 hex digits>, \
                 as printed by `mailroom internal token <role>`)"
            ));
        }
        Ok(Credential(text.into()))
    }

    /// The text of the credential (a secret: never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn role_name(&self) -> &str {
        self.0.split('.').nth(1).unwrap_or("?")
    }

    /// The role the credential names (a valid shape always names one).
    pub fn role(&self) -> Option<Role> {
        Role::parse(self.role_name())
    }
}

/// Client side: adds the credential to every call.
#[derive(Clone, Debug)]
pub struct AttachCredential(pub Credential);

impl tonic::service::Interceptor for AttachCredential {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = format!("Bearer {}", self.0.expose())
            .parse()
            .map_err(|_| Status::internal("the internal credential is not a valid header"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// Server side: admits calls whose credential is valid and whose role is
/// one of `allowed`, recording the role as the request's [`Caller`].
#[derive(Clone, Debug)]
pub struct RequireRole {
    secret: InternalSecret,
    allowed: &'static [Role],
    service: &'static str,
}

impl RequireRole {
    /// A check for `service` (its name in logs) admitting `allowed`.
    pub fn new(secret: InternalSecret, service: &'static str, allowed: &'static [Role]) -> Self {
        RequireRole {
            secret,
            allowed,
            service,
        }
    }
}

impl tonic::service::Interceptor for RequireRole {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let peer = request.remote_addr();
        let Some(role) = presented.and_then(|p| self.secret.verify(p)) else {
            tracing::warn!(
                service = self.service,
                ?peer,
                presented = presented.is_some(),
                "internal call refused: missing or invalid credential"
            );
            return Err(Status::unauthenticated(
                "a valid internal service credential is required",
            ));
        };
        if !self.allowed.contains(&role) {
            tracing::warn!(service = self.service, ?peer, %role, "internal call refused: role not allowed");
            return Err(Status::permission_denied(format!(
                "the {role} role may not call {}",
                self.service
            )));
        }
        tracing::Span::current().record("caller_role", role.name());
        Caller::attach(&mut request, role);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_prove_their_role_under_their_secret_only() {
        let (a, b) = (InternalSecret::generate(), InternalSecret::generate());
        for role in Role::ALL {
            let c = a.credential(role);
            assert_eq!(a.verify(c.expose()), Some(role));
            assert_eq!(b.verify(c.expose()), None);
            assert_eq!(Credential::parse(c.expose()).unwrap().role(), Some(role));
        }
        // Renaming the role in a credential breaks it.
        let msa = a.credential(Role::Msa);
        let forged = msa.expose().replace(".msa.", ".mta.");
        assert_eq!(a.verify(&forged), None);
        assert_eq!(a.verify(""), None);
        assert_eq!(a.verify("mailroom-internal.mta.00"), None);
    }

    #[test]
    fn secrets_round_trip_and_reject_bad_text() {
        let s = InternalSecret::generate();
        let again = InternalSecret::parse(&s.to_text()).unwrap();
        assert_eq!(
            again.credential(Role::Mta).expose(),
            s.credential(Role::Mta).expose()
        );
        assert!(InternalSecret::parse("short").is_err());
        assert!(Credential::parse("Bearer x").is_err());
        assert!(!format!("{s:?}").contains(&s.to_text()[..8]));
    }
}
