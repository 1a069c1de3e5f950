//! The Admin gRPC service: domains, accounts, aliases, the queue and DKIM
//! keys.
//!
//! Every call must carry `authorization: Bearer <token>`; the token is
//! compared in constant time and a missing or wrong one is `UNAUTHENTICATED`
//! before any store access. There is no way to run the service open.
//!
//! Inputs are parsed into canonical addresses and domains here, so the store
//! only ever sees valid, normalised values; store errors become the gRPC
//! codes the contract (`proto/mailroom/admin/v1/admin.proto`) promises, and
//! internal causes are logged, not sent to the client.
//!
//! DKIM private keys are generated here and go straight into the store; no
//! call returns one (the store's listings do not even read them).

use std::sync::Arc;

use mailroom_address::{Address, Domain};
use mailroom_rpc::admin as pb;
use mailroom_rpc::admin::admin_server::{Admin, AdminServer};
use mailroom_store::{AliasSource, Store, StoreError};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

/// The bearer token admin clients must present.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

/// Shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

impl AdminToken {
    /// Wraps a token (surrounding whitespace, e.g. a file's newline, is ignored).
    pub fn new(token: &str) -> Result<AdminToken, String> {
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the admin token must have at least {MIN_TOKEN_LEN} characters"
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the admin token must be printable ASCII without spaces".into());
        }
        Ok(AdminToken(token.into()))
    }

    /// Checks an `authorization` header value, in constant time for equal lengths.
    fn accepts(&self, header: &str) -> bool {
        let Some(given) = header.strip_prefix("Bearer ") else {
            return false;
        };
        let (a, b) = (given.as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The service, ready to add to a gRPC server: token check in front of the
/// implementation.
pub type AdminGrpc = InterceptedService<AdminServer<AdminService>, TokenCheck>;

/// Builds the service over `store`, guarded by `token`.
pub fn service(store: Store, token: AdminToken) -> AdminGrpc {
    AdminServer::with_interceptor(AdminService { store }, TokenCheck(token))
}

/// The gRPC name, for health reporting.
pub const SERVICE_NAME: &str = <AdminServer<AdminService> as tonic::server::NamedService>::NAME;

/// Refuses requests without the right bearer token.
#[derive(Clone, Debug)]
pub struct TokenCheck(AdminToken);

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let ok = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| self.0.accepts(v));
        if ok {
            Ok(request)
        } else {
            tracing::warn!(peer = ?request.remote_addr(), "admin call with a missing or wrong token");
            Err(Status::unauthenticated(
                "a valid admin bearer token is required",
            ))
        }
    }
}

/// The implementation over the store.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Store,
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::AlreadyExists(m) => Status::already_exists(m),
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::InvalidArgument(m) => Status::invalid_argument(m),
        StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        StoreError::Unavailable(m) => {
            tracing::error!(cause = %m, "admin: store unavailable");
            Status::unavailable("the store is unavailable; try again later")
        }
        StoreError::Full(m) => {
            tracing::error!(cause = %m, "admin: store out of space");
            Status::resource_exhausted("the store is out of space; try again later")
        }
        StoreError::Internal(m) => {
            tracing::error!(cause = %m, "admin: internal store error");
            Status::internal("internal error (see the server log)")
        }
    }
}

