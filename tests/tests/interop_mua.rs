//! `mailroom mail …` against servers nobody on this project wrote: a
//! throw-away Dovecot (IMAP with STARTTLS, POP3 with STLS, SCRAM-SHA-256 and
//! PLAIN) in a temporary directory, and a throw-away Postfix submission
//! service authenticating through Dovecot's SASL and delivering into the
//! Maildir that Dovecot serves. `.ci/run` installs `dovecot-imapd`,
//! `dovecot-pop3d` and `postfix`; a missing one fails the test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mailroom_tests::{mail_command, wait_for};

const USER: &str = "ann@interop.test";
const PASS: &str = "dovecot pass";

/// Dovecot running until dropped.
struct Dovecot {
    child: Child,
    imap: u16,
    pop3: u16,
    dir: tempfile::TempDir,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_dovecot() -> Dovecot {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("tls")).unwrap();
    let (cert, key) =
        mailroom_net::tls::ensure_self_signed(&root.join("tls"), "localhost").unwrap();
    let home = root.join("home");
    std::fs::create_dir_all(home.join("Maildir/new")).unwrap();
    std::fs::create_dir_all(home.join("Maildir/cur")).unwrap();
    std::fs::create_dir_all(home.join("Maildir/tmp")).unwrap();
    // The mail processes run as nobody; Dovecot's own directories are root's.
    let chown = |p: &Path| {
        Command::new("chown")
            .args(["-R", "nobody:nogroup", p.to_str().unwrap()])
            .status()
            .unwrap()
    };
    std::fs::write(
        root.join("passwd"),
        format!("{USER}:{{PLAIN}}{PASS}::::::\n"),
    )
    .unwrap();
    let (imap, pop3) = (free_port(), free_port());
    let config = format!(
        r#"
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain scram-sha-256
first_valid_uid = 1
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={home}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service auth {{
  unix_listener auth-client {{
    mode = 0666
  }}
}}
"#,
        root = root.display(),
        cert = cert.display(),
        key = key.display(),
        home = home.display(),
    );
    let conf = root.join("dovecot.conf");
    std::fs::write(&conf, config).unwrap();
    // A message for the maildrop, with a non-ASCII attachment name.
    let message = b"From: Bob <bob@interop.test>\r\nTo: ann@interop.test\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <d1@interop.test>\r\nDate: Thu, 3 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo Ann.\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''%C3%9Cbersicht.bin\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--b--\r\n";
    std::fs::write(home.join("Maildir/new/1.interop:2,"), message).unwrap();
    chown(&home);
    let child = Command::new("dovecot")
        .args(["-F", "-c", conf.to_str().unwrap()])
        .stdin(Stdio::null())
        // Its daemons must not hold the test's output pipes open.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("dovecot could not be run ({e}); .ci/run installs it"));
    Dovecot {
        child,
        imap,
        pop3,
        dir,
    }
}

async fn mail(d: &Dovecot, args: &[&str]) -> (u8, Vec<u8>, String) {
    mail_as(d, USER, args).await
}

