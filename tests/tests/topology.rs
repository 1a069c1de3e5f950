//! `docker-compose.yml` and `deploy/kubernetes/` as written deliver mail
//! (issue 16): each Mailroom
//! service of the file is started as its own stack (`mailroom serve
//! <service>`) with exactly the environment the file gives it, on
//! PostgreSQL, each on a loopback address of its own standing for its
//! service name, with the container ports. The secrets are made as the
//! README says. Then mail goes through the way a user's would, with tools
//! nobody here wrote (curl): submission to a local user and to a remote
//! domain, reading over IMAP and POP3, and the admin CLI against the admin
//! service. A setting the file forgets (the MTA's MDA endpoint, a
//! credential) makes this test fail.
//!
//! Each service runs as a process of its own, as in a container: this test
//! binary re-executed to run only [`service_process`], which is `mailroom
//! serve <service>` (the binary's own entry point) with only the file's
//! environment. So each process has its own telemetry: the file's OTLP
//! endpoint (Jaeger's address) reaches an OTLP/gRPC collector in the test,
//! and the test asserts that the message makes one trace across the MSA,
//! MTA and MDA processes and across a retry of the relay (the remote MX
//! defers the first attempt), that spans carry identifiers and outcomes but
//! no password, token or content, and that the trace id is in the
//! `Received` header of the message bob reads and in each process's log
//! lines about it. The file's healthchecks (compose) and probes
//! (Kubernetes) are run against each process: all pass; while the database
//! refuses connections the readiness ones fail and the liveness ones still
//! pass. Each process must stop cleanly on SIGTERM within the file's grace
//! period.
//!
//! What the test changes, and only this: `0.0.0.0` and the service names
//! in URLs become each service's loopback address; the store URL becomes
//! the test database's; `/run/secrets/<name>` becomes the test's secrets
//! directory; each service gets a data directory of its own (the image
//! sets `MAILROOM_SERVER__DATA_DIR`); and the MTA is pointed at the test's
//! DNS server and sink port for the remote domain, and retries after one
//! second instead of five minutes. In healthchecks, `127.0.0.1` (the
//! container itself) becomes the service's address. For Kubernetes, the
//! Services' names stand for their components, a Secret's value is the
//! test's (the store URL, the generated secrets, a self-signed pair for
//! `mailroom-tls`), and mounted files live under a directory per pod.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailroom_store::testing::TestDb;
use mailroom_tests::{
    DnsRecord, SinkReply, SinkScript, SmtpSink, TestDns, base64_encode, cli, run_tool, wait_for,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// The loopback address standing for each compose service.
const HOSTS: &[(&str, &str)] = &[
    ("admin", "127.0.0.31"),
    ("mda", "127.0.0.32"),
    ("mta", "127.0.0.33"),
    ("msa", "127.0.0.34"),
    ("pop3", "127.0.0.35"),
    ("imap", "127.0.0.36"),
    // The OTLP collector (Jaeger in the files).
    ("jaeger", "127.0.0.37"),
];

/// Kubernetes Service names and the component behind each.
const K8S_SERVICES: &[(&str, &str)] = &[
    ("mailroom-admin", "admin"),
    ("mailroom-delivery", "mda"),
    ("mailroom-queue", "mta"),
    ("mailroom-smtp", "mta"),
    ("mailroom-submission", "msa"),
    ("mailroom-pop3", "pop3"),
    ("mailroom-imap", "imap"),
    ("jaeger", "jaeger"),
];

const PASSWORD: &str = "a long passphrase";

fn host(service: &str) -> &'static str {
    HOSTS
        .iter()
        .find(|(s, _)| *s == service)
        .map(|(_, h)| *h)
        .unwrap_or_else(|| panic!("no address for {service}"))
}

/// One Mailroom service of the compose file.
struct ComposeService {
    command: Vec<String>,
    env: BTreeMap<String, String>,
    /// The healthcheck's command line (`CMD-SHELL` as `sh -c`).
    healthcheck: Vec<String>,
    /// `stop_grace_period` (compose's default: 10 s).
    grace: Duration,
}

