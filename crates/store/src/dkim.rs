//! DKIM signing keys per domain (RFC 6376 §3.6.1; Ed25519 per RFC 8463).
//!
//! Invariants:
//! * a key belongs to a served domain and goes when the domain goes
//!   (`ON DELETE CASCADE`);
//! * the private key is read only by [`Store::dkim_signing_keys`], for the
//!   signer; listings ([`Store::dkim_keys`]) never carry it, so the Admin API
//!   cannot return it after creation;
//! * a retired key (`active` false) no longer signs but stays listed, so its
//!   DNS record can stay published while mail it signed is still in flight.
//!
//! The table is `dkim_keys` of the initial schema: the private key as
//! PKCS#8 PEM, the public key as the base64 text of the record's `p=`.

use mailroom_address::Domain;
use sqlx::Row;

use crate::{Result, Store, StoreError, on_backend};

/// A DKIM key as listed: everything but the private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKeyInfo {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`); the record lives at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// `rsa-sha256` or `ed25519-sha256` (the `a=` tag).
    pub algorithm: String,
    /// The record's `p=` value: base64 of SubjectPublicKeyInfo DER (RSA) or
    /// of the raw key (Ed25519).
    pub public_key: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Whether it signs (false once retired by a rotation).
    pub active: bool,
}

/// A key to sign with.
#[derive(Clone, PartialEq, Eq)]
pub struct DkimSigningKey {
    /// Its public description.
    pub info: DkimKeyInfo,
    /// PKCS#8 PEM.
    pub private_key: String,
}

impl std::fmt::Debug for DkimSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key, not even in a debug log.
        f.debug_struct("DkimSigningKey")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

macro_rules! key_info {
    ($row:expr) => {
        DkimKeyInfo {
            domain: $row.try_get("domain")?,
            selector: $row.try_get("selector")?,
            algorithm: $row.try_get("algorithm")?,
            public_key: $row.try_get("public_key")?,
            created_at: $row.try_get("created_at")?,
            active: $row.try_get("active")?,
        }
    };
}

impl Store {
    /// Stores a new key for a served domain; the selector must be new there.
    pub async fn add_dkim_key(
        &self,
        domain: &Domain,
        selector: &str,
        algorithm: &str,
        private_key_pem: &str,
        public_key: &str,
    ) -> Result<DkimKeyInfo> {
        let created_at = now();
        on_backend!(self, |pool| {
            let done = sqlx::query(
                "INSERT INTO dkim_keys (domain_id, selector, algorithm, private_key, public_key, created_at)
                 SELECT id, $2, $3, $4, $5, $6 FROM domains WHERE name = $1",
            )
            .bind(domain.as_str())
            .bind(selector)
            .bind(algorithm)
            .bind(private_key_pem)
            .bind(public_key)
            .bind(created_at)
            .execute(pool)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::AlreadyExists(_) => StoreError::AlreadyExists(format!(
                    "domain {domain} has a DKIM key with selector {selector} already"
                )),
                other => other,
            })?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!(
                    "domain {domain} is not served here"
                )));
            }
        });
        Ok(DkimKeyInfo {
            domain: domain.to_string(),
            selector: selector.to_string(),
            algorithm: algorithm.to_string(),
            public_key: public_key.to_string(),
            created_at,
            active: true,
        })
    }

    /// The keys of `domain` (every domain's when `None`), without private keys.
    pub async fn dkim_keys(&self, domain: Option<&Domain>) -> Result<Vec<DkimKeyInfo>> {
        Ok(on_backend!(self, |pool| {
            let rows = sqlx::query(
                "SELECT d.name AS domain, k.selector, k.algorithm, k.public_key, k.created_at, k.active
                 FROM dkim_keys k JOIN domains d ON d.id = k.domain_id
                 WHERE $1 IS NULL OR d.name = $1
                 ORDER BY d.name, k.created_at, k.selector",
            )
            .bind(domain.map(|d| d.as_str()))
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(key_info!(row));
            }
            out
        }))
    }

    /// The keys that sign mail from `domain` now (not retired), with their
    /// private keys.
    pub async fn dkim_signing_keys(&self, domain: &Domain) -> Result<Vec<DkimSigningKey>> {
        Ok(on_backend!(self, |pool| {
            let rows = sqlx::query(
                "SELECT d.name AS domain, k.selector, k.algorithm, k.public_key, k.created_at, k.active,
                        k.private_key
                 FROM dkim_keys k JOIN domains d ON d.id = k.domain_id
                 WHERE d.name = $1 AND k.active
                 ORDER BY k.algorithm DESC, k.selector",
            )
            .bind(domain.as_str())
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(DkimSigningKey {
                    info: key_info!(row),
                    private_key: row.try_get("private_key")?,
                });
            }
            out
        }))
    }

    /// Stops the active keys of `domain` other than `keep` from signing
    /// (rotation): they stay listed until removed. Returns how many.
    pub async fn retire_dkim_keys(&self, domain: &Domain, keep: &[String]) -> Result<u64> {
        let keys = self.dkim_keys(Some(domain)).await?;
        let mut retired = 0;
        for key in keys
            .iter()
            .filter(|k| k.active && !keep.contains(&k.selector))
        {
            retired += on_backend!(self, |pool| {
                sqlx::query(
                    "UPDATE dkim_keys SET active = FALSE
                     WHERE selector = $2 AND domain_id = (SELECT id FROM domains WHERE name = $1)",
                )
                .bind(domain.as_str())
                .bind(&key.selector)
                .execute(pool)
                .await?
                .rows_affected()
            });
        }
        Ok(retired)
    }

    /// Removes one key; `NotFound` when there is none by that selector.
    pub async fn remove_dkim_key(&self, domain: &Domain, selector: &str) -> Result<()> {
        let removed = on_backend!(self, |pool| {
            sqlx::query(
                "DELETE FROM dkim_keys
                 WHERE selector = $2 AND domain_id = (SELECT id FROM domains WHERE name = $1)",
            )
            .bind(domain.as_str())
            .bind(selector)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if removed == 0 {
            return Err(StoreError::NotFound(format!(
                "domain {domain} has no DKIM key with selector {selector}"
            )));
        }
        Ok(())
    }
}