fn domain(s: &str) -> Result<Domain, Status> {
    Domain::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn address(s: &str) -> Result<Address, Status> {
    Address::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn optional_domain(s: &str) -> Result<Option<Domain>, Status> {
    if s.is_empty() {
        Ok(None)
    } else {
        domain(s).map(Some)
    }
}

fn account(a: mailroom_store::Account) -> pb::Account {
    pb::Account {
        address: a.address,
        quota_bytes: a.quota_bytes,
        used_bytes: a.used_bytes,
        disabled: a.disabled,
        created_at: a.created_at,
    }
}

fn domain_pb(d: mailroom_store::DomainEntry) -> pb::Domain {
    let unicode_name = Domain::parse(&d.name)
        .map(|p| p.to_unicode())
        .unwrap_or_else(|_| d.name.clone());
    pb::Domain {
        name: d.name,
        unicode_name,
        created_at: d.created_at,
        postmaster: d.postmaster.clone().unwrap_or_default(),
        postmaster_configured: d.postmaster.is_some(),
    }
}

/// `domain` as the API shows it, with where its postmaster@ goes.
async fn domain_with_postmaster(store: &Store, d: &Domain) -> Result<pb::Domain, Status> {
    let entry = store
        .list_domains()
        .await
        .map_err(status)?
        .into_iter()
        .find(|e| e.name == d.as_str())
        .ok_or_else(|| Status::not_found(format!("domain {d} is not served here")))?;
    let mut out = domain_pb(entry);
    match store.domain_postmaster(d).await.map_err(status)? {
        mailroom_store::Postmaster::Configured(a) => {
            out.postmaster = a;
            out.postmaster_configured = true;
        }
        mailroom_store::Postmaster::FirstAccount(a) => out.postmaster = a,
        mailroom_store::Postmaster::Nobody => {}
    }
    Ok(out)
}

fn alias_pb(a: mailroom_store::Alias) -> pb::Alias {
    pb::Alias {
        source: a.source,
        target: a.target,
        created_at: a.created_at,
    }
}

fn queue_entry_pb(e: mailroom_store::QueueEntry) -> pb::QueueEntry {
    pb::QueueEntry {
        id: e.id,
        sender: e.sender,
        size: e.size,
        created_at: e.created_at,
        expires_at: e.expires_at,
        recipients: e
            .recipients
            .into_iter()
            .map(|r| pb::QueueRecipient {
                address: r.address,
                state: r.state,
                attempts: r.attempts,
                next_attempt_at: r.next_attempt_at,
                last_response: r.last_response.unwrap_or_default(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_queue(
        &self,
        r: Request<pb::ListQueueRequest>,
    ) -> Result<Response<pb::ListQueueResponse>, Status> {
        let r = r.into_inner();
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let filter = mailroom_store::QueueFilter {
            state: non_empty(r.state),
            domain: optional_domain(&r.domain)?.map(|d| d.to_string()),
            sender: non_empty(r.sender),
            limit: i64::from(r.limit.min(10_000)),
        };
        let entries = self.store.list_queue(&filter).await.map_err(status)?;
        Ok(Response::new(pb::ListQueueResponse {
            entries: entries.into_iter().map(queue_entry_pb).collect(),
        }))
    }

    async fn show_queue_entry(
        &self,
        r: Request<pb::ShowQueueEntryRequest>,
    ) -> Result<Response<pb::QueueEntry>, Status> {
        let id = r.get_ref().id;
        match self.store.queue_entry(id).await.map_err(status)? {
            Some(e) => Ok(Response::new(queue_entry_pb(e))),
            None => Err(Status::not_found(format!("no queue entry {id}"))),
        }
    }

    async fn retry_queue_entry(
        &self,
        r: Request<pb::RetryQueueEntryRequest>,
    ) -> Result<Response<pb::RetryQueueEntryResponse>, Status> {
        let id = r.get_ref().id;
        let n = self.store.retry_queue_entry(id).await.map_err(status)?;
        tracing::info!(queue_id = id, recipients = n, "queue entry made due now");
        Ok(Response::new(pb::RetryQueueEntryResponse {
            recipients: u32::try_from(n).unwrap_or(u32::MAX),
        }))
    }

    async fn drop_queue_entry(
        &self,
        r: Request<pb::DropQueueEntryRequest>,
    ) -> Result<Response<pb::DropQueueEntryResponse>, Status> {
        let id = r.get_ref().id;
        self.store.drop_queue_entry(id).await.map_err(status)?;
        tracing::info!(queue_id = id, "queue entry dropped");
        Ok(Response::new(pb::DropQueueEntryResponse {}))
    }

    async fn queue_summary(
        &self,
        _: Request<pb::QueueSummaryRequest>,
    ) -> Result<Response<pb::QueueSummaryResponse>, Status> {
        let s = self.store.queue_summary().await.map_err(status)?;
        Ok(Response::new(pb::QueueSummaryResponse {
            entries: s.entries,
            pending: s.pending,
            deferred: s.deferred,
            delivered: s.delivered,
            failed: s.failed,
            oldest_created_at: s.oldest_created_at.unwrap_or(0),
        }))
    }

    async fn add_domain(
        &self,
        r: Request<pb::AddDomainRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        let d = domain(&r.get_ref().name)?;
        let entry = self.store.add_domain(&d).await.map_err(status)?;
        tracing::info!(domain = %d, "domain added");
        Ok(Response::new(domain_pb(entry)))
    }

    async fn set_domain_postmaster(
        &self,
        r: Request<pb::SetDomainPostmasterRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        let r = r.get_ref();
        let d = domain(&r.domain)?;
        let target = match r.address.trim() {
            "" => None,
            a => Some(address(a)?),
        };
        self.store
            .set_domain_postmaster(&d, target.as_ref())
            .await
            .map_err(status)?;
        tracing::info!(domain = %d, postmaster = ?target.as_ref().map(|t| t.to_string()), "postmaster set");
        Ok(Response::new(
            domain_with_postmaster(&self.store, &d).await?,
        ))
    }

    async fn get_domain(
        &self,
        r: Request<pb::GetDomainRequest>,
    ) -> Result<Response<pb::Domain>, Status> {
        let d = domain(&r.get_ref().name)?;
        Ok(Response::new(
            domain_with_postmaster(&self.store, &d).await?,
        ))
    }

    async fn list_domains(
        &self,
        _: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        let domains = self.store.list_domains().await.map_err(status)?;
        Ok(Response::new(pb::ListDomainsResponse {
            domains: domains.into_iter().map(domain_pb).collect(),
        }))
    }

    async fn delete_domain(
        &self,
        r: Request<pb::DeleteDomainRequest>,
    ) -> Result<Response<pb::DeleteDomainResponse>, Status> {
        let d = domain(&r.get_ref().name)?;
        self.store.delete_domain(&d).await.map_err(status)?;
        tracing::info!(domain = %d, "domain deleted");
        Ok(Response::new(pb::DeleteDomainResponse {}))
    }

    async fn create_account(
        &self,
        r: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let r = r.into_inner();
        let a = address(&r.address)?;
        let created = self
            .store
            .create_account(&a, &r.password, r.quota_bytes)
            .await
            .map_err(status)?;
        tracing::info!(account = %a, "account created");
        Ok(Response::new(account(created)))
    }

    async fn set_password(
        &self,
        r: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let r = r.into_inner();
        let a = address(&r.address)?;
        let updated = self
            .store
            .set_password(&a, &r.password)
            .await
            .map_err(status)?;
        tracing::info!(account = %a, "password changed");
        Ok(Response::new(account(updated)))
    }

    async fn set_quota(
        &self,
        r: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let r = r.into_inner();
        let a = address(&r.address)?;
        let updated = self
            .store
            .set_quota(&a, r.quota_bytes)
            .await
            .map_err(status)?;
        tracing::info!(account = %a, quota = r.quota_bytes, "quota set");
        Ok(Response::new(account(updated)))
    }

    async fn set_account_disabled(
        &self,
        r: Request<pb::SetAccountDisabledRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let r = r.into_inner();
        let a = address(&r.address)?;
        let updated = self
            .store
            .set_disabled(&a, r.disabled)
            .await
            .map_err(status)?;
        tracing::info!(account = %a, disabled = r.disabled, "account state changed");
        Ok(Response::new(account(updated)))
    }

    async fn list_accounts(
        &self,
        r: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let d = optional_domain(&r.get_ref().domain)?;
        let accounts = self.store.list_accounts(d.as_ref()).await.map_err(status)?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.into_iter().map(account).collect(),
        }))
    }

    async fn delete_account(
        &self,
        r: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        let a = address(&r.get_ref().address)?;
        self.store.delete_account(&a).await.map_err(status)?;
        tracing::info!(account = %a, "account deleted");
        Ok(Response::new(pb::DeleteAccountResponse {}))
    }

    async fn add_alias(
        &self,
        r: Request<pb::AddAliasRequest>,
    ) -> Result<Response<pb::Alias>, Status> {
        let r = r.into_inner();
        let source = AliasSource::parse(&r.source).map_err(status)?;
        let target = address(&r.target)?;
        let alias = self
            .store
            .add_alias(&source, &target)
            .await
            .map_err(status)?;
        tracing::info!(source = %alias.source, target = %alias.target, "alias added");
        Ok(Response::new(alias_pb(alias)))
    }

    async fn list_aliases(
        &self,
        r: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        let d = optional_domain(&r.get_ref().domain)?;
        let aliases = self.store.list_aliases(d.as_ref()).await.map_err(status)?;
        Ok(Response::new(pb::ListAliasesResponse {
            aliases: aliases.into_iter().map(alias_pb).collect(),
        }))
    }

    async fn delete_alias(
        &self,
        r: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let r = r.into_inner();
        let source = AliasSource::parse(&r.source).map_err(status)?;
        let target = address(&r.target)?;
        self.store
            .delete_alias(&source, &target)
            .await
            .map_err(status)?;
        tracing::info!(source = %source.key(), %target, "alias deleted");
        Ok(Response::new(pb::DeleteAliasResponse {}))
    }

    async fn generate_dkim_keys(
        &self,
        r: Request<pb::GenerateDkimKeysRequest>,
    ) -> Result<Response<pb::DkimKeys>, Status> {
        let r = r.into_inner();
        let d = domain(&r.domain)?;
        let taken: Vec<String> = self
            .store
            .dkim_keys(Some(&d))
            .await
            .map_err(status)?
            .into_iter()
            .map(|k| k.selector)
            .collect();
        use chrono::Datelike as _;
        let year = chrono::Utc::now().year();
        let (rsa_selector, ed_selector) = mailroom_sender_auth::keys::next_selectors(year, &taken)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{d} has used every selector of {year}; remove old keys first"
                ))
            })?;
        // RSA generation takes a while: off the async threads.
        let (rsa, ed) = tokio::task::spawn_blocking(|| {
            Ok::<_, String>((
                mailroom_sender_auth::keys::generate_rsa()?,
                mailroom_sender_auth::keys::generate_ed25519()?,
            ))
        })
        .await
        .map_err(|e| Status::internal(format!("key generation failed: {e}")))?
        .map_err(Status::internal)?;
        let mut keys = Vec::new();
        for (selector, key) in [(&rsa_selector, &rsa), (&ed_selector, &ed)] {
            let info = self
                .store
                .add_dkim_key(
                    &d,
                    selector,
                    key.algorithm,
                    &key.private_pem(),
                    &key.public_base64(),
                )
                .await
                .map_err(status)?;
            keys.push(dkim_key_pb(info));
        }
        if r.rotate {
            let retired = self
                .store
                .retire_dkim_keys(&d, &[rsa_selector.clone(), ed_selector.clone()])
                .await
                .map_err(status)?;
            tracing::info!(domain = %d, retired, "DKIM keys rotated");
        }
        tracing::info!(domain = %d, rsa = %rsa_selector, ed25519 = %ed_selector, "DKIM keys generated");
        Ok(Response::new(pb::DkimKeys { keys }))
    }

    async fn list_dkim_keys(
        &self,
        r: Request<pb::ListDkimKeysRequest>,
    ) -> Result<Response<pb::DkimKeys>, Status> {
        let d = optional_domain(&r.get_ref().domain)?;
        let keys = self.store.dkim_keys(d.as_ref()).await.map_err(status)?;
        Ok(Response::new(pb::DkimKeys {
            keys: keys.into_iter().map(dkim_key_pb).collect(),
        }))
    }

    async fn dns_records(
        &self,
        r: Request<pb::DnsRecordsRequest>,
    ) -> Result<Response<pb::DnsRecordsResponse>, Status> {
        let d = domain(&r.get_ref().domain)?;
        if !self.store.serves_domain(&d).await.map_err(status)? {
            return Err(Status::not_found(format!("domain {d} is not served here")));
        }
        let keys = self.store.dkim_keys(Some(&d)).await.map_err(status)?;
        Ok(Response::new(pb::DnsRecordsResponse {
            records: dns_records(d.as_str(), &keys),
        }))
    }

    async fn remove_dkim_key(
        &self,
        r: Request<pb::RemoveDkimKeyRequest>,
    ) -> Result<Response<pb::RemoveDkimKeyResponse>, Status> {
        let r = r.into_inner();
        let d = domain(&r.domain)?;
        self.store
            .remove_dkim_key(&d, &r.selector)
            .await
            .map_err(status)?;
        tracing::info!(domain = %d, selector = %r.selector, "DKIM key removed");
        Ok(Response::new(pb::RemoveDkimKeyResponse {}))
    }
}

