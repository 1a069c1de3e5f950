//! Command-line interface.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use mailroom_config::Config;
use mailroom_rpc::internal::{InternalSecret, Role};

use crate::admin_cli;
use crate::serve::{self, ServiceName};

/// Mailroom: a complete mail system (SMTP submission and relay, delivery, IMAP, POP3).
#[derive(Debug, Parser)]
#[command(name = "mailroom", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML). Without one, defaults plus MAILROOM_<SECTION>__<KEY> variables apply.
    #[arg(long, short = 'c', global = true, env = "MAILROOM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides server.data_dir): embedded store, certificate, admin token.
    #[arg(long, global = true, env = "MAILROOM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How admin commands reach the Admin service.
    #[command(flatten)]
    pub admin: AdminTarget,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every service in one process, or only the one named.
    Serve {
        /// The service to run alone; all of them when omitted.
        service: Option<ServiceName>,
    },
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the domains mail is received for.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage aliases.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Inspect and manage the mail queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// DKIM signing keys and the DNS records to publish (SPF, DKIM, DMARC).
    #[command(subcommand)]
    Dkim(DkimCommand),
    /// Credentials of the internal gRPC links (Queue, Delivery).
    #[command(subcommand)]
    Internal(InternalCommand),
    /// Send and read mail over SMTP submission, IMAP or POP3, with any server.
    Mail(Box<crate::mail_cli::MailArgs>),
}