async fn mail_as(d: &Dovecot, user: &str, args: &[&str]) -> (u8, Vec<u8>, String) {
    let cert = d.dir.path().join("tls/cert.pem");
    let imap = d.imap.to_string();
    let pop3 = d.pop3.to_string();
    let mut argv = vec![
        "mail",
        "--server",
        "localhost",
        "--user",
        user,
        "--security",
        "starttls",
        "--imap-port",
        &imap,
        "--pop3-port",
        &pop3,
        "--ca-file",
        cert.to_str().unwrap(),
        "--timeout",
        "20",
    ];
    argv.extend(args);
    let argv = argv.into_iter().map(str::to_string).collect();
    let env = |name: &str| (name == "MAILROOM_MAIL_PASSWORD").then(|| PASS.to_string());
    let out = mail_command(argv, b"", &env, false).await;
    (out.code, out.stdout, out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_read_save_flag_and_folders_against_dovecot() {
    let d = start_dovecot();
    wait_for("dovecot to listen", Duration::from_secs(20), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", d.imap))
            .await
            .is_ok()
            && tokio::net::TcpStream::connect(("127.0.0.1", d.pop3))
                .await
                .is_ok()
    })
    .await;
    let log = || std::fs::read_to_string(d.dir.path().join("dovecot.log")).unwrap_or_default();

    for protocol in [&[][..], &["--pop3"]] {
        let with = |args: &[&'static str]| [protocol, args].concat();
        let (code, out, err) = mail(&d, &with(&["list", "--json"])).await;
        assert_eq!(code, 0, "{protocol:?} {err}\n{}", log());
        let listed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(listed["messages"][0]["subject"], "Grüße", "{listed}");
        let id = listed["messages"][0]["id"].to_string();
        let (code, out, err) = mail(&d, &[protocol, &["read", &id, "--peek"]].concat()).await;
        assert_eq!(code, 0, "{err}");
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(
            out.contains("Hallo Ann.") && out.contains("Übersicht.bin"),
            "{out}"
        );
        let saved = tempfile::tempdir().unwrap();
        let dir = saved.path().to_str().unwrap();
        let (code, _, err) = mail(
            &d,
            &[protocol, &["attachments", &id, "--dir", dir]].concat(),
        )
        .await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            std::fs::read(saved.path().join("Übersicht.bin")).unwrap(),
            [0, 1, 2, 255]
        );
    }

    // Our SCRAM-SHA-256 client against Dovecot's server (checked both ways:
    // Dovecot verified our proof, we verified its signature).
    let logins = log();
    assert!(
        logins.contains("imap-login: Info: Login: user=<ann@interop.test>, method=SCRAM-SHA-256"),
        "{logins}"
    );
    assert!(
        logins.contains("pop3-login: Info: Login: user=<ann@interop.test>, method=SCRAM-SHA-256"),
        "{logins}"
    );

    // IMAP's write side: STORE, CREATE, MOVE.
    let (code, _, err) = mail(&d, &["flag", "1", "--add", "\\Flagged"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = mail(&d, &["folders", "create", "Projects"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = mail(&d, &["move", "1", "--to", "Projects"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = mail(&d, &["list", "-m", "Projects", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(
        listed["messages"][0]["flags"]
            .to_string()
            .contains("Flagged"),
        "{listed}"
    );

    // A non-ASCII folder: Dovecot 2.3 has no UTF8=ACCEPT, so the name goes
    // out in modified UTF-7 (Dovecot refuses 8-bit names) and comes back
    // from LIST in UTF-8.
    const FOLDER: &str = "Entwürfe/日本";
    let (code, _, err) = mail(&d, &["folders", "create", FOLDER]).await;
    assert_eq!(code, 0, "{err}\n{}", log());
    let (code, out, err) = mail(&d, &["folders", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let folders: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let names: Vec<&str> = folders["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&FOLDER), "{names:?}");
    assert!(
        d.dir
            .path()
            .join("home/Maildir/.Entw&APw-rfe.&ZeVnLA-")
            .is_dir(),
        "Dovecot stored the modified UTF-7 name"
    );
    let id = listed["messages"][0]["id"].to_string();
    let (code, _, err) = mail(&d, &["move", &id, "-m", "Projects", "--to", FOLDER]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = mail(&d, &["list", "-m", FOLDER, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let moved: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(moved["messages"][0]["subject"], "Grüße", "{moved}");
    let (code, out, _) = mail(&d, &["list", "-m", "Projects", "--json"]).await;
    assert_eq!(code, 0);
    let left: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(left["messages"].as_array().unwrap().len(), 0, "{left}");
    let (code, _, err) = mail(&d, &["folders", "rename", FOLDER, "Entwürfe/日本語"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = mail(&d, &["folders"]).await;
    assert_eq!(code, 0);
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("Entwürfe/日本語") && !out.contains("Entwürfe/日本\t"),
        "{out}"
    );

    // An unknown user against Dovecot: exit code 5.
    let (code, _, err) = mail_as(&d, "nobody@interop.test", &["list"]).await;
    assert_eq!(code, 5, "{err}");
}

/// Postfix running (in the foreground, as `postfix start-fg`) until dropped.
struct Postfix {
    child: Child,
    port: u16,
    config: std::path::PathBuf,
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .args(["-c", self.config.to_str().unwrap(), "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A submission service on a free port: TLS required, SASL through the
/// Dovecot of `d`, mail for interop.test delivered into Dovecot's Maildir.
fn start_postfix(d: &Dovecot) -> Postfix {
    let root = d.dir.path();
    let etc = root.join("postfix");
    std::fs::create_dir_all(&etc).unwrap();
    let port = free_port();
    // Postfix's processes (smtpd as postfix, virtual as nobody) must reach
    // the certificate, Dovecot's auth socket and the Maildir.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(root.join("postfix-queue")).unwrap();
    std::fs::create_dir_all(root.join("postfix-data")).unwrap();
    let status = Command::new("chown")
        .args(["postfix", root.join("postfix-data").to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(etc.join("vmailbox"), format!("{USER} home/Maildir/\n")).unwrap();
    let main = format!(
        "compatibility_level = 3.6
queue_directory = {root}/postfix-queue
data_directory = {root}/postfix-data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.interop.test
mydomain = interop.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
smtputf8_enable = no
virtual_mailbox_domains = interop.test
virtual_mailbox_base = {root}
virtual_mailbox_maps = texthash:{etc}/vmailbox
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 1
smtpd_tls_cert_file = {root}/tls/cert.pem
smtpd_tls_key_file = {root}/tls/key.pem
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {root}/run/auth-client
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
",
        root = root.display(),
        etc = etc.display()
    );
    std::fs::write(etc.join("main.cf"), main).unwrap();
    let mut master = format!("{port} inet n - n - - smtpd\n");
    for line in [
        "pickup unix n - n 60 1 pickup",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "tlsmgr unix - - n 1000? 1 tlsmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "smtp unix - - n - - smtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "local unix - n n - - local",
        "virtual unix - n n - - virtual",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ] {
        master.push_str(line);
        master.push('\n');
    }
    std::fs::write(etc.join("master.cf"), master).unwrap();
    let child = Command::new("postfix")
        .args(["-c", etc.to_str().unwrap(), "start-fg"])
        .stdin(Stdio::null())
        // Its daemons must not hold the test's output pipes open.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("postfix could not be run ({e}); .ci/run installs it"));
    Postfix {
        child,
        port,
        config: etc,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_through_postfix_submission_then_read_from_dovecot() {
    let d = start_dovecot();
    let p = start_postfix(&d);
    let log = || {
        let read = |f: &str| std::fs::read_to_string(d.dir.path().join(f)).unwrap_or_default();
        format!("{}\n{}", read("postfix.log"), read("dovecot.log"))
    };
    wait_for(
        "postfix and dovecot to listen",
        Duration::from_secs(30),
        async || {
            tokio::net::TcpStream::connect(("127.0.0.1", p.port))
                .await
                .is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", d.imap))
                    .await
                    .is_ok()
        },
    )
    .await;
    let files = tempfile::tempdir().unwrap();
    let attachment = files.path().join("Größe ✓.bin");
    std::fs::write(&attachment, [9u8, 0, 255, 13, 10]).unwrap();
    let port = p.port.to_string();
    let (code, _, err) = mail(
        &d,
        &[
            "--smtp-port",
            &port,
            "send",
            "--to",
            USER,
            "--subject",
            "Über Postfix",
            "--attach",
            attachment.to_str().unwrap(),
            "--sent-folder",
            "",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}\n{}", log());
    let mut listed = serde_json::Value::Null;
    wait_for("delivery by postfix", Duration::from_secs(30), async || {
        let (_, out, _) = mail(&d, &["list", "--json", "--subject", "Postfix"]).await;
        listed = serde_json::from_slice(&out).unwrap_or_default();
        listed["messages"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await;
    assert_eq!(listed["messages"][0]["subject"], "Über Postfix");
    let id = listed["messages"][0]["id"].to_string();
    let saved = tempfile::tempdir().unwrap();
    let dir = saved.path().to_str().unwrap();
    let (code, _, err) = mail(&d, &["attachments", &id, "--dir", dir]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(saved.path().join("Größe ✓.bin")).unwrap(),
        [9, 0, 255, 13, 10]
    );
    assert!(
        log().contains("sasl_method=SCRAM-SHA-256"),
        "our SCRAM client through Postfix and Dovecot's SASL:\n{}",
        log()
    );
}
