//! `mailroom mail …` as a process on a terminal and off it: progress bars
//! (drawn on a TTY, never into a pipe or with `--json`), attachments from a
//! hostile IMAP server (huge literals, `../../.bashrc`), whose memory use
//! is measured from outside, and the questions of `account add`.
//!
//! The terminal is a real pseudo-terminal: Python's `pty` module runs the
//! binary on one and reports what appeared on it, the exit code and the
//! child's peak resident memory (`getrusage(RUSAGE_CHILDREN)`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mailroom");

/// Runs argv[1:] on a pseudo-terminal (`pty`) or with pipes (`pipe`),
/// feeding stdin's lines; prints JSON: code, out (everything the terminal
/// showed, or stdout), err (stderr with pipes), maxrss_kib.
const RUNNER: &str = r#"
import json, os, pty, resource, subprocess, sys, time
mode, argv = sys.argv[1], sys.argv[2:]
feed = sys.stdin.buffer.read()
if mode == "pty":
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    if feed:
        time.sleep(0.2)
        os.write(fd, feed)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    code, err = os.waitstatus_to_exitcode(status), b""
else:
    p = subprocess.run(argv, input=feed, capture_output=True)
    code, out, err = p.returncode, p.stdout, p.stderr
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": code, "out": out.decode("utf-8", "replace"),
                  "err": err.decode("utf-8", "replace"), "maxrss_kib": rss}))
"#;

#[derive(Debug)]
struct Run {
    code: i64,
    out: String,
    err: String,
    maxrss_kib: u64,
}

fn run(mode: &str, args: &[&str], env: &[(&str, &str)], feed: &str) -> Run {
    let mut child = std::process::Command::new("python3")
        .args(["-c", RUNNER, mode, BIN])
        .args(args)
        .env_remove("MAILROOM_MAIL_ACCOUNTS")
        .env("TERM", "xterm")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(feed.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the runner failed");
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    Run {
        code: v["code"].as_i64().unwrap(),
        out: v["out"].as_str().unwrap().to_string(),
        err: v["err"].as_str().unwrap().to_string(),
        maxrss_kib: v["maxrss_kib"].as_u64().unwrap(),
    }
}

/// What the scripted IMAP server sends for part 2 of message UID 1.
#[derive(Clone)]
struct Part {
    /// The attachment's file name as the sender (or an attacker) wrote it.
    name: &'static str,
    /// Content-Transfer-Encoding.
    encoding: &'static str,
    /// The size BODYSTRUCTURE claims.
    claimed: u64,
    /// The literal length announced for BODY[2].
    announced: u64,
    /// The literal bytes actually sent (the server closes the connection
    /// when fewer than announced).
    body: Sender,
}

/// Writes a literal's bytes.
type Sender = std::sync::Arc<dyn Fn(&mut TcpStream) -> std::io::Result<()> + Send + Sync>;

/// An IMAP server speaking just enough IMAP4rev1 (AUTHENTICATE PLAIN,
/// EXAMINE, UID FETCH of BODYSTRUCTURE, BODY.PEEK[2.MIME], BODY.PEEK[2],
/// LOGOUT) to serve one message whose second part is `part`.
fn scripted_imap(part: Part) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { return };
            let part = part.clone();
            std::thread::spawn(move || {
                let _ = serve(socket, &part);
            });
        }
    });
    port
}

/// What BODY[] gives: a message with broken MIME (an unterminated
/// multipart, a part that is not base64, a hostile file name, 8-bit junk).
const BROKEN: &[u8] = b"Subject: =?utf-8?q?broken_=FF?=\r\nFrom: \xff\xfe <x@\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=nonsense\r\n\r\nstill readable \xff\r\n--b\r\nContent-Type: application/octet-stream; name=\"../../.bashrc\"\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64";

