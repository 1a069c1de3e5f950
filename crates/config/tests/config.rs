//! Configuration loading as an operator meets it: files, overrides, errors.

use std::path::Path;

use mailroom_config::{Config, LogFormat};

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, mailroom_config::ConfigErrors> {
    Config::from_sources(
        Some((Path::new("test.toml"), text)),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn no_file_gives_the_defaults() {
    let c = Config::from_sources(None, Vec::new()).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9425");
    assert!(c.store_url().starts_with("sqlite://"));
    assert!(c.store_url().ends_with("mailroom.db"));
}

#[test]
fn every_error_is_reported_at_once_with_its_key() {
    let text = r#"
[server]
hostname = "bad host!"
shutdown_grace_secs = "ten"
data_dirr = "/tmp"

[store]
url = "mysql://nope"
max_connections = 0

[tls]
cert = "/nonexistent/cert.pem"

[limits]
max_connections = 5
max_connections_per_ip = 6

[admin]
listen = "not an address"

[telemetry]
log_format = "xml"

[smtpp]
port = 25
"#;
    let errs = load(text, &[("MAILROOM_LIMITS__MAX_CONNECTIONS", "many")]).unwrap_err();
    let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
    for expected in [
        "server.hostname",
        "server.shutdown_grace_secs",
        "server.data_dirr",
        "store.url",
        "store.max_connections",
        "tls.cert",
        "tls.key",
        "limits.max_connections",
        "admin.listen",
        "telemetry.log_format",
        "smtpp",
    ] {
        assert!(keys.contains(&expected), "no error for {expected}: {errs}");
    }
    let env_err = errs
        .0
        .iter()
        .find(|e| e.key == "limits.max_connections")
        .unwrap();
    assert_eq!(
        env_err.source.as_deref(),
        Some("MAILROOM_LIMITS__MAX_CONNECTIONS")
    );
    let shown = errs.to_string();
    assert!(shown.contains("unknown key"), "{shown}");
    assert!(shown.starts_with(&format!("{} configuration errors", errs.0.len())));
}

#[test]
fn a_syntax_error_names_the_file() {
    let errs = load("[server\nhostname = 1", &[]).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].key, "test.toml");
    assert!(errs.0[0].message.contains("not valid TOML"));
}

#[test]
fn environment_overrides_the_file() {
    let c = load(
        "[telemetry]\nlog_format = \"human\"\n[store]\nmax_connections = 3\n",
        &[
            ("MAILROOM_TELEMETRY__LOG_FORMAT", "json"),
            ("MAILROOM_STORE__URL", "postgres://postgres@127.0.0.1/test"),
            ("MAILROOM_STORE__MAX_CONNECTIONS", "7"),
            ("MAILROOM_ADMIN__LISTEN", "0.0.0.0:9000"),
            // Not configuration: CLI variables have no double underscore.
            ("MAILROOM_ADMIN_TOKEN", "secret"),
        ],
    )
    .unwrap();
    assert_eq!(c.telemetry.log_format, LogFormat::Json);
    assert_eq!(c.store_url(), "postgres://postgres@127.0.0.1/test");
    assert_eq!(c.store.max_connections, 7);
    assert_eq!(c.admin.listen.port(), 9000);
}

#[test]
fn an_unknown_environment_key_is_an_error() {
    let errs = load("", &[("MAILROOM_STORE__URI", "x")]).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].key, "store.uri");
    assert_eq!(errs.0[0].source.as_deref(), Some("MAILROOM_STORE__URI"));
}

/// The example file at the root must load cleanly and mention every key, so
/// that operators can trust it as the reference.
#[test]
fn the_example_file_documents_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mailroom.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    Config::from_sources(Some((&path, &text)), Vec::new()).unwrap();
    let mut section = String::new();
    let mut documented = Vec::new();
    for line in text.lines() {
        // Section headers count commented out too: the per-domain tables
        // of [sender_auth] are shown that way.
        let body = line.trim().trim_start_matches('#').trim();
        if let Some(name) = body.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if let Some((key, _)) = body.split_once(" = ")
            && !key.contains(' ')
        {
            if section.starts_with("sender_auth.domains.") {
                // A domain table: its keys are SenderAuthDomain's.
                assert!(
                    mailroom_config::SenderAuthDomain::KEYS.contains(&key),
                    "mailroom.example.toml shows {key} in {section}, which has no such key"
                );
                continue;
            }
            documented.push(format!("{section}.{key}"));
        }
    }
    // Every domain key is a global key of the same name and meaning.
    for key in mailroom_config::SenderAuthDomain::KEYS {
        assert!(documented.contains(&format!("sender_auth.{key}")), "{key}");
    }
    for key in Config::all_keys() {
        assert!(
            documented.contains(&key),
            "{key} is missing from mailroom.example.toml"
        );
    }
    for key in &documented {
        assert!(
            Config::all_keys().contains(key),
            "mailroom.example.toml documents {key}, which does not exist"
        );
    }
}