/// The Mailroom services of the compose file, by name.
fn compose_services() -> BTreeMap<String, ComposeService> {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let json = run_tool(
        "python3 with PyYAML (.ci/run installs yamllint, which brings it)",
        Command::new("python3").args([
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            file,
        ]),
        &[0],
    );
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut out = BTreeMap::new();
    for (name, svc) in doc["services"].as_object().unwrap() {
        if svc["image"] != "mailroom:latest" {
            continue;
        }
        let command = svc["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        let env = svc["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        let test: Vec<String> = svc["healthcheck"]["test"]
            .as_array()
            .unwrap_or_else(|| panic!("the compose service {name} has no healthcheck"))
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        let healthcheck = match test[0].as_str() {
            "CMD" => test[1..].to_vec(),
            "CMD-SHELL" => vec!["sh".into(), "-c".into(), test[1..].join(" ")],
            other => panic!("{name}: healthcheck {other}"),
        };
        let grace = match svc["stop_grace_period"].as_str() {
            None => Duration::from_secs(10),
            Some(g) => Duration::from_secs(
                g.strip_suffix('s')
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| {
                        panic!("{name}: stop_grace_period {g}: write it in seconds")
                    }),
            ),
        };
        out.insert(
            name.clone(),
            ComposeService {
                command,
                env,
                healthcheck,
                grace,
            },
        );
    }
    out
}

/// One Deployment's container: its arguments, its environment (ConfigMap
/// and `env`; a secret reference as `secret:<name>/<key>`) and the secret
/// files it mounts (path → (secret, key)).
struct Manifest {
    command: Vec<String>,
    env: BTreeMap<String, String>,
    files: BTreeMap<String, (String, String)>,
    /// The HTTP probes: (`readinessProbe`/`livenessProbe`, path, port).
    probes: Vec<(String, String, u16)>,
    /// The pod's `terminationGracePeriodSeconds`.
    grace: u64,
}

/// The Mailroom Deployments of `deploy/kubernetes/`, by component.
fn kubernetes_services() -> BTreeMap<String, Manifest> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");
    let script = r#"
import glob, json, sys, yaml
docs = [d for f in sorted(glob.glob(sys.argv[1] + "/*.yaml")) for d in yaml.safe_load_all(open(f)) if d]
maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in docs if d["kind"] == "Secret"}
out = {}
for d in docs:
    if d["kind"] != "Deployment" or d["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "mailroom":
        continue
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {}
    for src in c.get("envFrom", []):
        env.update(maps[src["configMapRef"]["name"]])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = "secret:%s/%s" % (ref["name"], ref["key"])
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for m in c.get("volumeMounts", []):
        v = volumes[m["name"]]
        if "secret" not in v:
            continue
        name = v["secret"]["secretName"]
        keys = secrets.get(name) or {"tls.crt": "", "tls.key": ""}
        items = v["secret"].get("items") or [{"key": k, "path": k} for k in keys]
        for it in items:
            files[m["mountPath"] + "/" + it["path"]] = [name, it["key"]]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
    probes = []
    for kind in ("readinessProbe", "livenessProbe"):
        get = c.get(kind, {}).get("httpGet")
        if get:
            probes.append([kind, get["path"], ports.get(get["port"], get["port"])])
    out[d["metadata"]["labels"]["app.kubernetes.io/component"]] = {
        "command": c["args"], "env": env, "files": files, "probes": probes,
        "grace": pod.get("terminationGracePeriodSeconds", 30)}
print(json.dumps(out))
"#;
    let json = run_tool(
        "python3 with PyYAML (.ci/run installs yamllint, which brings it)",
        Command::new("python3").args(["-c", script, dir]),
        &[0],
    );
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    doc.as_object()
        .unwrap()
        .iter()
        .map(|(name, m)| {
            let env = m["env"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let files = m["files"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(path, v)| {
                    let v = strings(v);
                    (path.clone(), (v[0].clone(), v[1].clone()))
                })
                .collect();
            let command = strings(&m["command"]);
            let probes = m["probes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap().to_string(),
                        p[1].as_str().unwrap().to_string(),
                        p[2].as_u64().unwrap() as u16,
                    )
                })
                .collect();
            (
                name.clone(),
                Manifest {
                    command,
                    env,
                    files,
                    probes,
                    grace: m["grace"].as_u64().unwrap(),
                },
            )
        })
        .collect()
}

