//! Domains, accounts and aliases: who receives mail here.
//!
//! Addresses and domains are stored in the canonical form of
//! `mailroom-address` (A-labels, lower case), so lookups are plain equality.
//! Creating an account creates its standard mailboxes in the same
//! transaction: an account never exists without its INBOX.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use mailroom_address::{Address, Domain};
use mailroom_sasl::ScramCredentials;
use sqlx::Row;

use crate::{Result, Store, StoreError, now, on_backend, write_tx};

/// The mailboxes every account gets, with their RFC 6154 SPECIAL-USE attribute.
pub const SPECIAL_MAILBOXES: &[(&str, Option<&str>)] = &[
    ("INBOX", None),
    ("Sent", Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Junk", Some("\\Junk")),
    ("Trash", Some("\\Trash")),
    ("Archive", Some("\\Archive")),
];

/// How long a positive [`Store::serves_domain`] answer is remembered.
pub const SERVED_DOMAIN_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Shortest password an account may have.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted (hashing cost must stay bounded).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A domain this server receives mail for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEntry {
    /// Row id.
    pub id: i64,
    /// Canonical (A-label) name.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The configured postmaster: where `postmaster@` goes when no alias
    /// covers it. `None`: the domain's first account.
    pub postmaster: Option<String>,
}

/// Where `postmaster@<domain>` goes when no alias or catch-all covers it
/// (RFC 5321 §4.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Postmaster {
    /// The address configured for the domain.
    Configured(String),
    /// Nothing configured: the domain's first account (the oldest one).
    FirstAccount(String),
    /// Nothing configured and no account yet: `postmaster@` is refused.
    Nobody,
}

/// A mail account (a login and its mailboxes). The password hash never
/// leaves the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Row id.
    pub id: i64,
    /// Canonical `local@domain`.
    pub address: String,
    /// Storage allowed, in bytes; 0 is unlimited.
    pub quota_bytes: u64,
    /// Storage used by the account's messages, in bytes.
    pub used_bytes: u64,
    /// A disabled account cannot log in and receives no mail.
    pub disabled: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// Where an alias applies: one address, or every unknown address of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasSource {
    /// `local@domain`.
    Address(Address),
    /// `@domain`: the catch-all for addresses with no account or alias.
    CatchAll(Domain),
}

impl AliasSource {
    /// Parses `local@domain` or `@domain`.
    pub fn parse(input: &str) -> Result<AliasSource> {
        let invalid =
            |e: mailroom_address::AddressError| StoreError::InvalidArgument(e.to_string());
        match input.strip_prefix('@') {
            Some(domain) => Ok(AliasSource::CatchAll(
                Domain::parse(domain).map_err(invalid)?,
            )),
            None => Ok(AliasSource::Address(
                Address::parse(input).map_err(invalid)?,
            )),
        }
    }

    /// The domain the alias belongs to.
    pub fn domain(&self) -> &Domain {
        match self {
            AliasSource::Address(a) => a.domain(),
            AliasSource::CatchAll(d) => d,
        }
    }

    /// The stored form.
    pub fn key(&self) -> String {
        match self {
            AliasSource::Address(a) => a.to_string(),
            AliasSource::CatchAll(d) => format!("@{d}"),
        }
    }
}

/// An alias: mail for `source` goes to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// Row id.
    pub id: i64,
    /// `local@domain` or `@domain`.
    pub source: String,
    /// Any address, local or remote.
    pub target: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A mailbox (folder) of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Row id.
    pub id: i64,
    /// Owning account.
    pub account_id: i64,
    /// Full name, `/`-delimited.
    pub name: String,
    /// RFC 6154 attribute (`\Sent`, …).
    pub special_use: Option<String>,
    /// Whether it is subscribed.
    pub subscribed: bool,
    /// IMAP UIDVALIDITY.
    pub uidvalidity: u32,
    /// IMAP UIDNEXT.
    pub uidnext: u32,
    /// CONDSTORE HIGHESTMODSEQ.
    pub highestmodseq: u64,
}