fn serve(mut socket: TcpStream, part: &Part) -> std::io::Result<()> {
    const CAPS: &str = "IMAP4rev1 AUTH=PLAIN SASL-IR";
    write!(socket, "* OK [CAPABILITY {CAPS}] scripted\r\n")?;
    let mut reader = BufReader::new(socket.try_clone()?);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let (tag, command) = line.trim_end().split_once(' ').unwrap_or(("*", ""));
        let upper = command.to_ascii_uppercase();
        let header = format!(
            "Content-Type: application/octet-stream; name=\"{0}\"\r\nContent-Disposition: attachment; filename=\"{0}\"\r\nContent-Transfer-Encoding: {1}\r\n\r\n",
            part.name, part.encoding
        );
        if upper.starts_with("CAPABILITY") {
            write!(socket, "* CAPABILITY {CAPS}\r\n")?;
        } else if upper.starts_with("EXAMINE") || upper.starts_with("SELECT") {
            write!(socket, "* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n")?;
        } else if upper.contains("BODYSTRUCTURE") {
            write!(
                socket,
                "* 1 FETCH (UID 1 BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 4 1 NIL NIL NIL NIL)(\"APPLICATION\" \"OCTET-STREAM\" (\"NAME\" \"x\") NIL NIL \"{}\" {} NIL (\"ATTACHMENT\" (\"FILENAME\" \"x\")) NIL NIL) \"MIXED\" (\"BOUNDARY\" \"b\") NIL NIL NIL))\r\n",
                part.encoding, part.claimed
            )?;
        } else if upper.contains("BODY.PEEK[2.MIME]") {
            write!(
                socket,
                "* 1 FETCH (UID 1 BODY[2.MIME] {{{}}}\r\n{header})\r\n",
                header.len()
            )?;
        } else if upper.contains("BODY.PEEK[]") {
            write!(socket, "* 1 FETCH (UID 1 BODY[] {{{}}}\r\n", BROKEN.len())?;
            socket.write_all(BROKEN)?;
            write!(socket, ")\r\n")?;
        } else if upper.contains("BODY.PEEK[2]") {
            write!(
                socket,
                "* 1 FETCH (UID 1 BODY[2] {{{}}}\r\n",
                part.announced
            )?;
            (part.body)(&mut socket)?;
            write!(socket, ")\r\n")?;
        } else if upper.starts_with("LOGOUT") {
            write!(socket, "* BYE bye\r\n{tag} OK done\r\n")?;
            return Ok(());
        }
        write!(socket, "{tag} OK done\r\n")?;
    }
}

/// Profile-less options for a scripted server on loopback (`port_flag`
/// names the protocol's port option).
fn server_args(port_flag: &str, port: u16) -> Vec<String> {
    let port = port.to_string();
    let args = [
        "mail",
        "--server",
        "127.0.0.1",
        "--user",
        "u@example.test",
        "--security",
        "none",
        port_flag,
        &port,
    ];
    args.into_iter().map(str::to_string).collect()
}