/// `mailroom internal …`
#[derive(Debug, Subcommand)]
pub enum InternalCommand {
    /// Print a new internal secret (64 hex digits), for `internal.secret_file`.
    Secret,
    /// Print the credential of a role (msa, inbound, mta), derived from the internal secret,
    /// for `internal.credential_file` of a service that should not hold the secret.
    Token {
        /// msa, inbound or mta.
        role: String,
        /// The secret file (default: internal.secret_file, or <data_dir>/internal-secret).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
}

/// `mailroom queue …`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queue entries, newest first.
    List {
        /// Only entries with a recipient in this state (pending, deferred, delivered, failed).
        #[arg(long)]
        state: Option<String>,
        /// Only entries with a recipient at this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only entries from this sender.
        #[arg(long)]
        sender: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one entry with each recipient's state, attempts and last response.
    Show {
        /// Queue id.
        id: i64,
    },
    /// Make an entry's unfinished recipients due now.
    Retry {
        /// Queue id.
        id: i64,
    },
    /// Remove an entry without sending a bounce.
    Drop {
        /// Queue id.
        id: i64,
    },
    /// Counts by state and the age of the oldest entry.
    Summary,
}

/// `mailroom config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (and the MAILROOM_* environment); report every error at once.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

/// How admin commands reach the Admin service.
#[derive(Debug, Clone, Args)]
pub struct AdminTarget {
    /// Admin gRPC endpoint, e.g. http://127.0.0.1:9425 (default: from admin.listen).
    #[arg(long, global = true, env = "MAILROOM_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// File holding the admin token (default: admin.token_file, or <data_dir>/admin-token).
    /// The token itself may be given in MAILROOM_ADMIN_TOKEN instead.
    #[arg(long, global = true, env = "MAILROOM_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// `mailroom domain …`
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Start receiving mail for a domain.
    Add {
        /// e.g. example.com (Unicode names are accepted).
        name: String,
    },
    /// List served domains.
    List,
    /// Stop serving a domain (it must have no accounts or aliases left).
    Delete {
        /// The domain.
        name: String,
    },
    /// Show or set where postmaster@<domain> goes when no alias covers it
    /// (default: the domain's first account).
    Postmaster {
        /// The domain.
        name: String,
        /// The address that receives postmaster@<domain> (local or remote).
        #[arg(conflicts_with = "default")]
        address: Option<String>,
        /// Go back to the default: the domain's first account.
        #[arg(long)]
        default: bool,
    },
}

/// `mailroom user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account; the password is asked for (or read from the first line of stdin).
    Add {
        /// e.g. alice@example.com
        address: String,
        /// Storage quota: bytes, or with K/M/G/T (binary units); 0 or "unlimited" for none.
        #[arg(long, default_value = "0")]
        quota: String,
    },
    /// List accounts.
    List {
        /// Only this domain's accounts.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Set a new password (asked for, or read from stdin).
    Passwd {
        /// The account.
        address: String,
    },
    /// Set the storage quota.
    Quota {
        /// The account.
        address: String,
        /// Bytes, or with K/M/G/T; 0 or "unlimited" for none.
        quota: String,
    },
    /// Disable an account: it can no longer log in.
    Disable {
        /// The account.
        address: String,
    },
    /// Enable a disabled account.
    Enable {
        /// The account.
        address: String,
    },
    /// Delete an account with all its mail.
    Delete {
        /// The account.
        address: String,
    },
}

/// `mailroom alias …`
#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Send mail for SOURCE (an address, or @domain for a catch-all) to TARGET.
    Add {
        /// local@domain or @domain
        source: String,
        /// Any address, local or remote.
        target: String,
    },
    /// List aliases.
    List {
        /// Only this domain's aliases.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Remove an alias.
    Delete {
        /// local@domain or @domain
        source: String,
        /// The target to remove.
        target: String,
    },
}

/// `mailroom dkim …`
#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Generate a domain's next RSA-2048 and Ed25519 keys (selectors like
    /// 2026a-rsa, 2026a-ed); prints the DNS records to publish.
    Generate {
        /// The domain (must be served here).
        domain: String,
        /// Stop the domain's other keys from signing (they stay listed, and
        /// their records should stay published a few days, until removed).
        #[arg(long)]
        rotate: bool,
    },
    /// List keys (never the private keys).
    List {
        /// Only this domain's keys.
        domain: Option<String>,
    },
    /// Print the DNS records to publish for a domain: DKIM TXT records,
    /// and suggested SPF and DMARC records.
    Record {
        /// The domain.
        domain: String,
    },
    /// Look the domain's records up in the DNS and say whether they are
    /// published as `record` prints them (exit status 1 when not).
    Check {
        /// The domain.
        domain: String,
        /// The DNS server to ask (`ip:port`); default: `mta.dns_servers`, else
        /// the system resolver.
        #[arg(long)]
        dns: Option<std::net::SocketAddr>,
    },
    /// Remove a key (unpublish its record afterwards).
    Remove {
        /// The domain.
        domain: String,
        /// The key's selector, e.g. 2026a-rsa.
        selector: String,
    },
}

/// Where passwords come from: a terminal prompt, or lines of a reader.
pub enum PasswordInput<'a> {
    /// Ask on the terminal, without echo, twice.
    Prompt,
    /// Read the first line (scripts: `echo "$PW" | mailroom user add …`).
    Reader(&'a mut dyn BufRead),
}

impl PasswordInput<'_> {
    /// Reads a password.
    pub fn read(&mut self, address: &str) -> anyhow::Result<String> {
        match self {
            PasswordInput::Prompt => {
                let first = rpassword::prompt_password(format!("Password for {address}: "))?;
                let second = rpassword::prompt_password("Again: ")?;
                anyhow::ensure!(first == second, "the passwords differ");
                Ok(first)
            }
            PasswordInput::Reader(r) => {
                let mut line = String::new();
                r.read_line(&mut line)?;
                let pw = line.strip_suffix('\n').unwrap_or(&line);
                let pw = pw.strip_suffix('\r').unwrap_or(pw);
                anyhow::ensure!(!pw.is_empty(), "no password on standard input");
                Ok(pw.to_string())
            }
        }
    }
}

/// Loads the configuration named on the command line, with `--data-dir` applied.
pub fn load_config(cli: &Cli) -> Result<Config, mailroom_config::ConfigErrors> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = &cli.data_dir {
        config.server.data_dir = dir.clone();
    }
    Ok(config)
}

