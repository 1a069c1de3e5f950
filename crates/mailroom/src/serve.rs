//! `mailroom serve`: start services in this process.
//!
//! Order matters and is the same for every service: the configuration was
//! validated before we get here; then the data directory, certificate, token
//! and store are made ready; only then are ports bound, so a bad setting
//! never leaves a half-started server behind.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use mailroom_admin::AdminToken;
use mailroom_config::Config;
use mailroom_net::tls;
use mailroom_net::{ConnectionLimiter, Listener, ServeContext, Shutdown, TlsMode};
use mailroom_rpc::internal::{Credential, InternalSecret, Role};
use mailroom_smtp_server::{AuthThrottle, Mode, QueueHandle, SmtpServer, SmtpSettings};
use mailroom_store::{Store, StoreOptions};
use std::sync::Arc;
use tonic::service::RoutesBuilder;

/// The services that `mailroom serve <service>` can run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    /// The Admin gRPC service (domains, accounts, aliases).
    Admin,
    /// The MDA: gRPC Delivery into mailboxes.
    Mda,
    /// The MTA: inbound SMTP for our domains (port 25) and the Queue.
    Mta,
    /// The MSA: message submission (587/2525 STARTTLS, 465 implicit TLS).
    Msa,
    /// POP3: mail retrieval (110 STLS, 995 implicit TLS).
    Pop3,
    /// IMAP: mail access (143 STARTTLS, 993 implicit TLS).
    Imap,
}

/// One listening socket, as reported at start.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Service name.
    pub service: &'static str,
    /// Bound address (the real port when 0 was configured).
    pub addr: SocketAddr,
    /// `plaintext`, `STARTTLS`, `implicit TLS`, plus the protocol for gRPC.
    pub mode: String,
}

/// A running set of services.
#[derive(Debug)]
pub struct Stack {
    listeners: Vec<ListenerInfo>,
    store: Store,
    store_description: String,
    token_file: PathBuf,
    shutdown: Shutdown,
}

impl Stack {
    /// Every listener, in start order.
    pub fn listeners(&self) -> &[ListenerInfo] {
        &self.listeners
    }

    /// The address a service listens on.
    pub fn addr(&self, service: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.service == service)
            .map(|l| l.addr)
    }

    /// The store every service of this process shares (on SQLite its
    /// new-mail events only reach subscribers of this handle).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The file holding the admin token.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The shutdown handle (trigger it to stop the stack).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// What `mailroom serve` prints at start: one line per listener.
    pub fn banner(&self) -> String {
        let mut s = format!(
            "Mailroom {} — store: {}\n",
            env!("CARGO_PKG_VERSION"),
            self.store_description
        );
        for l in &self.listeners {
            let _ = writeln!(s, "  {:<12} {:<22} {}", l.service, l.addr, l.mode);
        }
        let _ = writeln!(s, "Admin token: {}", self.token_file.display());
        s
    }

    /// Stops accepting, lets sessions finish for up to `grace`, closes the
    /// store. Returns whether everything ended in time.
    pub async fn stop(self, grace: Duration) -> bool {
        let clean = self.shutdown.drain(grace).await;
        if !clean {
            tracing::warn!(
                "some sessions were still open after {}s; closing anyway",
                grace.as_secs()
            );
        }
        self.store.close().await;
        clean
    }
}

/// How long `/readyz` waits for the database before saying "not ready"
/// (below the probes' one-second default timeout would be too tight for a
/// busy pool; the manifests give the probe more).
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Ready when the store answers `SELECT 1` within [`READINESS_TIMEOUT`].
/// Every service reads or writes the store for its work, so none is useful
/// without it.
fn store_readiness(store: Store) -> mailroom_telemetry::metrics_endpoint::Readiness {
    std::sync::Arc::new(move || {
        let store = store.clone();
        Box::pin(async move {
            match tokio::time::timeout(READINESS_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("the database does not answer: {e}")),
                Err(_) => Err("the database does not answer in time".to_string()),
            }
        })
    })
}

