//! Mailroom services as processes of their own, to be killed with SIGKILL
//! and started again: this test binary re-executed to run only
//! [`super::mailroom_process`], which is `mailroom serve …` as the binary
//! runs it (the same way tests/topology.rs runs the compose services),
//! configured only through `MAILROOM_<SECTION>__<KEY>` variables.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The variable holding the arguments of the service process.
pub const ARGS_VAR: &str = "RESILIENCE_SERVICE_ARGS";

/// A port on 127.0.0.1 that was free a moment ago; the services get fixed
/// ports so that a restarted process is found where its predecessor was.
/// Chosen at random below Linux's ephemeral range (32768–60999), where no
/// socket bound to port 0 (the other tests' listeners, every outgoing
/// connection) can take it between the choice and the service's bind.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new();
    for attempt in 0u64.. {
        let port = 20_000 + (random.hash_one(attempt) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    unreachable!()
}

/// How to start one service again and again.
#[derive(Debug, Clone)]
pub struct Spec {
    /// A name for messages (`mta`, `embedded`, …).
    pub name: String,
    /// The `mailroom` arguments (`serve`, `serve mta`, …).
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
}

/// A service process; killed when dropped.
pub struct Proc {
    /// How it was started.
    pub spec: Spec,
    child: Option<Child>,
    log: PathBuf,
    /// How many times it was started.
    pub starts: u32,
}

impl Proc {
    /// Starts `spec` and waits until its ports are bound (its banner).
    pub async fn start(spec: Spec, logs: &Path) -> Proc {
        let mut p = Proc {
            log: logs.join(format!("{}.log", spec.name)),
            spec,
            child: None,
            starts: 0,
        };
        p.restart().await;
        p
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What it logged (every start appends).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts it (again) and waits for its banner.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.spec.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "mailroom_process",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env_clear()
            .envs(self.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(ARGS_VAR, self.spec.args.join("\u{1f}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.child = Some(child);
        self.starts += 1;
        if !mailroom_tests::banner_printed(stdout).await {
            self.kill();
            panic!("{} did not start:\n{}", self.spec.name, self.log());
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it is still running (it never exited on its own).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Its resident set size in KiB (`VmRSS`), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The ports of a deployment, fixed for its whole life.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Inbound SMTP (port 25's stand-in).
    pub smtp: u16,
    /// Submission (STARTTLS port, plaintext AUTH allowed on loopback).
    pub submission: u16,
    /// Submission with implicit TLS.
    pub submission_tls: u16,
    /// IMAP (STARTTLS port).
    pub imap: u16,
    /// IMAP with implicit TLS.
    pub imap_tls: u16,
    /// POP3 (STLS port).
    pub pop3: u16,
    /// POP3 with implicit TLS.
    pub pop3_tls: u16,
    /// The MDA's gRPC Delivery.
    pub mda: u16,
    /// The MTA's gRPC Queue.
    pub queue: u16,
}

impl Ports {
    /// Free ports for everything.
    pub fn pick() -> Ports {
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 9 {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        Ports {
            smtp: ports[0],
            submission: ports[1],
            submission_tls: ports[2],
            imap: ports[3],
            imap_tls: ports[4],
            pop3: ports[5],
            pop3_tls: ports[6],
            mda: ports[7],
            queue: ports[8],
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn at(port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }
}

/// The environment every service of a test deployment gets: the store,
/// its own data directory, every listener on a fixed port, and test
/// settings (no DNS for unknown domains, retries after a second, no sender
/// authentication, a short log).
pub fn service_env(
    store_url: &str,
    data_dir: &Path,
    ports: &Ports,
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let list = |p: u16| format!("[\"127.0.0.1:{p}\"]");
    let mut env: Vec<(String, String)> = [
        ("STORE__URL", store_url.to_string()),
        ("SERVER__DATA_DIR", data_dir.display().to_string()),
        ("SERVER__HOSTNAME", "mx.example.test".into()),
        ("SERVER__SHUTDOWN_GRACE_SECS", "2".into()),
        ("ADMIN__LISTEN", "127.0.0.1:0".into()),
        ("MDA__LISTEN", format!("127.0.0.1:{}", ports.mda)),
        ("MTA__GRPC_LISTEN", format!("127.0.0.1:{}", ports.queue)),
        (
            "MTA__DELIVERY_ENDPOINT",
            format!("http://127.0.0.1:{}", ports.mda),
        ),
        (
            "SUBMISSION__QUEUE_ENDPOINT",
            format!("http://127.0.0.1:{}", ports.queue),
        ),
        ("MTA__LISTEN", list(ports.smtp)),
        ("SUBMISSION__LISTEN", list(ports.submission)),
        ("SUBMISSION__LISTEN_TLS", list(ports.submission_tls)),
        ("IMAP__LISTEN", list(ports.imap)),
        ("IMAP__LISTEN_TLS", list(ports.imap_tls)),
        ("POP3__LISTEN", list(ports.pop3)),
        ("POP3__LISTEN_TLS", list(ports.pop3_tls)),
        ("MTA__DNS_SERVERS", "[\"127.0.0.1:1\"]".into()),
        ("MTA__FIRST_RETRY_SECS", "1".into()),
        ("SENDER_AUTH__CHECK_INBOUND", "false".into()),
        ("SMTP__AUTH_FAILURE_DELAY_MS", "10".into()),
        ("IMAP__AUTH_FAILURE_DELAY_MS", "10".into()),
        ("POP3__AUTH_FAILURE_DELAY_MS", "10".into()),
        ("LIMITS__MAX_CONNECTIONS_PER_IP", "1000".into()),
        ("TELEMETRY__LOG_FILTER", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.clone()));
    }
    env.into_iter()
        .map(|(k, v)| (format!("MAILROOM_{k}"), v))
        .collect()
}

/// The internal secret file and the MSA's credential file, made in `dir`
/// as the README says (`mailroom internal secret`, `… token msa`).
pub async fn internal_files(dir: &Path) -> (PathBuf, PathBuf) {
    let secret = dir.join("internal-secret");
    let text = mailroom_tests::cli(&["internal", "secret"], "")
        .await
        .unwrap();
    std::fs::write(&secret, text).unwrap();
    let credential = dir.join("msa-credential");
    let text = mailroom_tests::cli(
        &[
            "internal",
            "token",
            "msa",
            "--secret-file",
            secret.to_str().unwrap(),
        ],
        "",
    )
    .await
    .unwrap();
    std::fs::write(&credential, text).unwrap();
    (secret, credential)
}

/// The embedded stack (`mailroom serve`, every service in one process).
pub fn embedded(store_url: &str, root: &Path, ports: &Ports, extra: &[(&str, String)]) -> Spec {
    let data = root.join("embedded");
    std::fs::create_dir_all(&data).unwrap();
    Spec {
        name: "embedded".into(),
        args: vec!["serve".into()],
        env: service_env(store_url, &data, ports, extra),
    }
}

/// One service of a deployment on PostgreSQL (`mailroom serve <service>`),
/// holding the internal secret (MDA, MTA) or the MSA's credential.
pub fn separate(
    service: &str,
    store_url: &str,
    root: &Path,
    ports: &Ports,
    (secret, credential): &(PathBuf, PathBuf),
) -> Spec {
    let data = root.join(service);
    std::fs::create_dir_all(&data).unwrap();
    let internal = if service == "msa" {
        (
            "INTERNAL__CREDENTIAL_FILE",
            credential.display().to_string(),
        )
    } else {
        ("INTERNAL__SECRET_FILE", secret.display().to_string())
    };
    Spec {
        name: service.into(),
        args: vec!["serve".into(), service.into()],
        env: service_env(store_url, &data, ports, &[internal]),
    }
}
