//! Account profiles (`accounts.toml` in the user's configuration directory)
//! and where their passwords come from.
//!
//! ```toml
//! [accounts.work]
//! email = "ann@example.com"          # From, and the login name by default
//! name = "Ann Example"               # optional display name
//! user = "ann"                       # optional login name
//! read = "imap"                      # or "pop3"
//! password_command = ["pass", "show", "mail/work"]   # argv, no shell
//! # password_env = "WORK_MAIL_PASSWORD"
//! sent_folder = "Sent"               # IMAP copy of sent mail; "" for none
//! smtp = { host = "mail.example.com", port = 587, security = "starttls" }
//! imap = { host = "mail.example.com", port = 993, security = "tls" }
//! pop3 = { host = "mail.example.com", port = 995, security = "tls" }
//! ```
//!
//! Invariants: a password is never stored in the file, never taken from
//! argv and never printed; `password_command` is run directly (argv, no
//! shell), its first output line is the password; the file is written with
//! mode 0600.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::connection::{Endpoint, Security};
use crate::error::{Error, Result};

/// The environment as the library sees it (injected so tests can run in
/// parallel without touching the process environment).
pub type Env<'a> = &'a (dyn Fn(&str) -> Option<String> + Send + Sync);

/// Environment variable read when a profile names no password source.
pub const PASSWORD_ENV: &str = "MAILROOM_MAIL_PASSWORD";

/// One server of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Host name.
    pub host: String,
    /// Port; the protocol's usual one for the security mode when omitted.
    pub port: Option<u16>,
    /// `tls`, `starttls` or `none`.
    #[serde(default = "default_security")]
    pub security: Security,
}

fn default_security() -> Security {
    Security::Tls
}

/// Which protocol reads mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadProtocol {
    /// IMAP (folders, flags, server-side search).
    #[default]
    Imap,
    /// POP3 (one maildrop).
    Pop3,
}

/// One account profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The address mail is sent from.
    pub email: String,
    /// Display name for From.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Login name (default: `email`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// How mail is read.
    #[serde(default)]
    pub read: ReadProtocol,
    /// Command printing the password (argv, no shell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_command: Option<Vec<String>>,
    /// Environment variable holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// IMAP folder a copy of sent mail goes to; empty for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_folder: Option<String>,
    /// Submission server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<Server>,
    /// IMAP server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imap: Option<Server>,
    /// POP3 server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pop3: Option<Server>,
}

/// The protocols, for default ports and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// SMTP submission.
    Smtp,
    /// IMAP.
    Imap,
    /// POP3.
    Pop3,
}

impl Protocol {
    /// The usual port for a security mode (RFC 8314: 465, 993, 995 for
    /// implicit TLS; 587, 143, 110 otherwise).
    pub fn default_port(self, security: Security) -> u16 {
        match (self, security) {
            (Protocol::Smtp, Security::Tls) => 465,
            (Protocol::Smtp, _) => 587,
            (Protocol::Imap, Security::Tls) => 993,
            (Protocol::Imap, _) => 143,
            (Protocol::Pop3, Security::Tls) => 995,
            (Protocol::Pop3, _) => 110,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        }
    }
}

impl Account {
    /// The login name.
    pub fn login(&self) -> &str {
        self.user.as_deref().unwrap_or(&self.email)
    }

    /// Where to reach the server for `protocol`.
    pub fn endpoint(&self, protocol: Protocol) -> Result<Endpoint> {
        let server = match protocol {
            Protocol::Smtp => &self.smtp,
            Protocol::Imap => &self.imap,
            Protocol::Pop3 => &self.pop3,
        };
        let server = server.as_ref().ok_or_else(|| {
            Error::Usage(format!(
                "the account has no {} server (add `{} = {{ host = \"…\" }}` to its profile)",
                protocol.name(),
                protocol.name()
            ))
        })?;
        Ok(Endpoint {
            host: server.host.clone(),
            port: server
                .port
                .unwrap_or_else(|| protocol.default_port(server.security)),
            security: server.security,
        })
    }

    /// The password: from `password_command`, else `password_env`, else
    /// [`PASSWORD_ENV`]; `None` when none of them gives one (the caller
    /// may then prompt).
    pub fn password(&self, env: Env<'_>) -> Result<Option<String>> {
        if let Some(argv) = &self.password_command {
            return run_password_command(argv).map(Some);
        }
        if let Some(var) = &self.password_env {
            return match env(var) {
                Some(p) => Ok(Some(p)),
                None => Err(Error::Usage(format!(
                    "the profile takes the password from ${var}, which is not set"
                ))),
            };
        }
        Ok(env(PASSWORD_ENV))
    }
}