const ACCOUNT_COLUMNS: &str = "id, address, quota_bytes, used_bytes, disabled, created_at";

macro_rules! account_from_row {
    ($row:expr) => {{
        let row = &$row;
        Account {
            id: row.try_get("id")?,
            address: row.try_get("address")?,
            quota_bytes: row.try_get::<i64, _>("quota_bytes")?.max(0) as u64,
            used_bytes: row.try_get::<i64, _>("used_bytes")?.max(0) as u64,
            disabled: row.try_get("disabled")?,
            created_at: row.try_get("created_at")?,
        }
    }};
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(StoreError::InvalidArgument(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "the password must not be longer than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    if password.contains(['\0', '\r', '\n']) {
        return Err(StoreError::InvalidArgument(
            "the password must not contain NUL, CR or LF (SASL cannot carry them)".into(),
        ));
    }
    Ok(())
}

/// The stored forms of a password: an argon2id hash (for PLAIN, LOGIN,
/// IMAP LOGIN, POP3 PASS) and SCRAM-SHA-256 keys (for SCRAM, which needs
/// them and cannot work from an argon2 hash).
struct PasswordForms {
    argon2: String,
    scram: String,
}

/// Derives both forms off the async threads.
/// Password hashes computed at once, process-wide. Each argon2id run takes
/// 19 MiB and a core for tens of milliseconds; unbounded, a burst of logins
/// (10,000 IMAP clients reconnecting) would spread those buffers over as
/// many blocking threads, each of whose allocator arenas keeps its peak, and
/// the process would grow by gigabytes. Logins beyond the slots wait here.
static ARGON2_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn hash_password(password: &str) -> Result<PasswordForms> {
    check_password(password)?;
    let password = password.to_owned();
    let _permit = ARGON2_SLOTS.acquire().await;
    tokio::task::spawn_blocking(move || {
        let argon2 = Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| StoreError::Internal(format!("password hashing failed: {e}")))?;
        let scram = ScramCredentials::derive(&password)
            .map_err(|e| StoreError::InvalidArgument(format!("the password cannot be used: {e}")))?
            .to_string();
        Ok(PasswordForms { argon2, scram })
    })
    .await
    .map_err(|e| StoreError::Internal(e.to_string()))?
}

fn quota_i64(quota_bytes: u64) -> Result<i64> {
    i64::try_from(quota_bytes)
        .map_err(|_| StoreError::InvalidArgument("the quota is too large".into()))
}

fn not_served(domain: &Domain) -> StoreError {
    StoreError::NotFound(format!("domain {domain} is not served here; add it first"))
}

fn no_account(address: &Address) -> StoreError {
    StoreError::NotFound(format!("no account {address}"))
}

impl Store {
    /// Adds a domain to those served here.
    pub async fn add_domain(&self, domain: &Domain) -> Result<DomainEntry> {
        let created_at = now();
        let id: i64 = on_backend!(self, |pool| {
            sqlx::query("INSERT INTO domains (name, created_at) VALUES ($1, $2) RETURNING id")
                .bind(domain.as_str())
                .bind(created_at)
                .fetch_one(pool)
                .await
                .map_err(|e| match StoreError::from(e) {
                    StoreError::AlreadyExists(_) => {
                        StoreError::AlreadyExists(format!("domain {domain} exists already"))
                    }
                    other => other,
                })?
                .try_get("id")?
        });
        Ok(DomainEntry {
            id,
            name: domain.to_string(),
            created_at,
            postmaster: None,
        })
    }