fn dkim_key_pb(k: mailroom_store::DkimKeyInfo) -> pb::DkimKey {
    pb::DkimKey {
        domain: k.domain,
        selector: k.selector,
        algorithm: k.algorithm,
        public_key: k.public_key,
        created_at: k.created_at,
        active: k.active,
    }
}

/// What to publish for `domain`: one TXT record per DKIM key (retired keys
/// too, while they are listed: mail they signed may still be in flight),
/// and the suggested SPF (RFC 7208: only the domain's MX hosts send) and
/// DMARC (RFC 7489: quarantine what fails, aggregate reports to postmaster)
/// records.
pub fn dns_records(domain: &str, keys: &[mailroom_store::DkimKeyInfo]) -> Vec<pb::DnsRecord> {
    use mailroom_sender_auth::keys::{dkim_record, record_name, zone_line};
    let record = |name: String, value: String, purpose: String| pb::DnsRecord {
        zone_line: zone_line(&name, &value),
        name,
        r#type: "TXT".into(),
        value,
        purpose,
    };
    let mut out: Vec<pb::DnsRecord> = keys
        .iter()
        .map(|k| {
            record(
                record_name(&k.selector, domain),
                dkim_record(&k.algorithm, &k.public_key),
                format!(
                    "DKIM key {} ({}, {})",
                    k.selector,
                    k.algorithm,
                    if k.active { "signing" } else { "retired" }
                ),
            )
        })
        .collect();
    out.push(record(
        domain.to_string(),
        "v=spf1 mx -all".into(),
        "SPF (suggested): only the domain's MX hosts send its mail".into(),
    ));
    out.push(record(
        format!("_dmarc.{domain}"),
        format!("v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"),
        "DMARC (suggested): failing mail to Junk, aggregate reports to postmaster".into(),
    ));
    out
}
