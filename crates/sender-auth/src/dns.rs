//! The DNS resolver shared by routing (MX, A/AAAA) and sender
//! authentication (SPF, DKIM, DMARC).
//!
//! Invariants:
//! * one resolver per process, so one cache, one timeout and one set of
//!   servers (`mta.dns_servers`) apply to every lookup;
//! * UDP first, TCP when an answer is truncated (long TXT records, RFC 7766);
//! * a bounded time per query (`timeout` × attempts), so a silent server
//!   ends in a temporary error, never a stuck session.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// The time one query gets from one server unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Tries per query and server before a lookup fails.
const ATTEMPTS: usize = 2;

/// A resolver asking `servers` (`ip:port`), or the system's resolvers
/// (`/etc/resolv.conf`) when the list is empty, each query given `timeout`.
pub fn resolver(servers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if servers.is_empty() {
        match TokioResolver::builder(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                // Local delivery must keep working on a machine without
                // /etc/resolv.conf; remote mail is deferred (and inbound
                // checks give temperror) until DNS is configured.
                tracing::warn!(error = %e, "cannot read the system DNS configuration; set mta.dns_servers");
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                    provider,
                )
            }
        }
    } else {
        let name_servers = servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), name_servers),
            provider,
        )
    };
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = ATTEMPTS;
    // Names are asked fully qualified: no search list rewriting.
    opts.ndots = 0;
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// The TXT records at `name`, each with its strings joined (RFC 7208 §3.3,
/// RFC 6376 §3.6.2.2); none for NXDOMAIN or no records, an error for any
/// other failure (a timeout, SERVFAIL, REFUSED).
pub async fn txt_records(resolver: &TokioResolver, name: &str) -> Result<Vec<Vec<u8>>, String> {
    let fqdn =
        hickory_resolver::proto::rr::Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
            .map_err(|e| format!("{name:?} is not a domain name: {e}"))?;
    match resolver.txt_lookup(fqdn).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect(),
                ),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(format!("TXT lookup of {name} failed: {e}")),
    }
}
