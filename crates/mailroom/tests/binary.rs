//! The `mailroom` binary as a user runs it: real processes, real signals.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mailroom");

fn mailroom(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("MAILROOM_CONFIG")
        .env_remove("MAILROOM_ADMIN_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn config_check_reports_every_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nhostname = \"mail.example.test\"\n").unwrap();
    let out = mailroom(&["config", "check", good.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}: OK\n", good.display()));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nshutdown_grace_secs = -1\n[store]\nurl = \"mysql://x\"\n[admin]\nlisten = \"nowhere\"\nextra = 1\n\
         [sender_auth.domains.\"bad name!\"]\ndmarc_reject = \"junk\"\n",
    )
    .unwrap();
    let out = mailroom(&["config", "check", bad.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("5 configuration errors"), "{err}");
    for key in [
        "server.shutdown_grace_secs",
        "store.url",
        "admin.listen",
        "admin.extra",
        "sender_auth.domains.\"bad name!\": not a domain name",
    ] {
        assert!(err.contains(key), "{key} not reported: {err}");
    }
}

#[test]
fn config_errors_are_reported_before_any_port_is_bound() {
    // We hold the admin port: if serve tried to bind before validating, it
    // would report "cannot listen" instead of the configuration errors.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("mailroom.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\n[limits]\nmax_connections = 0\n[telemetry]\nlog_format = \"xml\"\n",
            data.display()
        ),
    )
    .unwrap();
    let out = mailroom(&["--config", config.to_str().unwrap(), "serve"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("limits.max_connections") && err.contains("telemetry.log_format"),
        "{err}"
    );
    assert!(
        !err.contains("cannot listen"),
        "a port was bound before validation: {err}"
    );
    assert!(
        !data.exists(),
        "serve created its data directory despite a bad configuration"
    );
}

#[test]
fn serve_on_a_fresh_directory_then_add_a_user_then_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mailroom-data");
    let data_arg = data.to_str().unwrap();
    let mut server = Command::new(BIN)
        .args(["--data-dir", data_arg, "serve"])
        .env("MAILROOM_ADMIN__LISTEN", "127.0.0.1:0")
        .env("MAILROOM_MDA__LISTEN", "127.0.0.1:0")
        .env("MAILROOM_MTA__GRPC_LISTEN", "127.0.0.1:0")
        .env("MAILROOM_MTA__LISTEN", "[\"127.0.0.1:0\"]")
        .env("MAILROOM_SUBMISSION__LISTEN", "[\"127.0.0.1:0\"]")
        .env("MAILROOM_SUBMISSION__LISTEN_TLS", "[\"127.0.0.1:0\"]")
        .env("MAILROOM_POP3__LISTEN", "[\"127.0.0.1:0\"]")
        .env("MAILROOM_POP3__LISTEN_TLS", "[\"127.0.0.1:0\"]")
        .env("MAILROOM_IMAP__LISTEN", "[\"127.0.0.1:0\"]")
        .env("MAILROOM_IMAP__LISTEN_TLS", "[\"127.0.0.1:0\"]")
        .env("MAILROOM_TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("Admin token:") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "serve exited early: {banner}"
        );
        banner.push_str(&line);
    }
    // The embedded default opens no internal gRPC port (Queue, Delivery):
    // its services call each other in-process.
    assert!(
        !banner.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("queue ") || l.starts_with("mda ")
        }),
        "{banner}"
    );
    let admin = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin line in {banner}"))
        .to_string();
    let url = format!("http://{admin}");
    let admin_args = |extra: &[&str]| {
        let mut v = vec!["--data-dir", data_arg, "--admin-url", url.as_str()];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str], stdin: &str| {
        let args = admin_args(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        mailroom(&refs, stdin)
    };
    let out = run(&["domain", "add", "example.test"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(
        &["user", "add", "alice@example.test"],
        "correct horse battery\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "account alice@example.test created\n");
    let out = run(&["user", "list"], "");
    assert!(text(&out.stdout).contains("alice@example.test"));
    // A wrong token is refused with a clear message and a failure status.
    let args = admin_args(&["user", "list"]);
    let out = Command::new(BIN)
        .args(&args)
        .env("MAILROOM_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Unauthenticated"),
        "{}",
        text(&out.stderr)
    );

    let kill = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "serve exited with {status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("shutting down"), "{rest}");
}

/// A one-session SMTP server on a thread: offers AUTH PLAIN, accepts
/// everything, and returns what the client sent.
fn fake_submission() -> (u16, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(socket.try_clone().unwrap());
        let mut writer = socket;
        let mut seen = String::new();
        writer.write_all(b"220 fake ESMTP\r\n").unwrap();
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            let reply: &[u8] = if in_data {
                if line != ".\r\n" {
                    continue;
                }
                in_data = false;
                b"250 queued\r\n"
            } else if line.starts_with("EHLO") {
                b"250-fake\r\n250 AUTH PLAIN\r\n"
            } else if line.starts_with("AUTH") {
                b"235 ok\r\n"
            } else if line.starts_with("DATA") {
                in_data = true;
                b"354 go\r\n"
            } else if line.starts_with("QUIT") {
                writer.write_all(b"221 bye\r\n").unwrap();
                break;
            } else {
                b"250 ok\r\n"
            };
            writer.write_all(reply).unwrap();
        }
        seen
    });
    (port, server)
}

#[test]
fn mail_send_traces_without_secrets_and_errors_go_to_stderr_with_exit_codes() {
    let (port, server) = fake_submission();
    let port = port.to_string();
    let args = [
        "mail",
        "--server",
        "127.0.0.1",
        "--user",
        "ann@example.test",
        "--security",
        "none",
        "--smtp-port",
        &port,
        "--trace",
        "send",
        "--to",
        "bob@example.test",
        "--subject",
        "Hi",
    ];
    let mut child = Command::new(BIN)
        .args(args)
        .env("MAILROOM_MAIL_PASSWORD", "hunter2-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"body\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        text(&out.stdout).starts_with("sent <"),
        "{}",
        text(&out.stdout)
    );
    let seen = server.join().unwrap();
    assert!(seen.contains("AUTH PLAIN "), "{seen}");
    // The trace shows the exchange but never the credentials.
    assert!(stderr.contains("C: AUTH PLAIN <redacted>"), "{stderr}");
    assert!(
        stderr.contains("C: MAIL FROM:<ann@example.test>"),
        "{stderr}"
    );
    assert!(stderr.contains("S: 250 queued"), "{stderr}");
    let auth_line = seen.lines().find(|l| l.starts_with("AUTH PLAIN")).unwrap();
    let secret = auth_line.trim_start_matches("AUTH PLAIN ");
    assert!(
        !stderr.contains(secret) && !stderr.contains("hunter2"),
        "{stderr}"
    );

    // A refused connection: one line on stderr, exit code 3, nothing on stdout.
    let out = mailroom(
        &[
            "mail",
            "--server",
            "127.0.0.1",
            "--user",
            "a@b.test",
            "--imap-port",
            "1",
            "list",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot connect to 127.0.0.1:1"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // The exit codes are documented in --help.
    let help = text(&mailroom(&["mail", "--help"], "").stdout);
    assert!(
        help.contains("Exit codes:") && help.contains("5  login refused"),
        "{help}"
    );
}