    /// Every served domain, by name.
    pub async fn list_domains(&self) -> Result<Vec<DomainEntry>> {
        Ok(on_backend!(self, |pool| {
            let rows =
                sqlx::query("SELECT id, name, created_at, postmaster FROM domains ORDER BY name")
                    .fetch_all(pool)
                    .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(DomainEntry {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    created_at: row.try_get("created_at")?,
                    postmaster: row.try_get("postmaster")?,
                });
            }
            out
        }))
    }

    /// Sets where `postmaster@<domain>` goes when no alias or catch-all
    /// covers it; `None` returns to the default, the domain's first account.
    /// The target may be any address but the postmaster itself (a local one
    /// is resolved at delivery, like an alias target).
    pub async fn set_domain_postmaster(
        &self,
        domain: &Domain,
        target: Option<&Address>,
    ) -> Result<Postmaster> {
        if let Some(t) = target
            && t.domain() == domain
            && t.local_part().eq_ignore_ascii_case("postmaster")
        {
            return Err(StoreError::InvalidArgument(format!(
                "the postmaster of {domain} cannot be {t} itself"
            )));
        }
        let updated = on_backend!(self, |pool| {
            sqlx::query("UPDATE domains SET postmaster = $1 WHERE name = $2")
                .bind(target.map(|t| t.to_string()))
                .bind(domain.as_str())
                .execute(pool)
                .await?
                .rows_affected()
        });
        if updated == 0 {
            return Err(not_served(domain));
        }
        self.domain_postmaster(domain).await
    }

    /// Where `postmaster@<domain>` goes when no alias or catch-all covers it.
    pub async fn domain_postmaster(&self, domain: &Domain) -> Result<Postmaster> {
        let row = on_backend!(self, |pool| {
            let row = sqlx::query(
                "SELECT d.postmaster,
                        (SELECT a.address FROM accounts a WHERE a.domain_id = d.id
                          ORDER BY a.id LIMIT 1) AS first_account
                   FROM domains d WHERE d.name = $1",
            )
            .bind(domain.as_str())
            .fetch_optional(pool)
            .await?;
            match row {
                Some(row) => Some((
                    row.try_get::<Option<String>, _>("postmaster")?,
                    row.try_get::<Option<String>, _>("first_account")?,
                )),
                None => None,
            }
        });
        Ok(match row {
            None => return Err(not_served(domain)),
            Some((Some(configured), _)) => Postmaster::Configured(configured),
            Some((None, Some(first))) => Postmaster::FirstAccount(first),
            Some((None, None)) => Postmaster::Nobody,
        })
    }

    /// Whether mail for `domain` is received here.
    ///
    /// Every RCPT and every delivery asks, so a positive answer is remembered
    /// for [`SERVED_DOMAIN_TTL`]: a domain deleted by another process (the
    /// Admin service running apart) may still be accepted for that long, and
    /// its mail then bounces as "no such user" at delivery. A negative answer
    /// is never remembered, so a domain added anywhere is served at once.
    /// This process's own `delete_domain` forgets the domain immediately.
    pub async fn serves_domain(&self, domain: &Domain) -> Result<bool> {
        if let Ok(cache) = self.served_domains().lock()
            && cache
                .get(domain.as_str())
                .is_some_and(|at| at.elapsed() < SERVED_DOMAIN_TTL)
        {
            return Ok(true);
        }
        let served = on_backend!(self, |pool| {
            sqlx::query("SELECT 1 FROM domains WHERE name = $1")
                .bind(domain.as_str())
                .fetch_optional(pool)
                .await?
                .is_some()
        });
        if served && let Ok(mut cache) = self.served_domains().lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(domain.as_str().to_string(), std::time::Instant::now());
        }
        Ok(served)
    }

    /// Removes a domain that has no accounts and no aliases left.
    pub async fn delete_domain(&self, domain: &Domain) -> Result<()> {
        write_tx!(self, |tx| {
            let row = sqlx::query("SELECT id FROM domains WHERE name = $1")
                .bind(domain.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    StoreError::NotFound(format!("domain {domain} is not served here"))
                })?;
            let id: i64 = row.try_get("id")?;
            let accounts: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM accounts WHERE domain_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            let aliases: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM aliases WHERE domain_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            if accounts > 0 || aliases > 0 {
                return Err(StoreError::FailedPrecondition(format!(
                    "domain {domain} still has {accounts} account(s) and {aliases} alias(es); delete them first"
                )));
            }
            sqlx::query("DELETE FROM domains WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        });
        if let Ok(mut cache) = self.served_domains().lock() {
            cache.remove(domain.as_str());
        }
        Ok(())
    }

    /// Creates an account with its standard mailboxes, in one transaction.
    pub async fn create_account(
        &self,
        address: &Address,
        password: &str,
        quota_bytes: u64,
    ) -> Result<Account> {
        let hash = hash_password(password).await?;
        let quota = quota_i64(quota_bytes)?;
        let created_at = now();
        let account = write_tx!(self, |tx| {
            let domain_id: i64 = sqlx::query("SELECT id FROM domains WHERE name = $1")
                .bind(address.domain().as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| not_served(address.domain()))?
                .try_get("id")?;
            let row = sqlx::query(
                "INSERT INTO accounts (domain_id, address, password_hash, scram_sha256, quota_bytes, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 RETURNING id, address, quota_bytes, used_bytes, disabled, created_at",
            )
            .bind(domain_id)
            .bind(address.to_string())
            .bind(&hash.argon2)
            .bind(&hash.scram)
            .bind(quota)
            .bind(created_at)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::AlreadyExists(_) => {
                    StoreError::AlreadyExists(format!("account {address} exists already"))
                }
                other => other,
            })?;
            let account = account_from_row!(row);
            for (name, special_use) in SPECIAL_MAILBOXES {
                sqlx::query(
                    "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(account.id)
                .bind(*name)
                .bind(*special_use)
                .bind(new_uidvalidity())
                .bind(created_at)
                .execute(&mut *tx)
                .await?;
            }
            account
        });
        Ok(account)
    }

    /// The account with this address, if any.
    pub async fn get_account(&self, address: &Address) -> Result<Option<Account>> {
        Ok(on_backend!(self, |pool| {
            match sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE address = $1"
            )))
            .bind(address.to_string())
            .fetch_optional(pool)
            .await?
            {
                Some(row) => Some(account_from_row!(row)),
                None => None,
            }
        }))
    }

    /// Accounts, all or one domain's, by address.
    pub async fn list_accounts(&self, domain: Option<&Domain>) -> Result<Vec<Account>> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts
             WHERE $1 = '' OR domain_id = (SELECT id FROM domains WHERE name = $1)
             ORDER BY address"
        );
        Ok(on_backend!(self, |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(domain.map(|d| d.as_str()).unwrap_or(""))
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(account_from_row!(row));
            }
            out
        }))
    }

    /// Replaces an account's password.
    pub async fn set_password(&self, address: &Address, password: &str) -> Result<Account> {
        let hash = hash_password(password).await?;
        // Both forms in one statement: they must never disagree.
        let sql = format!(
            "UPDATE accounts SET password_hash = $1, scram_sha256 = $2 WHERE address = $3 RETURNING {ACCOUNT_COLUMNS}"
        );
        let row = on_backend!(self, |pool| {
            match sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&hash.argon2)
                .bind(&hash.scram)
                .bind(address.to_string())
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(account_from_row!(row)),
                None => None,
            }
        });
        row.ok_or_else(|| no_account(address))
    }

    /// Answers a SASL exchange's credential request (password check for
    /// PLAIN/LOGIN, stored keys for SCRAM) and returns the exchange's next
    /// step. Shared by every protocol that speaks SASL, so they cannot
    /// disagree on who may log in. An authcid that is not an address is
    /// treated like an unknown user.
    pub async fn answer_sasl(
        &self,
        exchange: &mut mailroom_sasl::ServerExchange,
        request: mailroom_sasl::CredentialRequest,
    ) -> Result<mailroom_sasl::Step> {
        use mailroom_sasl::CredentialRequest;
        Ok(match request {
            CredentialRequest::Password {
                authcid, password, ..
            } => {
                let ok = match Address::parse(&authcid) {
                    Ok(address) => self.verify_password(&address, &password).await?.is_some(),
                    Err(_) => false,
                };
                exchange.password_checked(ok)
            }
            CredentialRequest::Scram { authcid, .. } => {
                let credentials = match Address::parse(&authcid) {
                    Ok(address) => self.scram_credentials(&address).await?,
                    Err(_) => None,
                };
                exchange.provide_scram(credentials)
            }
        })
    }

    /// The SCRAM-SHA-256 keys of an enabled account, for SASL SCRAM. `None`
    /// for unknown and disabled accounts alike.
    pub async fn scram_credentials(&self, address: &Address) -> Result<Option<ScramCredentials>> {
        let text: Option<String> = on_backend!(self, |pool| {
            match sqlx::query(
                "SELECT scram_sha256 FROM accounts WHERE address = $1 AND NOT disabled",
            )
            .bind(address.to_string())
            .fetch_optional(pool)
            .await?
            {
                Some(row) => row.try_get("scram_sha256")?,
                None => None,
            }
        });
        Ok(text.and_then(|t| t.parse().ok()))
    }

    /// Sets an account's quota in bytes (0: unlimited).
    pub async fn set_quota(&self, address: &Address, quota_bytes: u64) -> Result<Account> {
        let quota = quota_i64(quota_bytes)?;
        self.update_account(address, "quota_bytes", UpdateValue::Int(quota))
            .await
    }

    /// Disables (or re-enables) an account.
    pub async fn set_disabled(&self, address: &Address, disabled: bool) -> Result<Account> {
        self.update_account(address, "disabled", UpdateValue::Bool(disabled))
            .await
    }

    async fn update_account(
        &self,
        address: &Address,
        column: &'static str,
        value: UpdateValue,
    ) -> Result<Account> {
        let sql = format!(
            "UPDATE accounts SET {column} = $1 WHERE address = $2 RETURNING {ACCOUNT_COLUMNS}"
        );
        let row = on_backend!(self, |pool| {
            let query = sqlx::query(sqlx::AssertSqlSafe(sql));
            let query = match &value {
                UpdateValue::Int(i) => query.bind(*i),
                UpdateValue::Bool(b) => query.bind(*b),
            };
            match query.bind(address.to_string()).fetch_optional(pool).await? {
                Some(row) => Some(account_from_row!(row)),
                None => None,
            }
        });
        row.ok_or_else(|| no_account(address))
    }

    /// Deletes an account with its mailboxes and messages.
    pub async fn delete_account(&self, address: &Address) -> Result<()> {
        let deleted: Option<i64> = on_backend!(self, |pool| {
            sqlx::query_scalar("DELETE FROM accounts WHERE address = $1 RETURNING id")
                .bind(address.to_string())
                .fetch_optional(pool)
                .await?
        });
        let Some(account_id) = deleted else {
            return Err(no_account(address));
        };
        // Its mailboxes went with it: sessions must not go on from what
        // their process knew of them.
        self.notify_structural(&crate::MailboxEvent {
            account_id,
            mailbox_id: 0,
            uid: 0,
            modseq: 0,
        });
        Ok(())
    }

    /// Checks a login. `None` for an unknown address, a wrong password or a
    /// disabled account alike, so that callers cannot leak which it was.
    pub async fn verify_password(
        &self,
        address: &Address,
        password: &str,
    ) -> Result<Option<Account>> {
        let found = on_backend!(self, |pool| {
            match sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ACCOUNT_COLUMNS}, password_hash FROM accounts WHERE address = $1"
            )))
            .bind(address.to_string())
            .fetch_optional(pool)
            .await?
            {
                Some(row) => Some((
                    account_from_row!(row),
                    row.try_get::<String, _>("password_hash")?,
                )),
                None => None,
            }
        });
        let Some((account, hash)) = found else {
            return Ok(None);
        };
        let password = password.to_owned();
        let _permit = ARGON2_SLOTS.acquire().await;
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok((ok && !account.disabled).then_some(account))
    }

    /// Whether the account `account` (canonical address) may use `candidate`
    /// as its sender: its own address, a `+tag` form of it, or the source of
    /// an alias that points to it.
    pub async fn may_send_as(&self, account: &str, candidate: &Address) -> Result<bool> {
        let exact = candidate.to_string();
        if exact == account {
            return Ok(true);
        }
        let base = match candidate.split_plus() {
            (base, Some(_)) => format!("{base}@{}", candidate.domain()),
            _ => exact.clone(),
        };
        if base == account {
            return Ok(true);
        }
        Ok(on_backend!(self, |pool| {
            sqlx::query("SELECT 1 FROM aliases WHERE source IN ($1, $2) AND target = $3")
                .bind(&exact)
                .bind(&base)
                .bind(account)
                .fetch_optional(pool)
                .await?
                .is_some()
        }))
    }

    /// Adds an alias. The source's domain must be served here.
    pub async fn add_alias(&self, source: &AliasSource, target: &Address) -> Result<Alias> {
        let created_at = now();
        let key = source.key();
        if let AliasSource::Address(a) = source
            && a == target
        {
            return Err(StoreError::InvalidArgument(format!(
                "alias {a} would point to itself"
            )));
        }
        let id: i64 = write_tx!(self, |tx| {
            let domain_id: i64 = sqlx::query("SELECT id FROM domains WHERE name = $1")
                .bind(source.domain().as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| not_served(source.domain()))?
                .try_get("id")?;
            sqlx::query(
                "INSERT INTO aliases (domain_id, source, target, created_at) VALUES ($1, $2, $3, $4)
                 RETURNING id",
            )
            .bind(domain_id)
            .bind(&key)
            .bind(target.to_string())
            .bind(created_at)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::AlreadyExists(_) => {
                    StoreError::AlreadyExists(format!("alias {key} → {target} exists already"))
                }
                other => other,
            })?
            .try_get("id")?
        });
        Ok(Alias {
            id,
            source: key,
            target: target.to_string(),
            created_at,
        })
    }

    /// Aliases, all or one domain's, by source then target.
    pub async fn list_aliases(&self, domain: Option<&Domain>) -> Result<Vec<Alias>> {
        Ok(on_backend!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, source, target, created_at FROM aliases
                 WHERE $1 = '' OR domain_id = (SELECT id FROM domains WHERE name = $1)
                 ORDER BY source, target",
            )
            .bind(domain.map(|d| d.as_str()).unwrap_or(""))
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(Alias {
                    id: row.try_get("id")?,
                    source: row.try_get("source")?,
                    target: row.try_get("target")?,
                    created_at: row.try_get("created_at")?,
                });
            }
            out
        }))
    }

    /// Removes one alias.
    pub async fn delete_alias(&self, source: &AliasSource, target: &Address) -> Result<()> {
        let deleted = on_backend!(self, |pool| {
            sqlx::query("DELETE FROM aliases WHERE source = $1 AND target = $2")
                .bind(source.key())
                .bind(target.to_string())
                .execute(pool)
                .await?
                .rows_affected()
        });
        if deleted == 0 {
            return Err(StoreError::NotFound(format!(
                "no alias {} → {target}",
                source.key()
            )));
        }
        Ok(())
    }

    /// An account's mailboxes, by name.
    pub async fn list_mailboxes(&self, account_id: i64) -> Result<Vec<Mailbox>> {
        Ok(on_backend!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, account_id, name, special_use, subscribed, uidvalidity, uidnext, highestmodseq
                 FROM mailboxes WHERE account_id = $1 ORDER BY name",
            )
            .bind(account_id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(Mailbox {
                    id: row.try_get("id")?,
                    account_id: row.try_get("account_id")?,
                    name: row.try_get("name")?,
                    special_use: row.try_get("special_use")?,
                    subscribed: row.try_get("subscribed")?,
                    uidvalidity: row.try_get::<i64, _>("uidvalidity")? as u32,
                    uidnext: row.try_get::<i64, _>("uidnext")? as u32,
                    highestmodseq: row.try_get::<i64, _>("highestmodseq")? as u64,
                });
            }
            out
        }))
    }
}

/// A value for [`Store::update_account`].
enum UpdateValue {
    Int(i64),
    Bool(bool),
}

/// A fresh UIDVALIDITY: random, non-zero, 31 bits (so it also fits clients
/// that keep it in a signed 32-bit integer). A mailbox deleted and created
/// again gets a new one, as RFC 9051 §2.3.1.1 requires.
fn new_uidvalidity() -> i64 {
    i64::from(rand::random_range(1..=i32::MAX as u32))
}
