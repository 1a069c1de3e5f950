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
//! What the test changes, and only this: `0.0.0.0` and the service names
//! in URLs become each service's loopback address; the store URL becomes
//! the test database's; `/run/secrets/<name>` becomes the test's secrets
//! directory; each service gets a data directory of its own (the image
//! sets `MAILROOM_SERVER__DATA_DIR`); and the MTA is pointed at the test's
//! DNS server and sink port for the remote domain. For Kubernetes, the
//! Services' names stand for their components, a Secret's value is the
//! test's (the store URL, the generated secrets, a self-signed pair for
//! `mailroom-tls`), and mounted files live under a directory per pod.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mailroom_store::testing::TestDb;
use mailroom_tests::{DnsRecord, SinkScript, SmtpSink, TestDns, cli, run_tool, wait_for};

/// The loopback address standing for each compose service.
const HOSTS: &[(&str, &str)] = &[
    ("admin", "127.0.0.31"),
    ("mda", "127.0.0.32"),
    ("mta", "127.0.0.33"),
    ("msa", "127.0.0.34"),
    ("pop3", "127.0.0.35"),
    ("imap", "127.0.0.36"),
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
];

const PASSWORD: &str = "a long passphrase";

fn host(service: &str) -> &'static str {
    HOSTS
        .iter()
        .find(|(s, _)| *s == service)
        .map(|(_, h)| *h)
        .unwrap_or_else(|| panic!("no address for {service}"))
}

/// The Mailroom services of the compose file: name → (command, environment).
fn compose_services() -> BTreeMap<String, (Vec<String>, BTreeMap<String, String>)> {
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
        out.insert(name.clone(), (command, env));
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
    out[d["metadata"]["labels"]["app.kubernetes.io/component"]] = {"command": c["args"], "env": env, "files": files}
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
            (
                name.clone(),
                Manifest {
                    command,
                    env,
                    files,
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

/// One Mailroom service of a deployment file: its `serve` arguments and
/// its environment, localised (see the module docs).
struct Service {
    name: &'static str,
    command: Vec<String>,
    env: Vec<(String, String)>,
}

/// The secrets a deployment needs, made as the README says: the admin
/// token, the internal secret and the MSA's credential derived from it.
struct Secrets {
    admin_token: String,
    internal_secret: String,
    msa_credential: String,
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
        let (command, env) = compose
            .get(name)
            .unwrap_or_else(|| panic!("the compose file has no {name} service"));
        let own = data.path().join(name);
        services.push(Service {
            name,
            command: command.clone(),
            env: localise(name, env, &db.url, s, &own),
        });
    }
    prove(services, &db, &s.join("admin-token")).await;
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
        let own = data.path().join(name);
        services.push(Service {
            name,
            command: m.command.clone(),
            env: localise(name, &env, &db.url, root.path(), &own),
        });
    }
    let token = admin_token.expect("the admin Deployment mounts its token");
    prove(services, &db, &token).await;
}

/// The two topologies use the same addresses and ports: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts `services` in order, then sends and reads mail through them.
async fn prove(services: Vec<Service>, db: &TestDb, token_file: &Path) {
    let _turn = ONE_AT_A_TIME.lock().await;
    // The remote domain: its MX is a sink on 127.0.0.2.
    let sink = SmtpSink::bind("127.0.0.2", 0, SinkScript::default()).await;
    let dns = TestDns::start(
        "remote.test",
        &[
            ("@", DnsRecord::Mx(10, "mx.remote.test".into())),
            ("mx", DnsRecord::A("127.0.0.2".parse().unwrap())),
        ],
    )
    .await;
    // Start in the file's dependency order.
    let mut stacks = Vec::new();
    for Service {
        name,
        command,
        mut env,
    } in services
    {
        assert_eq!(command[0], "serve", "{name}: {command:?}");
        if name == "mta" {
            env.push((
                "MAILROOM_MTA__DNS_SERVERS".into(),
                format!("[\"{}\"]", dns.addr),
            ));
            env.push((
                "MAILROOM_MTA__OUTBOUND_PORT".into(),
                sink.addr.port().to_string(),
            ));
        }
        let config = mailroom_config::Config::from_sources(None, env)
            .unwrap_or_else(|e| panic!("{name}: the file's settings do not check: {e}"));
        let only: mailroom::ServiceName = clap::ValueEnum::from_str(&command[1], true).unwrap();
        let stack = mailroom::start(config, Some(only))
            .await
            .unwrap_or_else(|e| panic!("{name} does not start: {e:#}"));
        stacks.push(stack);
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
         Subject: through compose\r\nMessage-ID: <compose-1@example.com>\r\n\r\nHi!\r\n",
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
    wait_for("the local delivery", Duration::from_secs(30), async || {
        let (b, url) = (bob.clone(), imap.clone());
        tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sS", "--ssl-reqd", "--insecure", "--user", &b, &url])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("through compose"))
                .unwrap_or(false)
        })
        .await
        .unwrap()
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
    // carol's copy reached the remote MX.
    wait_for(
        "the relay to the remote MX",
        Duration::from_secs(30),
        async || {
            sink.received()
                .iter()
                .any(|m| String::from_utf8_lossy(&m.data).contains("through compose"))
        },
    )
    .await;
    wait_for("the queue to empty", Duration::from_secs(30), async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    for stack in stacks {
        stack.stop(Duration::from_secs(5)).await;
    }
}

fn hex32() -> String {
    mailroom_rpc::internal::InternalSecret::generate()
        .to_text()
        .trim()
        .to_string()
}