fn run_password_command(argv: &[String]) -> Result<String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::Usage("password_command is empty".into()))?;
    let output = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Usage(format!("password_command {program:?} cannot run: {e}")))?;
    if !output.status.success() {
        return Err(Error::Usage(format!(
            "password_command {program:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let text = String::from_utf8(output.stdout)
        .map_err(|_| Error::Usage("password_command printed invalid UTF-8".into()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(Error::Usage("password_command printed no password".into()));
    }
    Ok(line)
}

/// The accounts file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    /// The account used when none is named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Profiles by name.
    #[serde(default)]
    pub accounts: BTreeMap<String, Account>,
}

/// Where the accounts file is: `$XDG_CONFIG_HOME/mailroom/accounts.toml`,
/// else `~/.config/mailroom/accounts.toml` (`~/Library/Application
/// Support/mailroom` on macOS, `%APPDATA%\mailroom` on Windows).
pub fn default_path(env: Env<'_>) -> Option<PathBuf> {
    let base = if cfg!(target_os = "windows") {
        env("APPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|h| PathBuf::from(h).join("Library/Application Support"))
    } else {
        env("XDG_CONFIG_HOME")
            .filter(|d| Path::new(d).is_absolute())
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config")))
    };
    base.map(|b| b.join("mailroom").join("accounts.toml"))
}

impl Accounts {
    /// Reads the file; a missing file is an empty set of accounts.
    pub fn load(path: &Path) -> Result<Accounts> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Accounts::default()),
            Err(e) => return Err(Error::File(format!("cannot read {}: {e}", path.display()))),
        };
        toml::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
    }

    /// Writes the file (mode 0600), creating its directory.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| Error::Usage(format!("cannot write the accounts: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::File(format!("cannot create {}: {e}", dir.display())))?;
        }
        mailroom_net::tls::write_private(path, text.as_bytes())
            .map_err(|e| Error::File(e.to_string()))
    }

    /// The named account, or the default one (the only one when there is
    /// just one).
    pub fn get(&self, name: Option<&str>, path: &Path) -> Result<(String, Account)> {
        let name = match name.or(self.default.as_deref()) {
            Some(n) => n.to_string(),
            None if self.accounts.len() == 1 => {
                self.accounts.keys().next().cloned().unwrap_or_default()
            }
            None if self.accounts.is_empty() => {
                return Err(Error::Usage(format!(
                    "no account profile in {} (add one with `mailroom mail account add`, or give --server and --user)",
                    path.display()
                )));
            }
            None => {
                return Err(Error::Usage(
                    "several accounts and no default: name one with --account".into(),
                ));
            }
        };
        match self.accounts.get(&name) {
            Some(a) => Ok((name, a.clone())),
            None => Err(Error::Usage(format!(
                "no account named {name:?} in {} (known: {})",
                path.display(),
                self.accounts.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_round_trip_and_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m/accounts.toml");
        let mut accounts = Accounts::default();
        accounts.accounts.insert(
            "work".into(),
            Account {
                email: "ann@example.test".into(),
                password_command: Some(vec!["printf".into(), "%s\\n".into(), "s3cret".into()]),
                imap: Some(Server {
                    host: "localhost".into(),
                    port: None,
                    security: Security::Tls,
                }),
                ..Account::default()
            },
        );
        accounts.save(&path).unwrap();
        let loaded = Accounts::load(&path).unwrap();
        assert_eq!(loaded, accounts);
        let (name, account) = loaded.get(None, &path).unwrap();
        assert_eq!(name, "work");
        assert_eq!(account.endpoint(Protocol::Imap).unwrap().port, 993);
        assert!(account.endpoint(Protocol::Pop3).is_err());
        assert_eq!(
            account.password(&|_| None).unwrap().as_deref(),
            Some("s3cret")
        );
        let by_env = Account {
            password_env: Some("X".into()),
            ..Account::default()
        };
        assert_eq!(
            by_env
                .password(&|v| (v == "X").then(|| "pw".to_string()))
                .unwrap()
                .as_deref(),
            Some("pw")
        );
        assert!(by_env.password(&|_| None).is_err());
        let missing = Accounts::load(&dir.path().join("none.toml")).unwrap();
        assert_eq!(
            missing.get(None, &path).unwrap_err().exit_code(),
            crate::exit::USAGE
        );
    }
}
