//! The admin commands (`domain`, `user`, `alias`, `queue`, `dkim`): a gRPC
//! client of Admin.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use mailroom_config::Config;
use mailroom_rpc::admin as pb;
use mailroom_rpc::admin::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::cli::{
    AdminTarget, AliasCommand, Command, DkimCommand, DomainCommand, PasswordInput, QueueCommand,
    UserCommand,
};

/// Adds the bearer token and the trace context to every call.
#[derive(Clone)]
struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        mailroom_telemetry::inject(request.metadata_mut());
        Ok(request)
    }
}

type Client = AdminClient<InterceptedService<Channel, Auth>>;

async fn connect(target: &AdminTarget, config: &Config) -> anyhow::Result<Client> {
    let url = match &target.admin_url {
        Some(u) => u.clone(),
        None => {
            let mut addr = config.admin.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let token = match std::env::var("MAILROOM_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let file: PathBuf = target
                .token_file
                .clone()
                .unwrap_or_else(|| config.admin_token_file());
            std::fs::read_to_string(&file)
                .with_context(|| {
                    format!(
                        "cannot read the admin token from {} (set --token-file, MAILROOM_ADMIN_TOKEN, or --data-dir)",
                        file.display()
                    )
                })?
                .trim()
                .to_string()
        }
    };
    let header = MetadataValue::try_from(format!("Bearer {token}"))
        .context("the admin token is not printable ASCII")?;
    let channel = Endpoint::from_shared(url.clone())
        .with_context(|| format!("bad admin URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| {
            format!("cannot reach the admin service at {url} (is `mailroom serve` running?)")
        })?;
    Ok(AdminClient::with_interceptor(channel, Auth(header)))
}

/// Turns a gRPC error into a message for the terminal.
fn failed(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

/// Parses a quota: bytes, or a number with K/M/G/T (binary units, optional `B`/`iB`).
pub fn parse_quota(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(0);
    }
    let upper = t.to_ascii_uppercase();
    let stripped = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (number, shift) = match stripped.chars().last() {
        Some('K') => (&stripped[..stripped.len() - 1], 10),
        Some('M') => (&stripped[..stripped.len() - 1], 20),
        Some('G') => (&stripped[..stripped.len() - 1], 30),
        Some('T') => (&stripped[..stripped.len() - 1], 40),
        _ => (stripped, 0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .with_context(|| format!("{text:?} is not a quota (examples: 0, 500M, 2G, 1.5T)"))?;
    let bytes = value * (1u64 << shift) as f64;
    anyhow::ensure!(bytes < 9.2e18, "{text:?} is too large");
    Ok(bytes.round() as u64)
}

/// Shows a size in binary units.
pub fn show_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn show_account(a: &pb::Account) -> String {
    let quota = if a.quota_bytes == 0 {
        "unlimited".to_string()
    } else {
        show_size(a.quota_bytes)
    };
    format!(
        "{:<40} {:>12} {:>12} {}",
        a.address,
        quota,
        show_size(a.used_bytes),
        if a.disabled { "disabled" } else { "active" }
    )
}

/// Runs one admin command.
pub async fn run(
    cmd: &Command,
    target: &AdminTarget,
    config: &Config,
    passwords: &mut PasswordInput<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // Ask for the password before connecting, so a prompt is never left
    // waiting on a connection error.
    let password = match cmd {
        Command::User(UserCommand::Add { address, .. } | UserCommand::Passwd { address, .. }) => {
            Some(passwords.read(address)?)
        }
        _ => None,
    };
    let password = password.unwrap_or_default();
    let mut client = connect(target, config).await?;
    match cmd {
        Command::Domain(DomainCommand::Add { name, .. }) => {
            let d = client
                .add_domain(pb::AddDomainRequest { name: name.clone() })
                .await
                .map_err(failed)?
                .into_inner();
            writeln!(out, "domain {} added", d.name)?;
            writeln!(
                out,
                "postmaster@{0} goes to the first account created in it \
                 (another address: mailroom domain postmaster {0} <address>)",
                d.name
            )?;
        }
        Command::Domain(DomainCommand::Postmaster {
            name,
            address,
            default,
        }) => {
            let d = if address.is_some() || *default {
                client
                    .set_domain_postmaster(pb::SetDomainPostmasterRequest {
                        domain: name.clone(),
                        address: address.clone().unwrap_or_default(),
                    })
                    .await
            } else {
                client
                    .get_domain(pb::GetDomainRequest { name: name.clone() })
                    .await
            }
            .map_err(failed)?
            .into_inner();
            let whose = if d.postmaster_configured {
                "configured"
            } else {
                "the first account"
            };
            if d.postmaster.is_empty() {
                writeln!(
                    out,
                    "postmaster@{} goes nowhere yet: no account in the domain and no address set",
                    d.name
                )?;
            } else {
                writeln!(
                    out,
                    "postmaster@{} goes to {} ({whose}) unless an alias covers it",
                    d.name, d.postmaster
                )?;
            }
        }
        Command::Domain(DomainCommand::List) => {
            let list = client
                .list_domains(pb::ListDomainsRequest {})
                .await
                .map_err(failed)?
                .into_inner();
            for d in list.domains {
                if d.unicode_name != d.name {
                    writeln!(out, "{} ({})", d.name, d.unicode_name)?;
                } else {
                    writeln!(out, "{}", d.name)?;
                }
            }
        }
        Command::Domain(DomainCommand::Delete { name, .. }) => {
            client
                .delete_domain(pb::DeleteDomainRequest { name: name.clone() })
                .await
                .map_err(failed)?;
            writeln!(out, "domain {name} deleted")?;
        }
        Command::User(UserCommand::Add { address, quota, .. }) => {
            let quota_bytes = parse_quota(quota)?;
            let a = client
                .create_account(pb::CreateAccountRequest {
                    address: address.clone(),
                    password,
                    quota_bytes,
                })
                .await
                .map_err(failed)?
                .into_inner();
            writeln!(out, "account {} created", a.address)?;
        }
        Command::User(UserCommand::List { domain, .. }) => {
            let list = client
                .list_accounts(pb::ListAccountsRequest {
                    domain: domain.clone().unwrap_or_default(),
                })
                .await
                .map_err(failed)?
                .into_inner();
            writeln!(
                out,
                "{:<40} {:>12} {:>12} STATE",
                "ADDRESS", "QUOTA", "USED"
            )?;
            for a in &list.accounts {
                writeln!(out, "{}", show_account(a))?;
            }
        }
        Command::User(UserCommand::Passwd { address, .. }) => {
            client
                .set_password(pb::SetPasswordRequest {
                    address: address.clone(),
                    password,
                })
                .await
                .map_err(failed)?;
            writeln!(out, "password of {address} changed")?;
        }
        Command::User(UserCommand::Quota { address, quota, .. }) => {
            let quota_bytes = parse_quota(quota)?;
            let a = client
                .set_quota(pb::SetQuotaRequest {
                    address: address.clone(),
                    quota_bytes,
                })
                .await
                .map_err(failed)?
                .into_inner();
            writeln!(out, "{}", show_account(&a))?;
        }
        Command::User(
            UserCommand::Disable { address, .. } | UserCommand::Enable { address, .. },
        ) => {
            let disabled = matches!(cmd, Command::User(UserCommand::Disable { .. }));
            let a = client
                .set_account_disabled(pb::SetAccountDisabledRequest {
                    address: address.clone(),
                    disabled,
                })
                .await
                .map_err(failed)?
                .into_inner();
            writeln!(out, "{}", show_account(&a))?;
        }
        Command::User(UserCommand::Delete { address, .. }) => {
            client
                .delete_account(pb::DeleteAccountRequest {
                    address: address.clone(),
                })
                .await
                .map_err(failed)?;
            writeln!(out, "account {address} deleted")?;
        }
        Command::Alias(AliasCommand::Add { source, target, .. }) => {
            let a = client
                .add_alias(pb::AddAliasRequest {
                    source: source.clone(),
                    target: target.clone(),
                })
                .await
                .map_err(failed)?
                .into_inner();
            writeln!(out, "alias {} -> {} added", a.source, a.target)?;
        }
        Command::Alias(AliasCommand::List { domain, .. }) => {
            let list = client
                .list_aliases(pb::ListAliasesRequest {
                    domain: domain.clone().unwrap_or_default(),
                })
                .await
                .map_err(failed)?
                .into_inner();
            for a in list.aliases {
                writeln!(out, "{} -> {}", a.source, a.target)?;
            }
        }
        Command::Alias(AliasCommand::Delete { source, target, .. }) => {
            client
                .delete_alias(pb::DeleteAliasRequest {
                    source: source.clone(),
                    target: target.clone(),
                })
                .await
                .map_err(failed)?;
            writeln!(out, "alias {source} -> {target} deleted")?;
        }
        Command::Dkim(DkimCommand::Generate { domain, rotate }) => {
            let keys = client
                .generate_dkim_keys(pb::GenerateDkimKeysRequest {
                    domain: domain.clone(),
                    rotate: *rotate,
                })
                .await
                .map_err(failed)?
                .into_inner();
            for k in &keys.keys {
                writeln!(
                    out,
                    "generated {} key {} for {}",
                    k.algorithm, k.selector, k.domain
                )?;
            }
            writeln!(
                out,
                "\nPublish these DNS records (`mailroom dkim record {domain}` prints them again):\n"
            )?;
            print_records(&mut client, domain, out).await?;
        }
        Command::Dkim(DkimCommand::List { domain }) => {
            let keys = client
                .list_dkim_keys(pb::ListDkimKeysRequest {
                    domain: domain.clone().unwrap_or_default(),
                })
                .await
                .map_err(failed)?
                .into_inner();
            for k in keys.keys {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    k.domain,
                    k.selector,
                    k.algorithm,
                    if k.active { "signing" } else { "retired" }
                )?;
            }
        }
        Command::Dkim(DkimCommand::Record { domain }) => {
            print_records(&mut client, domain, out).await?;
        }
        Command::Dkim(DkimCommand::Check { domain, dns }) => {
            let records = client
                .dns_records(pb::DnsRecordsRequest {
                    domain: domain.clone(),
                })
                .await
                .map_err(failed)?
                .into_inner()
                .records;
            let servers = match dns {
                Some(server) => vec![*server],
                None => config.mta.dns_servers.clone(),
            };
            let resolver = mailroom_sender_auth::dns::resolver(
                &servers,
                Duration::from_secs(config.sender_auth.dns_timeout_secs),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let mut problems = 0;
            for r in &records {
                let found = mailroom_sender_auth::dns::txt_records(&resolver, &r.name).await;
                let (ok, verdict) = match found {
                    Err(e) => (false, format!("cannot check: {e}")),
                    Ok(found) => {
                        let found: Vec<String> = found
                            .iter()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .collect();
                        published(r, &found)
                    }
                };
                if !ok {
                    problems += 1;
                }
                writeln!(out, "{} ({}): {verdict}", r.name, r.purpose)?;
            }
            anyhow::ensure!(
                problems == 0,
                "{problems} record(s) of {domain} are not published as they should be"
            );
        }
        Command::Dkim(DkimCommand::Remove { domain, selector }) => {
            client
                .remove_dkim_key(pb::RemoveDkimKeyRequest {
                    domain: domain.clone(),
                    selector: selector.clone(),
                })
                .await
                .map_err(failed)?;
            writeln!(out, "DKIM key {selector} of {domain} removed")?;
        }
        Command::Queue(QueueCommand::List {
            state,
            domain,
            sender,
            limit,
        }) => {
            let list = client
                .list_queue(pb::ListQueueRequest {
                    state: state.clone().unwrap_or_default(),
                    domain: domain.clone().unwrap_or_default(),
                    sender: sender.clone().unwrap_or_default(),
                    limit: *limit,
                })
                .await
                .map_err(failed)?
                .into_inner();
            writeln!(
                out,
                "{:>8} {:>10} {:<32} RECIPIENTS",
                "ID", "SIZE", "SENDER"
            )?;
            for e in &list.entries {
                let recipients: Vec<String> = e
                    .recipients
                    .iter()
                    .map(|r| format!("{} ({})", r.address, r.state))
                    .collect();
                let sender = if e.sender.is_empty() {
                    "<>"
                } else {
                    e.sender.as_str()
                };
                writeln!(
                    out,
                    "{:>8} {:>10} {:<32} {}",
                    e.id,
                    show_size(e.size),
                    sender,
                    recipients.join(", ")
                )?;
            }
        }
        Command::Queue(QueueCommand::Show { id }) => {
            let e = client
                .show_queue_entry(pb::ShowQueueEntryRequest { id: *id })
                .await
                .map_err(failed)?
                .into_inner();
            let sender = if e.sender.is_empty() {
                "<>"
            } else {
                e.sender.as_str()
            };
            writeln!(out, "queue id:  {}", e.id)?;
            writeln!(out, "sender:    {sender}")?;
            writeln!(out, "size:      {}", show_size(e.size))?;
            writeln!(
                out,
                "queued:    {} (expires {})",
                unix_time(e.created_at),
                unix_time(e.expires_at)
            )?;
            for r in &e.recipients {
                writeln!(
                    out,
                    "recipient: {} — {}, {} attempt(s)",
                    r.address, r.state, r.attempts
                )?;
                if matches!(r.state.as_str(), "pending" | "deferred") {
                    writeln!(
                        out,
                        "           next attempt {}",
                        unix_time(r.next_attempt_at)
                    )?;
                }
                if !r.last_response.is_empty() {
                    writeln!(out, "           last response: {}", r.last_response)?;
                }
            }
        }
        Command::Queue(QueueCommand::Retry { id }) => {
            let n = client
                .retry_queue_entry(pb::RetryQueueEntryRequest { id: *id })
                .await
                .map_err(failed)?
                .into_inner()
                .recipients;
            writeln!(out, "queue entry {id}: {n} recipient(s) due now")?;
        }
        Command::Queue(QueueCommand::Drop { id }) => {
            client
                .drop_queue_entry(pb::DropQueueEntryRequest { id: *id })
                .await
                .map_err(failed)?;
            writeln!(out, "queue entry {id} dropped")?;
        }
        Command::Queue(QueueCommand::Summary) => {
            let s = client
                .queue_summary(pb::QueueSummaryRequest {})
                .await
                .map_err(failed)?
                .into_inner();
            writeln!(out, "entries:   {}", s.entries)?;
            writeln!(
                out,
                "recipients: {} pending, {} deferred, {} delivered, {} failed",
                s.pending, s.deferred, s.delivered, s.failed
            )?;
            if s.oldest_created_at > 0 {
                writeln!(out, "oldest:    {}", unix_time(s.oldest_created_at))?;
            }
        }
        Command::Serve { .. } | Command::Config(_) | Command::Internal(_) | Command::Mail(_) => {
            unreachable!("not an admin command")
        }
    }
    Ok(())
}

/// A Unix time as an RFC 3339 UTC timestamp.
pub fn unix_time(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Prints a domain's DNS records as zone-file lines, each after a comment
/// saying what it is for.
async fn print_records(
    client: &mut Client,
    domain: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let records = client
        .dns_records(pb::DnsRecordsRequest {
            domain: domain.to_string(),
        })
        .await
        .map_err(failed)?
        .into_inner();
    for r in records.records {
        writeln!(out, "; {}\n{}", r.purpose, r.zone_line)?;
    }
    Ok(())
}

/// Whether what the DNS has at `expected.name` (`found`) does the job of
/// `expected`, and what to tell the operator. DKIM: the same key (spaces
/// aside); a retired key may be gone. SPF and DMARC: exactly one record of
/// the kind (two are a permerror, RFC 7208 §4.5, RFC 7489 §6.6.3); any
/// policy is the operator's to choose, the suggestion is only shown.
fn published(expected: &pb::DnsRecord, found: &[String]) -> (bool, String) {
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    if expected.name.contains("._domainkey.") {
        let retired = expected.purpose.contains("retired");
        return if found.iter().any(|f| squeeze(f) == squeeze(&expected.value)) {
            (true, "ok".into())
        } else if found.is_empty() {
            (
                retired,
                "MISSING: publish the line `mailroom dkim record` prints".into(),
            )
        } else {
            (
                retired,
                format!("DIFFERS: published {:?}", found.join(" | ")),
            )
        };
    }
    let kind = if expected.name.starts_with("_dmarc.") {
        "v=DMARC1"
    } else {
        "v=spf1"
    };
    let of_kind: Vec<&String> = found
        .iter()
        .filter(|f| f.len() >= kind.len() && f[..kind.len()].eq_ignore_ascii_case(kind))
        .collect();
    match of_kind.as_slice() {
        [] => (false, format!("MISSING (suggested: {})", expected.value)),
        [one] if squeeze(one) == squeeze(&expected.value) => (true, "ok".into()),
        [one] => (true, format!("ok, published {one:?}")),
        many => (
            false,
            format!("ERROR: {} records, receivers ignore them all", many.len()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_in_binary_units() {
        assert_eq!(parse_quota("0").unwrap(), 0);
        assert_eq!(parse_quota("unlimited").unwrap(), 0);
        assert_eq!(parse_quota("1024").unwrap(), 1024);
        assert_eq!(parse_quota("500M").unwrap(), 500 << 20);
        assert_eq!(parse_quota("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_quota("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_quota("10KB").unwrap(), 10 << 10);
        for bad in ["", "-1", "lots", "1X", "NaN", "1e30"] {
            assert!(parse_quota(bad).is_err(), "{bad}");
        }
        assert_eq!(show_size(1536), "1.5 KiB");
        assert_eq!(unix_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(unix_time(1_795_860_000), "2026-11-28T10:00:00Z");
        assert_eq!(show_size(12), "12 B");
    }
}