/// Shows a store URL without its password.
fn describe_store(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        return format!("sqlite ({rest})");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!(
                "postgres ({}{}{})",
                &url[..scheme_end + 3],
                user,
                &url[at..]
            )
        }
        _ => format!("postgres ({url})"),
    }
}

/// Reads the admin token, creating it when it is missing and `may_create`.
fn admin_token(path: &Path, may_create: bool) -> anyhow::Result<AdminToken> {
    match std::fs::read_to_string(path) {
        Ok(text) => AdminToken::new(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let token = hex::encode(rand::random::<[u8; 32]>());
            tls::write_private(path, format!("{token}\n").as_bytes())?;
            tracing::info!(file = %path.display(), "generated the admin token");
            AdminToken::new(&token).map_err(|e| anyhow::anyhow!(e))
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot read the admin token {}: {e}",
            path.display()
        )),
    }
}

/// What this process needs for the internal gRPC links.
#[derive(Debug, Default)]
struct InternalAuth {
    /// The deployment secret: needed to serve a link, or to call one
    /// without a credential file.
    secret: Option<InternalSecret>,
    /// The credential from `internal.credential_file`, when set.
    credential: Option<Credential>,
}

impl InternalAuth {
    /// Loads what `config` names; the secret at its default place is
    /// generated when missing (the embedded default and services sharing a
    /// data directory). `needs_secret`: this process serves an internal link.
    fn load(config: &Config, needs_secret: bool, calls: bool) -> anyhow::Result<InternalAuth> {
        let mut auth = InternalAuth::default();
        if let Some(path) = &config.internal.credential_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            auth.credential = Some(
                Credential::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            );
        }
        if needs_secret || (calls && auth.credential.is_none()) {
            let path = config.internal_secret_file();
            let may_create = config.internal.secret_file.is_none();
            auth.secret = Some(match std::fs::read_to_string(&path) {
                Ok(text) => InternalSecret::parse(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
                    let secret = InternalSecret::generate();
                    tls::write_private(&path, secret.to_text().as_bytes())?;
                    tracing::info!(file = %path.display(), "generated the internal secret");
                    secret
                }
                Err(e) => anyhow::bail!("cannot read the internal secret {}: {e}", path.display()),
            });
        }
        Ok(auth)
    }

    /// The credential this process presents as `role`: the configured one
    /// (which must be of that role), else one derived from the secret.
    fn credential(&self, role: Role) -> anyhow::Result<Credential> {
        if let Some(c) = &self.credential {
            anyhow::ensure!(
                c.role() == Some(role),
                "internal.credential_file holds a credential of the {} role; this service calls as {role}",
                c.role().map_or("?", Role::name)
            );
            return Ok(c.clone());
        }
        self.secret
            .as_ref()
            .map(|s| s.credential(role))
            .context("no internal secret or credential")
    }

    fn secret(&self) -> anyhow::Result<InternalSecret> {
        self.secret.clone().context("no internal secret")
    }
}

/// Runs a gRPC server as a tracked task; its failure stops the whole process
/// (a service that silently stopped serving is worse than a restart).
fn spawn_grpc(
    shutdown: &Shutdown,
    name: &'static str,
    routes: RoutesBuilder,
    grpc_name: &'static str,
    listener: Listener,
) {
    let (tcp, stop) = (listener.into_tcp(), shutdown.clone());
    shutdown.spawn(async move {
        if let Err(e) = mailroom_rpc::serve(routes, &[grpc_name], tcp, stop.token()).await {
            tracing::error!(service = name, error = %e, "gRPC server failed; shutting down");
            stop.trigger();
        }
    });
}

/// Runs an SMTP accept loop as a tracked task.
/// Serves the protocol sessions of `listener` (SMTP, IMAP, POP3) until
/// shutdown; a listener that fails shuts the process down.
fn spawn_sessions<S: mailroom_net::Session>(
    shutdown: &Shutdown,
    listener: Listener,
    server: Arc<S>,
    ctx: ServeContext,
) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let service = listener.service();
        if let Err(e) = mailroom_net::serve(listener, server, ctx).await {
            tracing::error!(service, error = %e, "listener failed; shutting down");
            stop.trigger();
        }
    });
}