/// Runs a parsed command line as the binary does (stdin, stdout, signals).
pub async fn run(cli: Cli) -> ExitCode {
    if let Command::Mail(args) = &cli.command {
        let env = |name: &str| std::env::var(name).ok();
        let mut stdin = std::io::stdin();
        let interactive = stdin.is_terminal();
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        let progress = stderr.is_terminal();
        let mut io = crate::mail_cli::MailIo {
            stdin: &mut stdin,
            stdout: &mut stdout,
            stderr: &mut stderr,
            env: &env,
            interactive,
            progress,
        };
        return ExitCode::from(crate::mail_cli::run(args, &mut io).await);
    }
    let stdin = std::io::stdin();
    let mut lock = stdin.lock();
    let mut passwords = if std::io::stdin().is_terminal() {
        PasswordInput::Prompt
    } else {
        PasswordInput::Reader(&mut lock)
    };
    let mut stdout = std::io::stdout();
    match run_with(cli, &mut passwords, &mut stdout).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command with the given password source and output: the testable core of [`run`].
pub async fn run_with(
    cli: Cli,
    passwords: &mut PasswordInput<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Config(ConfigCommand::Check { file }) => match Config::load(Some(file)) {
            Ok(_) => {
                writeln!(out, "{}: OK", file.display())?;
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprint!("{}: {errors}", file.display());
                Ok(ExitCode::from(2))
            }
        },
        Command::Serve { service } => {
            let config = match load_config(&cli) {
                Ok(c) => c,
                Err(errors) => {
                    eprint!("{errors}");
                    return Ok(ExitCode::from(2));
                }
            };
            let telemetry = mailroom_telemetry::init(&mailroom_telemetry::TelemetryOptions {
                json: config.telemetry.log_format == mailroom_config::LogFormat::Json,
                filter: config.telemetry.log_filter.clone(),
                otlp_endpoint: config.telemetry.otlp_endpoint.clone(),
                service_name: config.telemetry.service_name.clone(),
            })?;
            let grace = Duration::from_secs(config.server.shutdown_grace_secs);
            let stack = serve::start(config, *service).await?;
            write!(out, "{}", stack.banner())?;
            out.flush()?;
            stack.shutdown().on_signals().await?;
            writeln!(
                out,
                "shutting down (up to {}s for open sessions)",
                grace.as_secs()
            )?;
            let clean = stack.stop(grace).await;
            telemetry.shutdown();
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Internal(InternalCommand::Secret) => {
            write!(out, "{}", InternalSecret::generate().to_text())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Internal(InternalCommand::Token { role, secret_file }) => {
            let role = Role::parse(role)
                .with_context(|| format!("unknown role {role:?}: msa, inbound or mta"))?;
            let path = match secret_file {
                Some(p) => p.clone(),
                None => load_config(&cli)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .internal_secret_file(),
            };
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the internal secret {}", path.display()))?;
            let secret = InternalSecret::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            writeln!(out, "{}", secret.credential(role).expose())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mail(args) => {
            let env = |name: &str| std::env::var(name).ok();
            let mut stderr = std::io::stderr();
            let mut printed = Vec::new();
            let mut io = crate::mail_cli::MailIo {
                stdin: &mut std::io::empty(),
                stdout: &mut printed,
                stderr: &mut stderr,
                env: &env,
                interactive: false,
                progress: false,
            };
            let code = crate::mail_cli::run(args, &mut io).await;
            out.write_all(&printed)?;
            Ok(ExitCode::from(code))
        }
        Command::Domain(_)
        | Command::User(_)
        | Command::Alias(_)
        | Command::Queue(_)
        | Command::Dkim(_) => {
            let config = load_config(&cli).map_err(|e| anyhow::anyhow!("{e}"))?;
            admin_cli::run(&cli.command, &cli.admin, &config, passwords, out).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
