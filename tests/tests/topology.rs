//! `docker-compose.yml` as written delivers mail (issue 16): each Mailroom
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
//! DNS server and sink port for the remote domain.

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
            v = v.replace("/run/secrets/", &format!("{}/", secrets.display()));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_delivers_local_and_remote_mail_as_written() {
    let Some((store, db)) = TestDb::postgres().await else {
        return;
    };
    store.close().await;
    let services = tokio::task::spawn_blocking(compose_services).await.unwrap();
    for name in ["admin", "mda", "mta", "msa", "pop3", "imap"] {
        assert!(
            services.contains_key(name),
            "the compose file has no {name} service"
        );
    }
    // The secrets, made as the README says.
    let secrets = tempfile::tempdir().unwrap();
    let s = secrets.path();
    std::fs::write(s.join("admin-token"), hex32()).unwrap();
    let internal = mailroom_rpc::internal::InternalSecret::generate();
    std::fs::write(s.join("internal-secret"), internal.to_text()).unwrap();
    let token = cli(
        &[
            "internal",
            "token",
            "msa",
            "--secret-file",
            s.join("internal-secret").to_str().unwrap(),
        ],
        "",
    )
    .await
    .unwrap();
    std::fs::write(s.join("msa-credential"), token).unwrap();

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
    let mut dirs = Vec::new();
    for name in ["admin", "mda", "mta", "msa", "pop3", "imap"] {
        let (command, env) = &services[name];
        assert_eq!(command[0], "serve", "{name}: {command:?}");
        let data = tempfile::tempdir().unwrap();
        let mut env = localise(name, env, &db.url, s, data.path());
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
        dirs.push(data);
    }

    // The operator's first steps, through the admin service.
    let admin = format!("http://{}:9425", host("admin"));
    let token_file = s.join("admin-token");
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
    drop(dirs);
}

fn hex32() -> String {
    mailroom_rpc::internal::InternalSecret::generate()
        .to_text()
        .trim()
        .to_string()
}