/// Keeps the sampled gauges current (every 15 s) while the metrics
/// endpoint is on: `mailroom_store_pool_connections{state}` always, and
/// with the MTA `mailroom_queue_recipients{state}` and
/// `mailroom_queue_oldest_age_seconds`.
async fn sampled_gauges(store: Store, queue: bool, stop: tokio_util::sync::CancellationToken) {
    loop {
        let (open, idle) = store.pool_connections();
        metrics::gauge!("mailroom_store_pool_connections", "state" => "idle").set(idle as f64);
        metrics::gauge!("mailroom_store_pool_connections", "state" => "in_use")
            .set(open.saturating_sub(idle) as f64);
        if queue && let Ok(s) = store.queue_summary().await {
            for (state, n) in [
                ("pending", s.pending),
                ("deferred", s.deferred),
                ("delivered", s.delivered),
                ("failed", s.failed),
            ] {
                metrics::gauge!("mailroom_queue_recipients", "state" => state).set(n as f64);
            }
            let age = s
                .oldest_created_at
                .map_or(0, |t| (mailroom_store::now() - t).max(0));
            metrics::gauge!("mailroom_queue_oldest_age_seconds").set(age as f64);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
    }
}

/// How often queue workers look for due work when nothing woke them.
const QUEUE_POLL: Duration = Duration::from_secs(1);

/// A lazily connected channel to another service (it may start after us,
/// or restart: tonic reconnects by itself).
fn grpc_channel(endpoint: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .with_context(|| format!("bad gRPC endpoint {endpoint:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .connect_lazy(),
    )
}

fn smtp_settings(config: &Config) -> SmtpSettings {
    let s = &config.smtp;
    SmtpSettings {
        hostname: config.server.hostname.clone(),
        max_message_size: usize::try_from(s.max_message_size).unwrap_or(usize::MAX),
        max_recipients: s.max_recipients,
        max_line_length: s.max_line_length,
        max_errors: s.max_errors,
        command_timeout: Duration::from_secs(s.command_timeout_secs),
        data_timeout: Duration::from_secs(s.data_timeout_secs),
        min_data_rate: s.min_data_rate,
        allow_plaintext_auth_on_loopback: s.allow_plaintext_auth_on_loopback,
        auth_failure_delay: Duration::from_millis(s.auth_failure_delay_ms),
        max_auth_failures: s.max_auth_failures,
        max_auth_failures_per_ip: s.max_auth_failures_per_ip,
        auth_failure_window: Duration::from_secs(900),
    }
}

/// Starts `only` that service, or every service, and returns once all
/// listeners are bound.
pub async fn start(config: Config, only: Option<ServiceName>) -> anyhow::Result<Stack> {
    tls::install_default_provider();
    let runs = |s: ServiceName| only.is_none_or(|o| o == s);
    let data_dir = &config.server.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;

    // Every TLS listener presents this pair; checking it now means a bad
    // certificate stops the start instead of failing the first handshake.
    let (cert, key) = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => tls::ensure_self_signed(&data_dir.join("tls"), &config.server.hostname)?,
    };
    let acceptor = tls::acceptor(&cert, &key)?;

    let token_file = config.admin_token_file();
    let token = admin_token(&token_file, config.admin.token_file.is_none())?;

    let url = config.store_url();
    let store = Store::connect(
        &url,
        &StoreOptions {
            max_connections: config.store.max_connections,
            acquire_timeout: Duration::from_secs(config.store.connect_timeout_secs),
            fresh_for: Duration::from_millis(config.store.fresh_for_ms),
            message_cache_bytes: usize::try_from(
                config.store.message_cache_mb.saturating_mul(1 << 20),
            )
            .unwrap_or(usize::MAX),
            message_cache_idle: Duration::from_secs(config.store.message_cache_idle_secs),
        },
    )
    .await
    .with_context(|| format!("store {}", describe_store(&url)))?;

    // The internal links: served when the MTA (Queue) or the MDA (Delivery)
    // listens; called when the MSA or MTA runs without the other in this
    // process. The whole stack in one process serves none unless exposed.
    let exposes = only.is_some() || config.internal.expose;
    let serves_internal = exposes && (runs(ServiceName::Mta) || runs(ServiceName::Mda));
    let calls_internal = only == Some(ServiceName::Msa) || only == Some(ServiceName::Mta);
    let internal = InternalAuth::load(&config, serves_internal, calls_internal)?;

    let shutdown = Shutdown::new();
    let mut listeners = Vec::new();
    if let Some(addr) = config.telemetry.metrics_listen {
        let listener = Listener::bind("metrics", addr, TlsMode::Plain).await?;
        listeners.push(ListenerInfo {
            service: "metrics",
            addr: listener.local_addr(),
            mode: "HTTP, Prometheus GET /metrics; probes GET /livez, /readyz".into(),
        });
        let stop = shutdown.token();
        shutdown.spawn(mailroom_telemetry::metrics_endpoint::serve(
            listener.into_tcp(),
            store_readiness(store.clone()),
            async move { stop.cancelled().await },
        ));
        shutdown.spawn(sampled_gauges(
            store.clone(),
            runs(ServiceName::Mta),
            shutdown.token(),
        ));
    }
    if runs(ServiceName::Admin) {
        let listener = Listener::bind("admin", config.admin.listen, TlsMode::Plain).await?;
        listeners.push(ListenerInfo {
            service: "admin",
            addr: listener.local_addr(),
            mode: "plaintext gRPC (bearer token)".into(),
        });
        let mut routes = RoutesBuilder::default();
        routes.add_service(mailroom_admin::service(store.clone(), token));
        let (tcp, stop) = (listener.into_tcp(), shutdown.clone());
        shutdown.spawn(async move {
            if let Err(e) =
                mailroom_rpc::serve(routes, &[mailroom_admin::SERVICE_NAME], tcp, stop.token())
                    .await
            {
                tracing::error!(error = %e, "the admin gRPC server failed; shutting down");
                stop.trigger();
            }
        });
    }
    let mut delivery_endpoint = config.mta.delivery_endpoint.clone();
    // The MDA of this process, when it runs here: the local queue worker
    // calls it directly rather than through gRPC.
    let mut local_mda: Option<Arc<mailroom_mda::DeliveryService>> = None;
    if runs(ServiceName::Mda) {
        local_mda = Some(Arc::new(mailroom_mda::DeliveryService::new(
            store.clone(),
            config.server.hostname.clone(),
        )));
        if exposes {
            let listener = Listener::bind("mda", config.mda.listen, TlsMode::Plain).await?;
            delivery_endpoint = format!("http://{}", listener.local_addr());
            listeners.push(ListenerInfo {
                service: "mda",
                addr: listener.local_addr(),
                mode: "plaintext gRPC (Delivery; mta role only)".into(),
            });
            let mut routes = RoutesBuilder::default();
            routes.add_service(mailroom_mda::service(
                store.clone(),
                config.server.hostname.clone(),
                internal.secret()?,
            ));
            spawn_grpc(
                &shutdown,
                "mda",
                routes,
                mailroom_mda::SERVICE_NAME,
                listener,
            );
        }
    }
    let smtp_context = ServeContext {
        limiter: ConnectionLimiter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        ),
        tls: Some(acceptor),
        handshake_timeout: Duration::from_secs(config.tls.handshake_timeout_secs),
        shutdown: shutdown.clone(),
    };
    let throttle = Arc::new(AuthThrottle::default());
    let mut queue_endpoint = config.submission.queue_endpoint.clone();
    // The Queue of this process, when the MTA runs here: SMTP sessions call
    // it directly rather than through gRPC.
    let mut local_queue: Option<Arc<mailroom_mta::QueueService>> = None;
    let queue_handle = |local: &Option<Arc<mailroom_mta::QueueService>>,
                        endpoint: &str,
                        role: Role|
     -> anyhow::Result<QueueHandle> {
        Ok(match local {
            Some(q) => QueueHandle::Local(q.clone()),
            None => QueueHandle::remote(grpc_channel(endpoint)?, internal.credential(role)?),
        })
    };
    if runs(ServiceName::Mta) {
        // The embedded store's leases at start are a dead process's.
        match store.reclaim_leases_at_start().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                recipients = n,
                "took back the queue leases of a previous run"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot take back old queue leases; they will expire")
            }
        }
        let max_age = i64::try_from(config.mta.max_queue_age_secs).unwrap_or(i64::MAX);
        let wake = Arc::new(mailroom_mta::QueueWake::default());
        let mut queue_service =
            mailroom_mta::QueueService::new(store.clone(), max_age, wake.clone())
                .with_dkim_expiry(Duration::from_secs(config.sender_auth.dkim_expiry_secs));
        if let Some(mda) = &local_mda
            && config.mta.deliver_at_acceptance
        {
            queue_service =
                queue_service.with_at_acceptance(Arc::new(MdaAtAcceptance(mda.clone())));
        }
        local_queue = Some(Arc::new(queue_service.clone()));
        if exposes {
            let listener = Listener::bind("queue", config.mta.grpc_listen, TlsMode::Plain).await?;
            queue_endpoint = format!("http://{}", listener.local_addr());
            listeners.push(ListenerInfo {
                service: "queue",
                addr: listener.local_addr(),
                mode: "plaintext gRPC (Queue; msa and inbound roles only)".into(),
            });
            let mut routes = RoutesBuilder::default();
            routes.add_service(mailroom_mta::service(queue_service, internal.secret()?));
            spawn_grpc(
                &shutdown,
                "queue",
                routes,
                mailroom_mta::SERVICE_NAME,
                listener,
            );
        }
        let mta = &config.mta;
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        let queue_settings = mailroom_mta::RelaySettings {
            hostname: config.server.hostname.clone(),
            dns_servers: mta.dns_servers.clone(),
            outbound_port: mta.outbound_port,
            timeouts: mailroom_mta::Timeouts {
                connect: Duration::from_secs(mta.connect_timeout_secs),
                command: Duration::from_secs(mta.command_timeout_secs),
                data_end: Duration::from_secs(mta.data_timeout_secs),
            },
            first_retry_secs: secs(mta.first_retry_secs),
            max_queue_age_secs: max_age,
            lease_secs: secs(mta.lease_secs),
            delay_warning_secs: secs(mta.delay_warning_secs),
            max_connections_per_destination: mta.max_connections_per_destination,
            max_messages_per_session: mta.max_messages_per_session,
            dkim_expiry: Duration::from_secs(config.sender_auth.dkim_expiry_secs),
        };
        let delivery = match &local_mda {
            Some(mda) => mailroom_mta::DeliveryHandle::Local(mda.clone()),
            None => mailroom_mta::DeliveryHandle::remote(
                grpc_channel(&delivery_endpoint)?,
                internal.credential(Role::Mta)?,
            ),
        };
        let worker =
            mailroom_mta::LocalDelivery::new(store.clone(), delivery, QUEUE_POLL, wake.clone())
                .with_settings(&queue_settings);
        shutdown.spawn(worker.run(shutdown.token()));
        // Remote recipients: MX lookup and outbound SMTP (issue 5).
        let relay = mailroom_mta::Relay::new(store.clone(), queue_settings, QUEUE_POLL, wake)
            .map_err(|e| anyhow::anyhow!("outbound relay: {e}"))?;
        shutdown.spawn(relay.run(shutdown.token()));
        let mut server = SmtpServer::new(
            Mode::Inbound,
            smtp_settings(&config),
            store.clone(),
            queue_handle(&local_queue, &queue_endpoint, Role::Inbound)?,
            throttle.clone(),
        );
        let policies = sender_auth_policies(&config.sender_auth);
        if policies.checks_anything() {
            server = server.with_sender_auth(sender_auth(&config, policies)?);
        }
        let server = Arc::new(server);
        for addr in &config.mta.listen {
            let listener = Listener::bind("smtp", *addr, TlsMode::StartTls).await?;
            listeners.push(ListenerInfo {
                service: "smtp",
                addr: listener.local_addr(),
                mode: "SMTP, STARTTLS".into(),
            });
            spawn_sessions(&shutdown, listener, server.clone(), smtp_context.clone());
        }
    }
    if runs(ServiceName::Msa) {
        let server = Arc::new(SmtpServer::new(
            Mode::Submission,
            smtp_settings(&config),
            store.clone(),
            queue_handle(&local_queue, &queue_endpoint, Role::Msa)?,
            throttle.clone(),
        ));
        let all = config
            .submission
            .listen
            .iter()
            .map(|a| ("submission", *a, TlsMode::StartTls, "submission, STARTTLS"))
            .chain(config.submission.listen_tls.iter().map(|a| {
                (
                    "submissions",
                    *a,
                    TlsMode::Implicit,
                    "submission, implicit TLS",
                )
            }));
        for (service, addr, mode, text) in all {
            let listener = Listener::bind(service, addr, mode).await?;
            listeners.push(ListenerInfo {
                service,
                addr: listener.local_addr(),
                mode: text.into(),
            });
            spawn_sessions(&shutdown, listener, server.clone(), smtp_context.clone());
        }
    }
    if runs(ServiceName::Pop3) {
        let p = &config.pop3;
        let server = Arc::new(mailroom_pop3::Pop3Server::new(
            mailroom_pop3::Pop3Settings {
                hostname: config.server.hostname.clone(),
                idle_timeout: Duration::from_secs(p.idle_timeout_secs),
                allow_plaintext_auth_on_loopback: p.allow_plaintext_auth_on_loopback,
                auth_failure_delay: Duration::from_millis(p.auth_failure_delay_ms),
                max_auth_failures: p.max_auth_failures,
                max_auth_failures_per_ip: p.max_auth_failures_per_ip,
                auth_failure_window: Duration::from_secs(900),
            },
            store.clone(),
            Arc::new(mailroom_pop3::AuthThrottle::default()),
        ));
        let all = p
            .listen
            .iter()
            .map(|a| ("pop3", *a, TlsMode::StartTls, "POP3, STLS"))
            .chain(
                p.listen_tls
                    .iter()
                    .map(|a| ("pop3s", *a, TlsMode::Implicit, "POP3, implicit TLS")),
            );
        for (service, addr, mode, text) in all {
            let listener = Listener::bind(service, addr, mode).await?;
            listeners.push(ListenerInfo {
                service,
                addr: listener.local_addr(),
                mode: text.into(),
            });
            spawn_sessions(&shutdown, listener, server.clone(), smtp_context.clone());
        }
    }
    if runs(ServiceName::Imap) {
        let c = &config.imap;
        let server = Arc::new(mailroom_imap::ImapServer::new(
            mailroom_imap::ImapSettings {
                hostname: config.server.hostname.clone(),
                idle_timeout: Duration::from_secs(c.idle_timeout_secs),
                authenticated_idle_timeout: Duration::from_secs(c.authenticated_idle_timeout_secs),
                allow_plaintext_auth_on_loopback: c.allow_plaintext_auth_on_loopback,
                auth_failure_delay: Duration::from_millis(c.auth_failure_delay_ms),
                max_auth_failures: c.max_auth_failures,
                max_auth_failures_per_ip: c.max_auth_failures_per_ip,
                auth_failure_window: Duration::from_secs(900),
                max_message_size: c.max_message_size,
                max_line_length: c.max_line_length,
                max_notify_mailboxes: c.max_notify_mailboxes,
            },
            store.clone(),
            Arc::new(mailroom_imap::AuthThrottle::default()),
        ));
        let all = c
            .listen
            .iter()
            .map(|a| ("imap", *a, TlsMode::StartTls, "IMAP, STARTTLS"))
            .chain(
                c.listen_tls
                    .iter()
                    .map(|a| ("imaps", *a, TlsMode::Implicit, "IMAP, implicit TLS")),
            );
        for (service, addr, mode, text) in all {
            let listener = Listener::bind(service, addr, mode).await?;
            listeners.push(ListenerInfo {
                service,
                addr: listener.local_addr(),
                mode: text.into(),
            });
            spawn_sessions(&shutdown, listener, server.clone(), smtp_context.clone());
        }
    }
    tracing::info!(store = %describe_store(&url), listeners = listeners.len(), "mailroom started");
    Ok(Stack {
        listeners,
        store,
        store_description: describe_store(&url),
        token_file,
        shutdown,
    })
}