/// `attachments 1` from the scripted IMAP server into `dir`.
fn client_args(port: u16, dir: &Path) -> Vec<String> {
    let mut args = server_args("--imap-port", port);
    let tail = [
        "--max-size",
        "1000000",
        "--timeout",
        "20",
        "attachments",
        "1",
        "--dir",
    ];
    args.extend(tail.map(str::to_string));
    args.push(dir.to_str().unwrap().to_string());
    args
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const PASSWORD: [(&str, &str); 1] = [("MAILROOM_MAIL_PASSWORD", "pw")];

/// Base64 of `data`, folded at 76 like MIME does.
fn base64_folded(data: &[u8]) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for (i, chunk) in data.chunks(3).enumerate() {
        if i > 0 && i % 19 == 0 {
            out.extend_from_slice(b"\r\n");
        }
        let n = chunk.len();
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            out.push(if k <= n {
                A[(v >> (18 - 6 * k) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[test]
fn a_large_part_shows_a_bar_on_a_terminal_only_and_lands_inside_the_directory() {
    // 3 MiB of every byte value, sent slowly enough for the bar to draw.
    let content: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let encoded = std::sync::Arc::new(base64_folded(&content));
    let sent = encoded.clone();
    let part = Part {
        name: "../../.bashrc",
        encoding: "BASE64",
        claimed: encoded.len() as u64,
        announced: encoded.len() as u64,
        body: std::sync::Arc::new(move |s: &mut TcpStream| {
            for piece in sent.chunks(256 << 10) {
                s.write_all(piece)?;
                std::thread::sleep(Duration::from_millis(40));
            }
            Ok(())
        }),
    };
    let port = scripted_imap(part);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("saved");
    std::fs::create_dir(&dir).unwrap();
    let args = client_args(port, &dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // On a terminal: a bar while saving; the file under a safe name,
    // byte for byte, inside the directory; more than --max-size.
    let on_tty = run("pty", &args, &PASSWORD, "");
    assert_eq!(on_tty.code, 0, "{}", on_tty.out);
    assert!(
        on_tty.out.contains("saving") && on_tty.out.contains("MiB"),
        "a progress bar: {:?}",
        on_tty.out
    );
    assert_eq!(files_in(&dir), ["bashrc"]);
    assert_eq!(std::fs::read(dir.join("bashrc")).unwrap(), content);
    assert_eq!(files_in(root.path()), ["saved"], "nothing outside");

    // Into pipes: no bar, nothing on stderr; a second file beside the first.
    let piped = run("pipe", &args, &PASSWORD, "");
    assert_eq!(piped.code, 0, "{}", piped.err);
    assert_eq!(piped.err, "", "quiet without a terminal");
    assert!(piped.out.contains("bashrc (1)"), "{}", piped.out);
    assert_eq!(std::fs::read(dir.join("bashrc (1)")).unwrap(), content);

    // --json on a terminal: no bar either.
    let mut json = args.clone();
    json.push("--json");
    let quiet = run("pty", &json, &PASSWORD, "");
    assert_eq!(quiet.code, 0, "{}", quiet.out);
    assert!(!quiet.out.contains("saving"), "{:?}", quiet.out);
    let saved: serde_json::Value = serde_json::from_str(quiet.out.trim()).unwrap();
    assert_eq!(saved["saved"][0]["name"], "../../.bashrc");
    assert_eq!(saved["saved"][0]["size"], content.len());
    assert_eq!(files_in(&dir), ["bashrc", "bashrc (1)", "bashrc (2)"]);
}

#[test]
fn a_huge_literal_is_streamed_in_bounded_memory_and_leaves_nothing_behind() {
    // BODYSTRUCTURE and the literal both claim 4 GB; the server sends
    // 96 MiB of it (8 times --max-size) and hangs up.
    const SENT: usize = 96 << 20;
    let part = Part {
        name: "huge.bin",
        encoding: "8BIT",
        claimed: 4_000_000_000,
        announced: 4_000_000_000,
        body: std::sync::Arc::new(|s: &mut TcpStream| {
            let block = vec![b'x'; 1 << 20];
            for _ in 0..SENT >> 20 {
                s.write_all(&block)?;
            }
            s.shutdown(std::net::Shutdown::Both)?;
            Err(std::io::Error::other("hung up"))
        }),
    };
    let port = scripted_imap(part);
    let dir = tempfile::tempdir().unwrap();
    let args = client_args(port, dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("pipe", &args, &PASSWORD, "");
    assert_eq!(out.code, 8, "{}", out.err);
    assert!(out.err.contains("closed the connection"), "{}", out.err);
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
    eprintln!("peak memory while streaming: {} KiB", out.maxrss_kib);
    // Far below what holding the part would take.
    assert!(
        out.maxrss_kib < 48 << 10,
        "peak memory {} KiB for a {} MiB part",
        out.maxrss_kib,
        SENT >> 20
    );

    // A literal longer than BODYSTRUCTURE said (and than --max-size) is
    // refused before a byte of it is read.
    let liar = Part {
        name: "x.bin",
        encoding: "BASE64",
        claimed: 100,
        announced: 4_000_000_000,
        body: std::sync::Arc::new(|_: &mut TcpStream| {
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        }),
    };
    let port = scripted_imap(liar);
    let args = client_args(port, dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let out = run("pipe", &args, &PASSWORD, "");
    assert_eq!(out.code, 8, "{}", out.err);
    assert!(
        out.err
            .contains("announced a 4000000000 byte part; BODYSTRUCTURE said 100"),
        "{}",
        out.err
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn account_add_asks_on_a_terminal_and_never_for_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.toml");
    let file_arg = file.to_str().unwrap();
    let answers = [
        "ann@example.test",       // email
        "",                       // profile name: the suggested "example"
        "mail.example.test",      // host
        "",                       // imap
        "starttls",               // security
        "",                       // SMTP port: 587
        "1143",                   // IMAP port
        "",                       // login: the address
        "1",                      // password from a command
        "pass show mail/example", // the command
    ]
    .map(|a| format!("{a}\n"))
    .concat();
    let out = run(
        "pty",
        &["mail", "--accounts", file_arg, "account", "add"],
        &[],
        &answers,
    );
    assert_eq!(out.code, 0, "{}", out.out);
    for question in [
        "Email address: ",
        "Profile name [example]: ",
        "Security: tls (implicit TLS) or starttls [tls]: ",
        "SMTP port [587]: ",
        "IMAP port [143]: ",
        "Login name [ann@example.test]: ",
        "3) ask every time",
    ] {
        assert!(out.out.contains(question), "{question:?} in {:?}", out.out);
    }
    assert!(!out.out.to_lowercase().contains("password:"), "{}", out.out);
    assert!(
        out.out.contains("account example written to"),
        "{}",
        out.out
    );
    let written = std::fs::read_to_string(&file).unwrap();
    let accounts = mailroom_mua::account::Accounts::load(&file).unwrap();
    let account = &accounts.accounts["example"];
    assert_eq!(account.email, "ann@example.test");
    let imap = account.imap.as_ref().unwrap();
    assert_eq!(imap.host, "mail.example.test");
    assert_eq!(imap.port, Some(1143));
    assert_eq!(imap.security, mailroom_mua::Security::Starttls);
    assert_eq!(account.smtp.as_ref().unwrap().port, None, "{written}");
    assert_eq!(
        account.password_command.as_deref(),
        Some(&["pass".to_string(), "show".into(), "mail/example".into()][..])
    );
    assert!(account.password_env.is_none() && account.user.is_none());
    assert_eq!(accounts.default.as_deref(), Some("example"));

    // Off a terminal it asks nothing: it says what is missing.
    let out = run(
        "pipe",
        &["mail", "--accounts", file_arg, "account", "add", "other"],
        &[],
        "ann@example.test\n",
    );
    assert_eq!(out.code, 2, "{}", out.err);
    assert!(
        out.err.contains("needs a NAME, --email and --host"),
        "{}",
        out.err
    );
    assert!(!out.err.contains("Email address"), "{}", out.err);
}

#[test]
fn a_broken_message_reads_and_the_trace_never_shows_the_password() {
    let part = Part {
        name: "x.bin",
        encoding: "BASE64",
        claimed: 8,
        announced: 8,
        body: std::sync::Arc::new(|s: &mut TcpStream| s.write_all(b"AAEC/w==")),
    };
    let port = scripted_imap(part);
    let dir = tempfile::tempdir().unwrap();
    let mut args = client_args(port, dir.path());
    args.truncate(args.len() - 4); // without "attachments 1 --dir D"
    let secret = "S3cret-Pässwort";
    let mut read = args.clone();
    read.extend(["--trace", "read", "1", "--peek"].map(str::to_string));
    let read: Vec<&str> = read.iter().map(String::as_str).collect();
    let out = run("pipe", &read, &[("MAILROOM_MAIL_PASSWORD", secret)], "");
    assert_eq!(out.code, 0, "{}", out.err);
    assert!(out.out.contains("still readable"), "{}", out.out);
    assert!(
        out.out.contains("../../.bashrc"),
        "listed as sent: {}",
        out.out
    );
    // The trace: the exchange, the AUTHENTICATE line redacted.
    assert!(out.err.contains("S: * OK [CAPABILITY"), "{}", out.err);
    assert!(out.err.contains("AUTHENTICATE <redacted>"), "{}", out.err);
    assert!(out.err.contains("byte literal>"), "{}", out.err);
    let plain = format!("\0u@example.test\0{secret}");
    let encoded = String::from_utf8(base64_folded(plain.as_bytes())).unwrap();
    assert!(
        !out.err.contains(secret) && !out.err.contains(encoded.trim()),
        "{}",
        out.err
    );

    // Its attachment, not base64 at all, saves as what decodes, inside --dir.
    let mut save = args;
    save.extend(["--trace", "attachments", "1", "--dir"].map(str::to_string));
    save.push(dir.path().to_str().unwrap().to_string());
    let save: Vec<&str> = save.iter().map(String::as_str).collect();
    let out = run("pipe", &save, &[("MAILROOM_MAIL_PASSWORD", secret)], "");
    assert_eq!(out.code, 0, "{}", out.err);
    assert!(
        out.err.contains("<8 byte literal, streamed>"),
        "{}",
        out.err
    );
    assert_eq!(files_in(dir.path()), ["x.bin"]);
    assert_eq!(
        std::fs::read(dir.path().join("x.bin")).unwrap(),
        [0, 1, 2, 255]
    );
}

/// A submission server speaking just enough SMTP (EHLO, AUTH PLAIN, MAIL,
/// RCPT, DATA, QUIT) to take one message; sends each message it took.
fn scripted_smtp() -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            let tx = tx.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut reader = BufReader::new(socket.try_clone()?);
                socket.write_all(b"220 scripted ESMTP\r\n")?;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-scripted\r\n250-AUTH PLAIN\r\n250 SIZE 100000000\r\n",
                        "AUTH" => b"235 2.7.0 ok\r\n",
                        "DATA" => {
                            socket.write_all(b"354 go on\r\n")?;
                            let mut message = Vec::new();
                            loop {
                                let mut data = Vec::new();
                                reader.read_until(b'\n', &mut data)?;
                                if data == b".\r\n" || data.is_empty() {
                                    break;
                                }
                                message.extend_from_slice(&data);
                            }
                            let _ = tx.send(message);
                            b"250 2.0.0 taken\r\n"
                        }
                        "QUIT" => {
                            socket.write_all(b"221 bye\r\n")?;
                            return Ok(());
                        }
                        _ => b"250 ok\r\n",
                    };
                    socket.write_all(reply)?;
                }
            });
        }
    });
    (port, rx)
}

#[test]
fn a_large_send_shows_a_bar_on_a_terminal_only() {
    let (port, taken) = scripted_smtp();
    let files = tempfile::tempdir().unwrap();
    let big = files.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 3 << 20]).unwrap();
    let mut args = server_args("--smtp-port", port);
    let send = [
        "send",
        "--to",
        "v@example.test",
        "--subject",
        "big",
        "--attach",
    ];
    args.extend(send.map(str::to_string));
    args.push(big.to_str().unwrap().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // On a terminal the body comes from $EDITOR.
    let env = [
        ("MAILROOM_MAIL_PASSWORD", "pw"),
        ("EDITOR", "printf 'the body' >"),
    ];
    let on_tty = run("pty", &args, &env, "");
    assert_eq!(on_tty.code, 0, "{}", on_tty.out);
    assert!(
        on_tty.out.contains("sending") && on_tty.out.contains("MiB"),
        "{:?}",
        on_tty.out
    );
    let message = taken.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(message.len() > 4 << 20, "3 MiB in base64");

    let piped = run("pipe", &args, &env, "the body");
    assert_eq!(piped.code, 0, "{}", piped.err);
    assert_eq!(piped.err, "", "quiet without a terminal");
    assert!(piped.out.starts_with("sent <"), "{}", piped.out);
    taken.recv_timeout(Duration::from_secs(10)).unwrap();

    // A small message on a terminal: no bar.
    let small = [&args[..args.len() - 2], &[]].concat();
    let quiet = run("pty", &small, &env, "");
    assert_eq!(quiet.code, 0, "{}", quiet.out);
    assert!(!quiet.out.contains("sending"), "{:?}", quiet.out);
}