/// Every `MAILROOM_<SECTION>__<KEY>` that the deployment files set must be a
/// real setting: a typo there would otherwise only show at start in a cluster.
#[test]
fn deployment_files_only_set_known_keys() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![
        root.join("docker-compose.yml"),
        root.join("deploy/Dockerfile"),
    ];
    // The manifests, subfolders (the demo PostgreSQL) included.
    let mut dirs = vec![root.join("deploy/kubernetes")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let known = Config::all_keys();
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices("MAILROOM_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let Some((section, key)) = name["MAILROOM_".len()..].split_once("__") else {
                continue;
            };
            let dotted = format!("{}.{}", section.to_lowercase(), key.to_lowercase());
            assert!(
                known.contains(&dotted),
                "{}: {name} is not a setting",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 5, "the deployment files set no settings?");
}

/// `[pop3]`: the defaults, overrides from the environment, and its
/// listeners in the duplicate-address check.
#[test]
fn pop3_settings_and_listener_clashes() {
    let c = Config::default();
    assert_eq!(c.pop3.listen[0].to_string(), "127.0.0.1:1110");
    assert_eq!(c.pop3.listen_tls[0].to_string(), "127.0.0.1:1995");
    assert_eq!(c.pop3.idle_timeout_secs, 600);
    assert!(c.pop3.allow_plaintext_auth_on_loopback);
    assert_eq!(c.pop3.max_auth_failures, 3);
    let c = load(
        "[pop3]\nidle_timeout_secs = 900\n",
        &[("MAILROOM_POP3__ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK", "false")],
    )
    .unwrap();
    assert_eq!(c.pop3.idle_timeout_secs, 900);
    assert!(!c.pop3.allow_plaintext_auth_on_loopback);
    let errs = load(
        "[pop3]\nlisten = [\"127.0.0.1:2525\"]\nidle_timeout_secs = 0\n",
        &[],
    )
    .unwrap_err();
    let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"pop3.listen"), "{keys:?}");
    assert!(keys.contains(&"pop3.idle_timeout_secs"), "{keys:?}");
}

/// `[sender_auth.domains."…"]`: each key optional and falling back to the
/// global one, every bad table reported with its domain, names validated.
#[test]
fn sender_auth_domain_policies() {
    use mailroom_config::FailureHandling as F;
    let c = load(
        r#"
[sender_auth]
spf_fail_without_dmarc = "junk"
trusted_relays = ["192.0.2.1"]

[sender_auth.domains."Strict.Example"]
dmarc_quarantine = "reject"
spf_fail_without_dmarc = "reject"

[sender_auth.domains."bücher.example"]
check_inbound = false
trusted_relays = []
"#,
        &[],
    )
    .unwrap();
    let handled = |d: &str| {
        let p = c.sender_auth.domain_policy(d);
        (p.dmarc_reject, p.dmarc_quarantine, p.spf_fail_without_dmarc)
    };
    assert_eq!(handled("other.example"), (F::Reject, F::Junk, F::Junk));
    assert_eq!(handled("strict.example"), (F::Reject, F::Reject, F::Reject));
    let global = c.sender_auth.domain_policy("other.example");
    assert!(global.check_inbound);
    let strict = c.sender_auth.domain_policy("strict.example");
    assert_eq!(strict.trusted_relays, global.trusted_relays);
    let idn = c.sender_auth.domain_policy("xn--bcher-kva.example");
    assert!(!idn.check_inbound);
    assert!(idn.trusted_relays.is_empty());
    assert_eq!(idn.spf_fail_without_dmarc, F::Junk);
    assert_eq!(
        c.sender_auth.policy_domains(),
        vec![
            "strict.example".to_string(),
            "xn--bcher-kva.example".to_string()
        ]
    );

    // From the environment, as an inline table.
    let c = load(
        "",
        &[(
            "MAILROOM_SENDER_AUTH__DOMAINS",
            r#"{ "a.example" = { dmarc_reject = "mark" } }"#,
        )],
    )
    .unwrap();
    assert_eq!(
        c.sender_auth.domain_policy("a.example").dmarc_reject,
        F::Mark
    );

    let errs = load(
        r#"
[sender_auth.domains."a.example"]
dmarc_rejct = "junk"
[sender_auth.domains."b.example"]
dmarc_reject = "bounce"
"#,
        &[],
    )
    .unwrap_err();
    let shown = errs.to_string();
    assert!(
        shown.contains("sender_auth.domains: \"a.example\": unknown field `dmarc_rejct`"),
        "{shown}"
    );
    assert!(
        shown.contains("\"b.example\": unknown variant `bounce`"),
        "{shown}"
    );
    let errs = load(
        r#"
[sender_auth.domains."not a domain!"]
[sender_auth.domains."C.example"]
[sender_auth.domains."c.example"]
"#,
        &[],
    )
    .unwrap_err();
    let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "sender_auth.domains.\"c.example\"",
            "sender_auth.domains.\"not a domain!\""
        ],
        "{errs}"
    );
}