/// The file's environment of `service` as it applies on loopback.
fn localise(
    service: &str,
    env: &BTreeMap<String, String>,
    db_url: &str,
    secrets: &Path,
    data: &Path,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            if k == "MAILROOM_STORE__URL" {
                return (k.clone(), db_url.to_string());
            }
            let mut v = v.replace("0.0.0.0:", &format!("{}:", host(service)));
            for (name, addr) in HOSTS {
                v = v.replace(&format!("://{name}:"), &format!("://{addr}:"));
            }
            for (k8s, name) in K8S_SERVICES {
                v = v.replace(
                    &format!("://{k8s}.mailroom.svc:"),
                    &format!("://{}:", host(name)),
                );
            }
            if let Some(name) = v.strip_prefix("/run/secrets/") {
                v = secrets.join(name).display().to_string();
            }
            (k.clone(), v)
        })
        .collect();
    out.push((
        "MAILROOM_SERVER__DATA_DIR".into(),
        data.display().to_string(),
    ));
    out
}

fn curl(what: &str, args: &[&str]) -> String {
    run_tool(
        what,
        Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args),
        &[0],
    )
}

/// A health check of a deployment file, as a command line.
#[derive(Clone)]
struct Check {
    /// Whether it must fail while the database is unreachable (readiness,
    /// and compose's healthcheck, which `depends_on` waits for) or pass
    /// (liveness: a database outage must not get the process restarted).
    needs_database: bool,
    command: Vec<String>,
}

impl Check {
    async fn passes(&self) -> bool {
        let command = self.command.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(&command[0])
                .args(&command[1..])
                .output()
                .unwrap()
                .status
                .success()
        })
        .await
        .unwrap()
    }
}

/// One Mailroom service of a deployment file: its `serve` arguments, its
/// environment, and its health checks as command lines, all localised (see
/// the module docs).
struct Service {
    name: &'static str,
    command: Vec<String>,
    env: Vec<(String, String)>,
    checks: Vec<Check>,
    /// How long the orchestrator waits after SIGTERM before killing.
    grace: Duration,
}

/// The secrets a deployment needs, made as the README says: the admin
/// token, the internal secret and the MSA's credential derived from it.
struct Secrets {
    admin_token: String,
    internal_secret: String,
    msa_credential: String,
}

impl Secrets {
    /// What no span attribute may contain.
    fn values(&self) -> Vec<String> {
        vec![
            self.admin_token.trim().to_string(),
            self.internal_secret.trim().to_string(),
            self.msa_credential.trim().to_string(),
        ]
    }
}

async fn make_secrets() -> Secrets {
    let internal = mailroom_rpc::internal::InternalSecret::generate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("internal-secret");
    std::fs::write(&path, internal.to_text()).unwrap();
    let msa_credential = cli(
        &[
            "internal",
            "token",
            "msa",
            "--secret-file",
            path.to_str().unwrap(),
        ],
        "",
    )
    .await
    .unwrap();
    Secrets {
        admin_token: hex32(),
        internal_secret: internal.to_text(),
        msa_credential,
    }
}

const ORDER: [&str; 6] = ["admin", "mda", "mta", "msa", "pop3", "imap"];