/// The inbound sender checks as configured (`[sender_auth]`), asking the
/// configured DNS servers.
fn sender_auth(
    config: &Config,
    policies: mailroom_sender_auth::Policies,
) -> anyhow::Result<mailroom_smtp_server::SenderAuth> {
    let sa = &config.sender_auth;
    let resolver = mailroom_sender_auth::dns::resolver(
        &config.mta.dns_servers,
        Duration::from_secs(sa.dns_timeout_secs),
    )
    .map_err(|e| anyhow::anyhow!("sender authentication: {e}"))?;
    let limits = mailroom_sender_auth::InboundPolicy {
        max_dkim_signatures: sa.max_dkim_signatures,
        deadline: Duration::from_secs(sa.check_timeout_secs),
    };
    Ok(mailroom_smtp_server::SenderAuth {
        checker: Arc::new(mailroom_sender_auth::Checker::new(
            resolver,
            &config.server.hostname,
            limits,
        )),
        policies: Arc::new(policies),
    })
}

/// `[sender_auth]` and its `[sender_auth.domains."…"]` tables as the
/// checker's per-domain policies (unset domain keys resolved to the global).
fn sender_auth_policies(sa: &mailroom_config::SenderAuthConfig) -> mailroom_sender_auth::Policies {
    use mailroom_config::FailureHandling as F;
    use mailroom_sender_auth::Handling as H;
    let handling = |f: F| match f {
        F::Mark => H::Mark,
        F::Junk => H::Junk,
        F::Reject => H::Reject,
    };
    let policy = |r: mailroom_config::ResolvedSenderAuth| mailroom_sender_auth::DomainPolicy {
        check: r.check_inbound,
        trusted_relays: r.trusted_relays,
        decisions: mailroom_sender_auth::Decisions {
            dmarc_reject: handling(r.dmarc_reject),
            dmarc_quarantine: handling(r.dmarc_quarantine),
            spf_fail_without_dmarc: handling(r.spf_fail_without_dmarc),
        },
    };
    mailroom_sender_auth::Policies::new(
        // No domain is called "": the global keys alone.
        policy(sa.domain_policy("")),
        sa.policy_domains()
            .into_iter()
            .map(|d| (d.clone(), policy(sa.domain_policy(&d)))),
    )
}

#[cfg(test)]
mod tests {
    use super::describe_store;

    #[test]
    fn store_passwords_are_not_shown() {
        assert_eq!(
            describe_store("postgres://mail:s3cret@db:5432/mail"),
            "postgres (postgres://mail@db:5432/mail)"
        );
        assert_eq!(describe_store("sqlite://data/m.db"), "sqlite (data/m.db)");
    }
}

/// The MDA of this process as the Queue's delivery at acceptance
/// (`mta.deliver_at_acceptance`; the MTA and MDA crates know nothing of each
/// other).
#[derive(Debug)]
struct MdaAtAcceptance(Arc<mailroom_mda::DeliveryService>);

#[tonic::async_trait]
impl mailroom_mta::AtAcceptance for MdaAtAcceptance {
    async fn deliver(
        &self,
        sender: &str,
        recipients: &[String],
        message: &[u8],
        quarantine: bool,
    ) -> Result<bool, mailroom_store::StoreError> {
        self.0
            .deliver_at_acceptance(sender, recipients, message, quarantine)
            .await
    }
}