/// `127.0.0.1` and `localhost` in a healthcheck (the container itself)
/// become the service's address.
fn localise_check(service: &str, check: &[String]) -> Vec<String> {
    check
        .iter()
        .map(|a| {
            a.replace("127.0.0.1", host(service))
                .replace("localhost", host(service))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_delivers_local_and_remote_mail_as_written() {
    let Some((store, db)) = TestDb::postgres().await else {
        return;
    };
    store.close().await;
    let secrets = make_secrets().await;
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    std::fs::write(s.join("admin-token"), &secrets.admin_token).unwrap();
    std::fs::write(s.join("internal-secret"), &secrets.internal_secret).unwrap();
    std::fs::write(s.join("msa-credential"), &secrets.msa_credential).unwrap();
    let compose = tokio::task::spawn_blocking(compose_services).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut services = Vec::new();
    for name in ORDER {
        let svc = compose
            .get(name)
            .unwrap_or_else(|| panic!("the compose file has no {name} service"));
        let own = data.path().join(name);
        services.push(Service {
            name,
            command: svc.command.clone(),
            env: localise(name, &svc.env, &db.url, s, &own),
            checks: vec![Check {
                needs_database: true,
                command: localise_check(name, &svc.healthcheck),
            }],
            grace: svc.grace,
        });
    }
    prove(services, &db, &s.join("admin-token"), &secrets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_manifests_deliver_local_and_remote_mail_as_written() {
    let Some((store, db)) = TestDb::postgres().await else {
        return;
    };
    store.close().await;
    let secrets = make_secrets().await;
    let root = tempfile::tempdir().unwrap();
    let tls = tempfile::tempdir().unwrap();
    let (cert, key) =
        mailroom_net::tls::ensure_self_signed(tls.path(), "mail.example.com").unwrap();
    let content = |secret: &str, key_name: &str| -> Vec<u8> {
        match (secret, key_name) {
            ("mailroom-secrets", "admin-token") => secrets.admin_token.clone().into_bytes(),
            ("mailroom-internal", "secret") => secrets.internal_secret.clone().into_bytes(),
            ("mailroom-internal", "msa-credential") => secrets.msa_credential.clone().into_bytes(),
            ("mailroom-tls", "tls.crt") => std::fs::read(&cert).unwrap(),
            ("mailroom-tls", "tls.key") => std::fs::read(&key).unwrap(),
            other => panic!("the test has no value for the secret {other:?}"),
        }
    };
    let manifests = tokio::task::spawn_blocking(kubernetes_services)
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut services = Vec::new();
    let mut admin_token = None;
    for name in ORDER {
        let m = manifests
            .get(name)
            .unwrap_or_else(|| panic!("the manifests have no {name} Deployment"));
        // The pod's mounted secret files, under a directory of its own.
        let pod = root.path().join(name);
        for (path, (secret, key_name)) in &m.files {
            let at = pod.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(&at, content(secret, key_name)).unwrap();
            if key_name == "admin-token" {
                admin_token = Some(at.clone());
            }
        }
        let mounted = |v: &str| {
            m.files
                .keys()
                .any(|f| f.rsplit_once('/').is_some_and(|(d, _)| v.starts_with(d)))
        };
        let mut env = BTreeMap::new();
        for (k, v) in &m.env {
            let v = match v.strip_prefix("secret:") {
                Some("mailroom-secrets/store-url") => db.url.clone(),
                Some(other) => panic!("{name}: no test value for the secret {other}"),
                None if mounted(v) => pod.join(v.trim_start_matches('/')).display().to_string(),
                None => v.clone(),
            };
            env.insert(k.clone(), v);
        }
        let kinds: BTreeSet<&str> = m.probes.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            BTreeSet::from(["livenessProbe", "readinessProbe"]),
            "{name}: the Deployment needs HTTP readiness and liveness probes"
        );
        let checks = m
            .probes
            .iter()
            .map(|(kind, path, port)| Check {
                needs_database: kind == "readinessProbe",
                command: vec![
                    "curl".to_string(),
                    "-fsS".into(),
                    format!("http://{}:{port}{path}", host(name)),
                ],
            })
            .collect();
        let own = data.path().join(name);
        services.push(Service {
            name,
            command: m.command.clone(),
            env: localise(name, &env, &db.url, root.path(), &own),
            checks,
            grace: Duration::from_secs(m.grace),
        });
    }
    let token = admin_token.expect("the admin Deployment mounts its token");
    prove(services, &db, &token, &secrets).await;
}

/// Runs one service as its own process when started by [`spawn_service`]
/// (`TOPOLOGY_SERVICE_ARGS` holds its arguments): `mailroom serve …` as the
/// binary runs it, with only the file's environment; exits with its status.
#[test]
#[ignore = "a service's process, started by the topology tests themselves"]
fn service_process() {
    mailroom_tests::serve_from_env("TOPOLOGY_SERVICE_ARGS");
}

/// A service's process; killed if the test ends without stopping it.
struct Process {
    name: &'static str,
    child: Option<std::process::Child>,
    log: PathBuf,
    grace: Duration,
}

impl Process {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as `docker compose stop` and Kubernetes send; the process
    /// must end cleanly (status 0) within the grace period.
    async fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        run_tool("kill", Command::new("kill").args(["-TERM", &pid]), &[0]);
        let grace = self.grace;
        let (status, child) = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + grace;
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return (Some(status), child);
                }
                if std::time::Instant::now() > deadline {
                    return (None, child);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .unwrap();
        self.child = Some(child);
        let status = status
            .unwrap_or_else(|| panic!("{} outlived its grace period after SIGTERM", self.name));
        assert!(
            status.success(),
            "{} did not stop cleanly ({status}):\n{}",
            self.name,
            self.log()
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child
            && child.try_wait().ok().flatten().is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `service` as a process of its own (this test binary running only
/// [`service_process`]) and waits for its banner: its ports are bound.
async fn spawn_service(service: &Service, dir: &Path) -> Process {
    let log = dir.join(format!("{}.log", service.name));
    let cwd = dir.join(format!("{}.cwd", service.name));
    std::fs::create_dir_all(&cwd).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "service_process",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env_clear()
        .envs(service.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TOPOLOGY_SERVICE_ARGS", service.command.join("\u{1f}"))
        .current_dir(&cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut process = Process {
        name: service.name,
        child: Some(child),
        log,
        grace: service.grace,
    };
    // Its output is read to the end ("shutting down …" included).
    if !mailroom_tests::banner_printed(stdout).await {
        if let Some(c) = &mut process.child {
            let _ = c.kill();
        }
        panic!("{} did not start:\n{}", service.name, process.log());
    }
    process
}

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    /// Attributes, and the attributes of the span's events (log lines).
    attributes: Vec<(String, String)>,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value_text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// An OTLP/gRPC collector standing for Jaeger: keeps every span exported.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Exported>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| value_text(&kv.value))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let attributes = span
                    .attributes
                    .iter()
                    .chain(span.events.iter().flat_map(|e| &e.attributes))
                    .map(|kv| (kv.key.clone(), value_text(&kv.value)))
                    .collect();
                out.push(Exported {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attributes,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The two topologies use the same addresses and ports: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts `services` in order, each as its own process, then sends and
/// reads mail through them and checks the message's trace.
async fn prove(services: Vec<Service>, db: &TestDb, token_file: &Path, secrets: &Secrets) {
    let _turn = ONE_AT_A_TIME.lock().await;
    // The remote domain: its MX is a sink on 127.0.0.2 that defers the
    // first attempt, so the message's trace spans a retry.
    let sink = SmtpSink::bind(
        "127.0.0.2",
        0,
        SinkScript {
            data_end: Box::new(|n| {
                SinkReply::Say(if n == 0 {
                    "451 4.3.0 try again later".into()
                } else {
                    "250 2.0.0 queued".into()
                })
            }),
            ..SinkScript::default()
        },
    )
    .await;
    let dns = TestDns::start(
        "remote.test",
        &[
            ("@", DnsRecord::Mx(10, "mx.remote.test".into())),
            ("mx", DnsRecord::A("127.0.0.2".parse().unwrap())),
        ],
    )
    .await;
    // Jaeger's OTLP/gRPC port, on the address standing for it.
    let collector = Collector::default();
    let otlp = tokio::net::TcpListener::bind((host("jaeger"), 4317))
        .await
        .unwrap();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(otlp)),
    );
    // Start in the file's dependency order.
    let logs = tempfile::tempdir().unwrap();
    let mut processes = Vec::new();
    let mut checks = Vec::new();
    for mut service in services {
        let name = service.name;
        assert_eq!(service.command[0], "serve", "{name}: {:?}", service.command);
        if name == "mta" {
            service.env.push((
                "MAILROOM_MTA__DNS_SERVERS".into(),
                format!("[\"{}\"]", dns.addr),
            ));
            service.env.push((
                "MAILROOM_MTA__OUTBOUND_PORT".into(),
                sink.addr.port().to_string(),
            ));
            service
                .env
                .push(("MAILROOM_MTA__FIRST_RETRY_SECS".into(), "1".into()));
        }
        let config = mailroom_config::Config::from_sources(None, service.env.clone())
            .unwrap_or_else(|e| panic!("{name}: the file's settings do not check: {e}"));
        assert!(
            service.grace > Duration::from_secs(config.server.shutdown_grace_secs),
            "{name}: the orchestrator's grace period ({:?}) must exceed the drain time ({}s)",
            service.grace,
            config.server.shutdown_grace_secs
        );
        processes.push(spawn_service(&service, logs.path()).await);
        checks.push((name, std::mem::take(&mut service.checks)));
    }

    // Every process is healthy by the file's own checks.
    for (name, checks) in &checks {
        for check in checks {
            assert!(check.passes().await, "{name}: {:?} fails", check.command);
        }
    }

    // The operator's first steps, through the admin service.
    let admin = format!("http://{}:9425", host("admin"));
    let run = |args: &[&str], stdin: &str| {
        let mut all = vec![
            "--admin-url".to_string(),
            admin.clone(),
            "--token-file".into(),
            token_file.display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let stdin = stdin.to_string();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            cli(&refs, &stdin).await
        }
    };
    run(&["domain", "add", "example.com"], "").await.unwrap();
    for user in ["alice@example.com", "bob@example.com"] {
        run(&["user", "add", user], &format!("{PASSWORD}\n"))
            .await
            .unwrap();
    }

    // alice submits one message to bob and to carol at the remote domain.
    let msg_dir = tempfile::tempdir().unwrap();
    let msg = msg_dir.path().join("hello.txt");
    std::fs::write(
        &msg,
        "From: alice@example.com\r\nTo: bob@example.com, carol@remote.test\r\n\
         Subject: through compose\r\nMessage-ID: <compose-1@example.com>\r\n\r\n\
         Hi! The body says plum-umbrella-42.\r\n",
    )
    .unwrap();
    let submission = format!("smtp://{}:2525", host("msa"));
    let user = format!("alice@example.com:{PASSWORD}");
    let (sub, u, m) = (submission.clone(), user.clone(), msg.display().to_string());
    tokio::task::spawn_blocking(move || {
        curl(
            "curl (submission)",
            &[
                "--ssl-reqd",
                "--insecure",
                "--url",
                &sub,
                "--user",
                &u,
                "--mail-from",
                "alice@example.com",
                "--mail-rcpt",
                "bob@example.com",
                "--mail-rcpt",
                "carol@remote.test",
                "--upload-file",
                &m,
            ],
        )
    })
    .await
    .unwrap();

    // bob reads it over IMAP (STARTTLS: the file turns off plaintext LOGIN).
    let bob = format!("bob@example.com:{PASSWORD}");
    let imap = format!("imap://{}:1143/INBOX;UID=1", host("imap"));
    let pop3 = format!("pop3://{}:1110/1", host("pop3"));
    let store = mailroom_store::Store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let mut read = String::new();
    wait_for("the local delivery", Duration::from_secs(30), async || {
        let (b, url) = (bob.clone(), imap.clone());
        read = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sS", "--ssl-reqd", "--insecure", "--user", &b, &url])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        })
        .await
        .unwrap();
        read.contains("through compose")
    })
    .await;
    let (b, url) = (bob.clone(), pop3.clone());
    let popped = tokio::task::spawn_blocking(move || {
        curl(
            "curl (POP3)",
            &["--ssl-reqd", "--insecure", "--user", &b, &url],
        )
    })
    .await
    .unwrap();
    assert!(
        popped.contains("Message-ID: <compose-1@example.com>"),
        "{popped}"
    );
    // carol's copy reached the remote MX, at the second attempt.
    wait_for(
        "the relay to the remote MX",
        Duration::from_secs(30),
        async || {
            sink.received().iter().any(|m| {
                m.answered.starts_with("250")
                    && String::from_utf8_lossy(&m.data).contains("through compose")
            })
        },
    )
    .await;
    wait_for("the queue to empty", Duration::from_secs(30), async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    store.close().await;

    // The database goes away: the readiness checks (and compose's
    // healthcheck) fail, the liveness probes do not; it comes back, and so
    // does readiness, without a restart.
    db.set_outage(true).await;
    for (name, checks) in &checks {
        for check in checks {
            let limit = Duration::from_secs(20);
            wait_for(
                &format!("{name}: {:?} to say so", check.command),
                limit,
                async || check.passes().await != check.needs_database,
            )
            .await;
        }
    }
    db.set_outage(false).await;
    for (name, checks) in &checks {
        for check in checks {
            let limit = Duration::from_secs(20);
            wait_for(
                &format!("{name}: {:?} to pass", check.command),
                limit,
                async || check.passes().await,
            )
            .await;
        }
    }

    // The trace id, from the Received header of the message bob read.
    let at = read
        .find("(trace ")
        .unwrap_or_else(|| panic!("no trace id in the Received header:\n{read}"));
    let trace_id = read[at + 7..at + 7 + 32].to_string();
    assert!(
        trace_id.chars().all(|c| c.is_ascii_hexdigit()) && trace_id != "0".repeat(32),
        "{trace_id}"
    );

    // The processes stop as the orchestrator stops them; each flushes its
    // spans on the way out.
    let mut logs_by_service = BTreeMap::new();
    for p in processes {
        let name = p.name;
        let log = p.log.clone();
        p.stop().await;
        logs_by_service.insert(name, std::fs::read_to_string(log).unwrap());
    }
    serving.abort();

    // The message's log lines in each process name its trace.
    for (service, line) in [
        ("msa", "message queued"),
        ("mta", "\"queued\""),
        ("mta", "relay attempt"),
        ("mda", "\"delivered\""),
    ] {
        let log = &logs_by_service[service];
        assert!(
            log.lines()
                .any(|l| l.contains(line) && l.contains(&trace_id)),
            "{service}: no {line} log line with the trace id {trace_id}:\n{log}"
        );
    }

    check_trace(&collector.0.lock().unwrap(), &trace_id, secrets);
}

/// The message's one trace: rooted in the MSA's session, reaching the MTA
/// (enqueue, the local delivery, both relay attempts with their MX lookup
/// and SMTP session) and the MDA, every span linked to its parent; no span
/// anywhere carries a secret or the message's content.
fn check_trace(spans: &[Exported], trace_id: &str, secrets: &Secrets) {
    let mut forbidden = secrets.values();
    forbidden.extend([
        PASSWORD.to_string(),
        base64_encode(format!("\0alice@example.com\0{PASSWORD}").as_bytes()),
        base64_encode(PASSWORD.as_bytes()),
        "plum-umbrella-42".to_string(),
        "through compose".to_string(),
    ]);
    for span in spans {
        for (key, value) in &span.attributes {
            for secret in &forbidden {
                assert!(
                    !value.contains(secret.as_str()),
                    "{} {}: the attribute {key} holds {secret:?}",
                    span.service,
                    span.name
                );
            }
        }
    }

    let trace: Vec<&Exported> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let listing = || {
        trace
            .iter()
            .map(|s| format!("{} {} {:?}\n", s.service, s.name, s.attributes))
            .collect::<String>()
    };
    let by_id: BTreeMap<&str, &Exported> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let roots: Vec<&&Exported> = trace.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root span:\n{}", listing());
    assert_eq!(
        (roots[0].service.as_str(), roots[0].name.as_str()),
        ("mailroom-msa", "connection"),
        "the MSA's session is the root"
    );
    for s in &trace {
        assert!(
            s.parent.is_empty() || by_id.contains_key(s.parent.as_str()),
            "{} {}: its parent is not in the trace:\n{}",
            s.service,
            s.name,
            listing()
        );
    }
    let find = |service: &str, name: &str| -> Vec<&Exported> {
        trace
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .copied()
            .collect()
    };
    let one = |service: &str, name: &str| -> &Exported {
        let found = find(service, name);
        assert_eq!(found.len(), 1, "{service} {name}:\n{}", listing());
        found[0]
    };
    let parent = |s: &Exported| by_id[s.parent.as_str()];
    let has_ancestor = |s: &Exported, a: &Exported| {
        let mut at = s;
        while !at.parent.is_empty() {
            at = parent(at);
            if at.span_id == a.span_id {
                return true;
            }
        }
        false
    };

    let message = one("mailroom-msa", "smtp.message");
    assert_eq!(message.attr("message_id"), Some("<compose-1@example.com>"));
    assert_eq!(message.attr("outcome"), Some("queued"));
    let queue_id = message.attr("queue_id").expect("the queue id").to_string();
    let enqueue = one("mailroom-mta", "Queue.Enqueue");
    assert_eq!(
        enqueue.parent, message.span_id,
        "Enqueue continues the MSA's span"
    );

    let local = one("mailroom-mta", "mta.local_delivery");
    assert_eq!(local.parent, enqueue.span_id);
    assert_eq!(local.attr("queue_id"), Some(queue_id.as_str()));
    assert_eq!(local.attr("outcome"), Some("delivered"));
    let deliver = one("mailroom-mda", "Delivery.Deliver");
    assert!(
        has_ancestor(deliver, local),
        "Deliver under the delivery attempt"
    );

    let mut relays = find("mailroom-mta", "mta.relay");
    relays.sort_by_key(|s| s.attr("outcome").map(str::to_string));
    let outcomes: Vec<_> = relays.iter().map(|s| s.attr("outcome")).collect();
    assert_eq!(
        outcomes,
        [Some("deferred"), Some("delivered")],
        "the relay deferred, then delivered at the retry:\n{}",
        listing()
    );
    for relay in &relays {
        assert_eq!(
            relay.parent, enqueue.span_id,
            "a later attempt joins the trace"
        );
        assert_eq!(relay.attr("queue_id"), Some(queue_id.as_str()));
        assert_eq!(relay.attr("domain"), Some("remote.test"));
        let lookups: Vec<_> = find("mailroom-mta", "mta.mx_lookup")
            .into_iter()
            .filter(|s| s.parent == relay.span_id)
            .collect();
        assert_eq!(lookups.len(), 1, "an MX lookup per attempt:\n{}", listing());
        assert_eq!(lookups[0].attr("domain"), Some("remote.test"));
        let sessions: Vec<_> = find("mailroom-mta", "smtp.outbound")
            .into_iter()
            .filter(|s| s.parent == relay.span_id)
            .collect();
        assert_eq!(
            sessions.len(),
            1,
            "an SMTP session per attempt:\n{}",
            listing()
        );
        assert!(
            sessions[0]
                .attr("mx")
                .is_some_and(|mx| mx.starts_with("mx.remote.test")),
            "{:?}",
            sessions[0]
        );
    }
}

fn hex32() -> String {
    mailroom_rpc::internal::InternalSecret::generate()
        .to_text()
        .trim()
        .to_string()
}
