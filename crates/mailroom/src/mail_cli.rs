//! `mailroom mail …`: a scriptable mail client for any server, on the
//! `mailroom-mua` client library.
//!
//! Invariants:
//! * results go to stdout (a table, or `--json` with a `"version": 1`
//!   shape; JSON Lines for `watch`); errors go to stderr as one line
//!   `error: …` with a stable exit code (see [`EXIT_CODES`]);
//! * passwords come from `password_command`, an environment variable or a
//!   no-echo prompt, never from argv, and never reach the `--trace`;
//! * `--insecure` is announced on stderr every time it is used;
//! * over POP3, what POP3 cannot do (flags, folders, moving) is refused
//!   with a usage error rather than silently ignored;
//! * nothing is drawn or asked where no one is looking: progress bars only
//!   when stderr is a terminal and `--json` is off; `account add` asks
//!   questions only when stdin is a terminal, and never for a password;
//! * attachments saved over IMAP are streamed to disk
//!   (`mailroom_mua::save`): they appear whole under a sanitised name or
//!   not at all.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use mailroom_mua::account::{self, Account, Accounts, Env, Protocol, ReadProtocol, Server};
use mailroom_mua::imap::{Idled, ImapClient, Query};
use mailroom_mua::message::{self, Attachment, Draft, Mailbox};
use mailroom_mua::pop3::Pop3Client;
use mailroom_mua::save::{Encoding, PartFile};
use mailroom_mua::smtp::SmtpClient;
use mailroom_mua::{ClientOptions, Endpoint, Error, Progress, Result, Security, TlsOptions, exit};
use serde_json::json;

/// The exit codes, as `mailroom mail --help` prints them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected failure (connection lost…)
  2  usage or configuration error (missing profile, no password source…)
  3  cannot connect (refused, unknown host, timeout)
  4  TLS failed (certificate not trusted: --ca-file FILE, or --insecure for test servers)
  5  login refused
  6  the server refused a command (its reply is quoted)
  7  mailbox, message or attachment not found
  8  the server broke the protocol or a limit (--max-size)
  9  a local file could not be read or written";

/// `mailroom mail …`
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct MailArgs {
    /// Connection and output options.
    #[command(flatten)]
    pub options: MailOptions,
    /// What to do.
    #[command(subcommand)]
    pub command: MailCommand,
}

/// Options every mail command takes.
#[derive(Debug, Clone, Args)]
pub struct MailOptions {
    /// The account profile to use (default: the `default` one, or the only one).
    #[arg(long, short = 'a', global = true)]
    pub account: Option<String>,
    /// The accounts file (default: $XDG_CONFIG_HOME/mailroom/accounts.toml).
    #[arg(long, global = true, env = "MAILROOM_MAIL_ACCOUNTS")]
    pub accounts: Option<PathBuf>,
    /// Profile-less mode: the server's host name (all protocols).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Profile-less mode: the login name (the password comes from $MAILROOM_MAIL_PASSWORD or a prompt).
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Profile-less mode and `account add`: tls, starttls or none (default tls).
    #[arg(long, global = true)]
    pub security: Option<Security>,
    /// SMTP submission port (default 465 with tls, else 587).
    #[arg(long, global = true)]
    pub smtp_port: Option<u16>,
    /// IMAP port (default 993 with tls, else 143).
    #[arg(long, global = true)]
    pub imap_port: Option<u16>,
    /// POP3 port (default 995 with tls, else 110).
    #[arg(long, global = true)]
    pub pop3_port: Option<u16>,
    /// Read over POP3 instead of the profile's protocol (profile-less default: imap).
    #[arg(long, global = true)]
    pub pop3: bool,
    /// Read over IMAP instead of the profile's protocol.
    #[arg(long, global = true, conflicts_with = "pop3")]
    pub imap: bool,
    /// Extra trusted CA certificates (PEM), for a private CA or a self-signed server.
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. Only for throw-away test servers: anyone on the path can read and change the session.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Print the protocol exchange on stderr (AUTH lines and passwords redacted).
    #[arg(long, global = true)]
    pub trace: bool,
    /// Print JSON (a versioned shape, "version": 1) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the server on each step.
    #[arg(long, global = true, default_value_t = 60)]
    pub timeout: u64,
    /// Largest message or server response held in memory, in bytes (attachments saved over IMAP are streamed to disk and may be larger).
    #[arg(long, global = true, default_value_t = 64 << 20)]
    pub max_size: usize,
    /// Over IMAP, do not enable UTF8=ACCEPT even where offered: folder names then travel in modified UTF-7 (for servers whose UTF-8 support is broken).
    #[arg(long, global = true)]
    pub no_imap_utf8: bool,
}

/// The mail commands.
#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Send a message (its text from standard input, or $EDITOR on a terminal) through SMTP submission.
    Send(SendArgs),
    /// Reply to a message; your text from standard input, the original quoted below it.
    Reply {
        /// IMAP UID, or POP3 message number.
        id: u32,
        /// Also to the original's To and Cc recipients.
        #[arg(long)]
        all: bool,
        /// IMAP folder.
        #[arg(long, short = 'm', default_value = "INBOX")]
        mailbox: String,
        /// Print the exact message instead of sending it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Forward a message with its attachments; your text from standard input.
    Forward {
        /// IMAP UID, or POP3 message number.
        id: u32,
        /// Recipients.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// Copy recipients.
        #[arg(long, value_delimiter = ',')]
        cc: Vec<String>,
        /// IMAP folder.
        #[arg(long, short = 'm', default_value = "INBOX")]
        mailbox: String,
        /// Print the exact message instead of sending it.
        #[arg(long)]
        dry_run: bool,
    },
    /// One line per message, newest first.
    List(ListArgs),
    /// Show a message: headers, decoded text, attachments (marks it \Seen unless --peek).
    Read {
        /// IMAP UID, or POP3 message number.
        id: u32,
        /// IMAP folder.
        #[arg(long, short = 'm', default_value = "INBOX")]
        mailbox: String,
        /// Print the message source as stored.
        #[arg(long)]
        raw: bool,
        /// Do not mark the message \Seen.
        #[arg(long)]
        peek: bool,
    },
    /// Save attachments of a message into a directory (never overwriting a file).
    Attachments {
        /// IMAP UID, or POP3 message number.
        id: u32,
        /// IMAP folder.
        #[arg(long, short = 'm', default_value = "INBOX")]
        mailbox: String,
        /// Directory to save into (default: the current one).
        #[arg(long, short = 'd', default_value = ".")]
        dir: PathBuf,
        /// Only the attachment with this number (1-based, as `read` lists them); all when omitted.
        #[arg(long)]
        index: Option<usize>,
    },
    /// Set or clear flags (IMAP).
    Flag {
        /// IMAP UIDs.
        #[arg(required = true)]
        ids: Vec<u32>,
        /// Flags to add (e.g. '\Flagged', '\Seen', '$Label').
        #[arg(long)]
        add: Vec<String>,
        /// Flags to remove.
        #[arg(long)]
        remove: Vec<String>,
        /// IMAP folder.
        #[arg(long, short = 'm', default_value = "INBOX")]
        mailbox: String,
    },
    /// Move messages to another folder (IMAP MOVE, or COPY + EXPUNGE).
    Move {
        /// IMAP UIDs.
        #[arg(required = true)]
        ids: Vec<u32>,
        /// Target folder.
        #[arg(long)]
        to: String,
        /// Source folder.
        #[arg(long, short = 'm', default_value = "INBOX")]
        mailbox: String,
    },
    /// Delete messages: to Trash over IMAP (or expunge with --expunge); DELE over POP3.
    Delete {
        /// IMAP UIDs or POP3 message numbers.
        #[arg(required = true)]
        ids: Vec<u32>,
        /// Remove at once instead of moving to Trash.
        #[arg(long)]
        expunge: bool,
        /// IMAP folder.
        #[arg(long, short = 'm', default_value = "INBOX")]
        mailbox: String,
        /// The trash folder.
        #[arg(long, default_value = "Trash")]
        trash: String,
    },
    /// List folders, or create, rename or delete one (IMAP).
    Folders {
        /// What to do (list when omitted).
        #[command(subcommand)]
        action: Option<FolderAction>,
    },
    /// Wait for new mail and print each new message's line as it arrives.
    Watch {
        /// IMAP folder.
        #[arg(long, short = 'm', default_value = "INBOX")]
        mailbox: String,
        /// Stop after this many new messages.
        #[arg(long)]
        count: Option<usize>,
        /// Seconds between polls where IDLE is missing, and over POP3.
        #[arg(long, default_value_t = 30)]
        interval: u64,
    },
    /// Manage account profiles.
    #[command(subcommand)]
    Account(AccountCommand),
}

/// `mail send`
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Recipients (repeat or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub to: Vec<String>,
    /// Copy recipients.
    #[arg(long, value_delimiter = ',')]
    pub cc: Vec<String>,
    /// Blind copy recipients (envelope only).
    #[arg(long, value_delimiter = ',')]
    pub bcc: Vec<String>,
    /// Subject (any Unicode).
    #[arg(long, short = 's', default_value = "")]
    pub subject: String,
    /// Sender (default: the profile's email, or --user).
    #[arg(long)]
    pub from: Option<String>,
    /// Files to attach.
    #[arg(long)]
    pub attach: Vec<PathBuf>,
    /// Print the exact message instead of sending it.
    #[arg(long)]
    pub dry_run: bool,
    /// IMAP folder for a copy of the sent message ("" for none; profile: sent_folder, default Sent).
    #[arg(long)]
    pub sent_folder: Option<String>,
}

/// `mail list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// IMAP folder.
    #[arg(long, short = 'm', default_value = "INBOX")]
    pub mailbox: String,
    /// Only unread messages (IMAP).
    #[arg(long)]
    pub unseen: bool,
    /// Only messages since this day (YYYY-MM-DD).
    #[arg(long)]
    pub since: Option<String>,
    /// Only messages whose From contains this.
    #[arg(long)]
    pub from: Option<String>,
    /// Only messages whose Subject contains this.
    #[arg(long)]
    pub subject: Option<String>,
    /// Messages per page.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Page number (1 is the newest).
    #[arg(long, default_value_t = 1)]
    pub page: usize,
}

/// `mail folders …`
#[derive(Debug, Subcommand)]
pub enum FolderAction {
    /// Create a folder.
    Create {
        /// Its name.
        name: String,
    },
    /// Rename a folder.
    Rename {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// Delete a folder.
    Delete {
        /// Its name.
        name: String,
    },
}

/// `mail account …`
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Write a profile; on a terminal, asks for what the flags do not give. No password is ever stored: a command prints it, a variable holds it, or it is asked for each time.
    Add {
        /// Profile name.
        name: Option<String>,
        /// Email address (From, and the login name unless --login is given).
        #[arg(long)]
        email: Option<String>,
        /// Server host name (IMAP, POP3 and submission).
        #[arg(long)]
        host: Option<String>,
        /// Login name when it is not the email address.
        #[arg(long)]
        login: Option<String>,
        /// Read over POP3 instead of IMAP.
        #[arg(long)]
        read_pop3: bool,
        /// Password command, as argv (repeat for each word: --password-command pass --password-command show …).
        #[arg(long)]
        password_command: Vec<String>,
        /// Environment variable holding the password.
        #[arg(long)]
        password_env: Option<String>,
        /// Ask for the password each time (the default when neither a command nor a variable is given).
        #[arg(long, conflicts_with_all = ["password_command", "password_env"])]
        password_prompt: bool,
        /// Make it the default account.
        #[arg(long)]
        default: bool,
    },
    /// List profiles.
    List,
    /// Connect to each server of the account, show its capabilities and try the login.
    Check,
}

/// What the commands read, write and look up: the process's own in
/// `mailroom`, buffers in tests.
pub struct MailIo<'a> {
    /// Message bodies for `send`.
    pub stdin: &'a mut (dyn Read + Send),
    /// Results.
    pub stdout: &'a mut (dyn Write + Send),
    /// Errors and warnings.
    pub stderr: &'a mut (dyn Write + Send),
    /// Environment variables.
    pub env: Env<'a>,
    /// Whether standard input is a terminal: a password may be prompted
    /// for, the body comes from `$EDITOR`, `account add` asks questions.
    pub interactive: bool,
    /// Whether standard error is a terminal, where progress bars may be
    /// drawn.
    pub progress: bool,
}

/// Runs a mail command; returns its exit code after printing any error.
pub async fn run(args: &MailArgs, io: &mut MailIo<'_>) -> u8 {
    // Boxed: the futures of the protocol clients are large, and a deep
    // stack of them must not overflow a small thread stack.
    match Box::pin(dispatch(args, io)).await {
        Ok(()) => exit::OK,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e}");
            e.exit_code()
        }
    }
}

/// An account resolved from a profile or from the profile-less options.
struct Session {
    account: Account,
    options: ClientOptions,
    password: Option<String>,
}

fn resolve(opts: &MailOptions, io: &mut MailIo<'_>) -> Result<Session> {
    let mut account = if let Some(server) = &opts.server {
        let user = opts
            .user
            .clone()
            .ok_or_else(|| Error::Usage("--server needs --user".into()))?;
        let endpoint = |port| {
            Some(Server {
                host: server.clone(),
                port,
                security: opts.security.unwrap_or(Security::Tls),
            })
        };
        Account {
            email: user.clone(),
            user: Some(user),
            smtp: endpoint(opts.smtp_port),
            imap: endpoint(opts.imap_port),
            pop3: endpoint(opts.pop3_port),
            sent_folder: Some(String::new()),
            ..Account::default()
        }
    } else {
        let path = accounts_path(opts, io)?;
        let accounts = Accounts::load(&path)?;
        accounts.get(opts.account.as_deref(), &path)?.1
    };
    if opts.pop3 {
        account.read = ReadProtocol::Pop3;
    } else if opts.imap {
        account.read = ReadProtocol::Imap;
    }
    if opts.insecure {
        let _ = writeln!(
            io.stderr,
            "WARNING: --insecure: the server's certificate is NOT checked. Anyone between you and the server can read and change this session, password included. Use it only with a throw-away test server."
        );
    }
    let options = ClientOptions {
        tls: TlsOptions {
            ca_file: opts.ca_file.clone(),
            insecure: opts.insecure,
        },
        trace: opts.trace,
        timeout: Duration::from_secs(opts.timeout.max(1)),
        max_message: opts.max_size,
        imap_utf8: !opts.no_imap_utf8,
    };
    Ok(Session {
        account,
        options,
        password: None,
    })
}

fn accounts_path(opts: &MailOptions, io: &MailIo<'_>) -> Result<PathBuf> {
    match &opts.accounts {
        Some(p) => Ok(p.clone()),
        None => account::default_path(io.env).ok_or_else(|| {
            Error::Usage("no configuration directory: set HOME or give --accounts FILE".into())
        }),
    }
}

impl Session {
    fn password(&mut self, io: &mut MailIo<'_>) -> Result<String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        let password = match self.account.password(io.env)? {
            Some(p) => p,
            None if io.interactive => {
                rpassword::prompt_password(format!("Password for {}: ", self.account.login()))
                    .map_err(|e| Error::Usage(format!("cannot read the password: {e}")))?
            }
            None => {
                return Err(Error::Usage(format!(
                    "no password: set ${} or give the profile a password_command or password_env",
                    account::PASSWORD_ENV
                )));
            }
        };
        self.password = Some(password.clone());
        Ok(password)
    }

    fn endpoint(&self, protocol: Protocol) -> Result<Endpoint> {
        self.account.endpoint(protocol)
    }

    async fn imap(&mut self, io: &mut MailIo<'_>) -> Result<ImapClient> {
        let endpoint = self.endpoint(Protocol::Imap)?;
        let mut client = ImapClient::connect(&endpoint, &self.options).await?;
        let password = self.password(io)?;
        client.login(self.account.login(), &password).await?;
        Ok(client)
    }

    async fn pop3(&mut self, io: &mut MailIo<'_>) -> Result<Pop3Client> {
        let endpoint = self.endpoint(Protocol::Pop3)?;
        let mut client = Pop3Client::connect(&endpoint, &self.options).await?;
        let password = self.password(io)?;
        client.login(self.account.login(), &password).await?;
        Ok(client)
    }

    fn reads_pop3(&self) -> bool {
        self.account.read == ReadProtocol::Pop3
    }

    fn imap_only(&self, what: &str) -> Result<()> {
        if self.reads_pop3() {
            return Err(Error::Usage(format!(
                "POP3 cannot {what}: it has one maildrop and no flags or folders (use IMAP)"
            )));
        }
        Ok(())
    }
}

async fn dispatch(args: &MailArgs, io: &mut MailIo<'_>) -> Result<()> {
    if let MailCommand::Account(command) = &args.command {
        return account_command(command, &args.options, io).await;
    }
    let mut session = resolve(&args.options, io)?;
    let json = args.options.json;
    match &args.command {
        MailCommand::Send(send_args) => send(send_args, &mut session, json, io).await,
        MailCommand::List(list_args) => list(list_args, &mut session, json, io).await,
        MailCommand::Reply {
            id,
            all,
            mailbox,
            dry_run,
        } => {
            let draft = |original: &[u8], me: &Mailbox, body: &str| {
                message::reply_draft(original, me, *all, body)
            };
            let flag = "\\Answered";
            respond(*id, mailbox, *dry_run, flag, draft, &mut session, json, io).await
        }
        MailCommand::Forward {
            id,
            to,
            cc,
            mailbox,
            dry_run,
        } => {
            let draft = |original: &[u8], me: &Mailbox, body: &str| {
                let mut draft = message::forward_draft(original, me, body);
                draft.to = parse_all(to)?;
                draft.cc = parse_all(cc)?;
                Ok(draft)
            };
            let flag = "$Forwarded";
            respond(*id, mailbox, *dry_run, flag, draft, &mut session, json, io).await
        }
        MailCommand::Read {
            id,
            mailbox,
            raw,
            peek,
        } => read(*id, mailbox, *raw, *peek, &mut session, json, io).await,
        MailCommand::Attachments {
            id,
            mailbox,
            dir,
            index,
        } => save_attachments(*id, mailbox, dir, *index, &mut session, json, io).await,
        MailCommand::Flag {
            ids,
            add,
            remove,
            mailbox,
        } => {
            session.imap_only("set flags")?;
            if add.is_empty() && remove.is_empty() {
                return Err(Error::Usage("give --add or --remove".into()));
            }
            let mut imap = session.imap(io).await?;
            imap.select(mailbox, false).await?;
            if !add.is_empty() {
                imap.store(ids, true, add).await?;
            }
            if !remove.is_empty() {
                imap.store(ids, false, remove).await?;
            }
            imap.logout().await;
            done(io, json, "flagged", ids)
        }
        MailCommand::Move { ids, to, mailbox } => {
            session.imap_only("move messages")?;
            let mut imap = session.imap(io).await?;
            imap.select(mailbox, false).await?;
            imap.move_to(ids, to).await?;
            imap.logout().await;
            done(io, json, "moved", ids)
        }
        MailCommand::Delete {
            ids,
            expunge,
            mailbox,
            trash,
        } => {
            if session.reads_pop3() {
                let mut pop = session.pop3(io).await?;
                for id in ids {
                    pop.dele(*id).await?;
                }
                pop.quit().await?;
            } else {
                let mut imap = session.imap(io).await?;
                imap.select(mailbox, false).await?;
                if *expunge || mailbox.eq_ignore_ascii_case(trash) {
                    imap.expunge(ids).await?;
                } else {
                    imap.move_to(ids, trash).await?;
                }
                imap.logout().await;
            }
            done(io, json, "deleted", ids)
        }
        MailCommand::Folders { action } => {
            session.imap_only("manage folders")?;
            let mut imap = session.imap(io).await?;
            match action {
                None => {
                    let folders = imap.folders().await?;
                    if json {
                        print_json(io, &json!({"version": 1, "folders": folders}))?;
                    } else {
                        for f in folders {
                            writeln!(io.stdout, "{}\t{}", f.name, f.attributes.join(" "))?;
                        }
                    }
                }
                Some(FolderAction::Create { name }) => {
                    imap.create(name).await?;
                    if json {
                        print_json(io, &json!({"version": 1, "created": name}))?;
                    }
                }
                Some(FolderAction::Rename { from, to }) => {
                    imap.rename(from, to).await?;
                    if json {
                        print_json(
                            io,
                            &json!({"version": 1, "renamed": {"from": from, "to": to}}),
                        )?;
                    }
                }
                Some(FolderAction::Delete { name }) => {
                    imap.delete_folder(name).await?;
                    if json {
                        print_json(io, &json!({"version": 1, "deleted": name}))?;
                    }
                }
            }
            imap.logout().await;
            Ok(())
        }
        MailCommand::Watch {
            mailbox,
            count,
            interval,
        } => watch(mailbox, *count, *interval, &mut session, json, io).await,
        MailCommand::Account(_) => unreachable!("handled above"),
    }
}

/// Reply and forward: fetches the original (peeking), drafts the new
/// message around the text on stdin, sends it and flags the original.
#[allow(clippy::too_many_arguments)]
async fn respond(
    id: u32,
    mailbox: &str,
    dry_run: bool,
    flag: &str,
    draft: impl FnOnce(&[u8], &Mailbox, &str) -> Result<Draft>,
    session: &mut Session,
    json: bool,
    io: &mut MailIo<'_>,
) -> Result<()> {
    let me = sender(None, session)?;
    let body = read_body(session, io)?;
    let original = fetch_whole(id, mailbox, false, session, io).await?;
    let draft = draft(&original, &me, &body)?;
    submit(&draft, dry_run, None, session, json, io).await?;
    if !dry_run {
        mark_original(id, mailbox, flag, session, io).await?;
    }
    Ok(())
}

/// Flags the message replied to or forwarded (IMAP; POP3 has no flags).
async fn mark_original(
    id: u32,
    mailbox: &str,
    flag: &str,
    session: &mut Session,
    io: &mut MailIo<'_>,
) -> Result<()> {
    if session.reads_pop3() {
        return Ok(());
    }
    let mut imap = session.imap(io).await?;
    imap.select(mailbox, false).await?;
    imap.store(&[id], true, &[flag.to_string()]).await?;
    imap.logout().await;
    Ok(())
}

fn done(io: &mut MailIo<'_>, json: bool, what: &str, ids: &[u32]) -> Result<()> {
    if json {
        print_json(io, &json!({"version": 1, what: ids}))
    } else {
        Ok(())
    }
}

fn print_json(io: &mut MailIo<'_>, value: &serde_json::Value) -> Result<()> {
    writeln!(io.stdout, "{value}")?;
    Ok(())
}

fn parse_all(list: &[String]) -> Result<Vec<Mailbox>> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Mailbox::parse(s))
        .collect()
}

/// The sender: `--from`, else the account's address and name.
fn sender(from: Option<&str>, session: &Session) -> Result<Mailbox> {
    match from {
        Some(f) => Mailbox::parse(f),
        None => {
            let mut m = Mailbox::parse(&session.account.email).map_err(|_| {
                Error::Usage(
                    "no sender address: give --from (the login name is not an address)".into(),
                )
            })?;
            m.name = session.account.name.clone();
            Ok(m)
        }
    }
}

/// The message text: from `$VISUAL`/`$EDITOR` when standard input is a
/// terminal and one is set, else from standard input; at most
/// `--max-size` bytes of UTF-8.
fn read_body(session: &Session, io: &mut MailIo<'_>) -> Result<String> {
    let editor = (io.interactive)
        .then(|| (io.env)("VISUAL").or_else(|| (io.env)("EDITOR")))
        .flatten()
        .filter(|e| !e.trim().is_empty());
    let body = match editor {
        Some(editor) => edit(&editor)?,
        None => {
            let mut body = Vec::new();
            io.stdin
                .take(session.options.max_message as u64 + 1)
                .read_to_end(&mut body)
                .map_err(|e| {
                    Error::File(format!("cannot read the body from standard input: {e}"))
                })?;
            body
        }
    };
    if body.len() > session.options.max_message {
        return Err(Error::Usage("the body is larger than --max-size".into()));
    }
    String::from_utf8(body).map_err(|_| Error::Usage("the body is not UTF-8 text".into()))
}

/// Runs the user's editor on a new private file, as git does (`$EDITOR` is
/// a shell command line, the file its last argument); an empty result
/// cancels.
fn edit(editor: &str) -> Result<Vec<u8>> {
    use rand::Rng as _;
    let path = std::env::temp_dir().join(format!(
        "mailroom-{}-{:016x}.txt",
        std::process::id(),
        rand::rng().random::<u64>()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(&path)
        .map_err(|e| Error::File(format!("cannot create {}: {e}", path.display())))?;
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("{editor} \"$1\""), "editor"])
        .arg(&path)
        .status();
    let body = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            return Err(Error::Usage(format!(
                "the editor failed ({s}); nothing sent"
            )));
        }
        Err(e) => return Err(Error::Usage(format!("cannot run the editor: {e}"))),
    }
    let body = body.map_err(|e| Error::File(format!("cannot read the edited text: {e}")))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Usage("empty message: nothing sent".into()));
    }
    Ok(body)
}

async fn send(
    args: &SendArgs,
    session: &mut Session,
    json: bool,
    io: &mut MailIo<'_>,
) -> Result<()> {
    let from = sender(args.from.as_deref(), session)?;
    let body = read_body(session, io)?;
    let draft = Draft {
        from: Some(from.clone()),
        to: parse_all(&args.to)?,
        cc: parse_all(&args.cc)?,
        bcc: parse_all(&args.bcc)?,
        subject: args.subject.clone(),
        body,
        attachments: args
            .attach
            .iter()
            .map(|p| Attachment::from_file(p))
            .collect::<Result<_>>()?,
        ..Draft::default()
    };
    submit(
        &draft,
        args.dry_run,
        args.sent_folder.as_deref(),
        session,
        json,
        io,
    )
    .await
}

/// Sends a draft (or prints it with `dry_run`) and files a copy in the
/// Sent folder over IMAP.
async fn submit(
    draft: &Draft,
    dry_run: bool,
    sent_folder: Option<&str>,
    session: &mut Session,
    json: bool,
    io: &mut MailIo<'_>,
) -> Result<()> {
    let from = draft
        .from
        .clone()
        .ok_or_else(|| Error::Usage("no sender".into()))?;
    let recipients = draft.recipients();
    if recipients.is_empty() {
        return Err(Error::Usage(
            "no recipients: give --to, --cc or --bcc".into(),
        ));
    }
    let raw = draft.compose()?;
    if dry_run {
        io.stdout.write_all(&raw)?;
        return Ok(());
    }
    let endpoint = session.endpoint(Protocol::Smtp)?;
    let mut smtp = SmtpClient::connect(&endpoint, &session.options).await?;
    let password = session.password(io)?;
    smtp.login(session.account.login(), &password).await?;
    let mut bar = Bar::new(io.progress && !json);
    smtp.send_with_progress(&from.address, &recipients, &raw, &mut bar)
        .await?;
    smtp.quit().await;
    let sent_folder = sent_folder
        .map(str::to_string)
        .or_else(|| session.account.sent_folder.clone())
        .unwrap_or_else(|| "Sent".into());
    let mut saved = None;
    if !sent_folder.is_empty() && !session.reads_pop3() && session.account.imap.is_some() {
        let outcome = async {
            let mut imap = session.imap(io).await?;
            imap.append(&sent_folder, &["\\Seen"], &raw).await?;
            imap.logout().await;
            Ok::<_, Error>(())
        }
        .await;
        match outcome {
            Ok(()) => saved = Some(sent_folder),
            Err(e) => {
                let _ = writeln!(
                    io.stderr,
                    "warning: sent, but the copy to {sent_folder:?} failed: {e}"
                );
            }
        }
    }
    let id = message::headline(&raw).message_id.unwrap_or_default();
    if json {
        print_json(
            io,
            &json!({"version": 1, "sent": {"message_id": id, "recipients": recipients, "saved_to": saved}}),
        )
    } else {
        writeln!(io.stdout, "sent <{id}> to {}", recipients.join(", "))?;
        Ok(())
    }
}

/// One listed message.
#[derive(Debug, serde::Serialize)]
struct Line {
    /// IMAP UID or POP3 number.
    id: u32,
    /// POP3 UIDL.
    #[serde(skip_serializing_if = "Option::is_none")]
    uidl: Option<String>,
    date: Option<String>,
    from: String,
    subject: String,
    flags: Vec<String>,
    size: u64,
}

fn print_lines(io: &mut MailIo<'_>, json: bool, lines: &[Line]) -> Result<()> {
    if json {
        return print_json(io, &json!({"version": 1, "messages": lines}));
    }
    for l in lines {
        writeln!(io.stdout, "{}", format_line(l))?;
    }
    Ok(())
}

fn format_line(l: &Line) -> String {
    let date = l.date.as_deref().map_or("", |d| &d[..d.len().min(16)]);
    let flags: Vec<&str> = l
        .flags
        .iter()
        .map(|f| match f.as_str() {
            "\\Seen" => "S",
            "\\Answered" => "A",
            "\\Flagged" => "F",
            "\\Deleted" => "D",
            "\\Draft" => "d",
            _ => "",
        })
        .collect();
    format!(
        "{:>6}  {:16}  {:<28}  {:<4}  {:>8}  {}",
        l.id,
        date.replace('T', " "),
        truncate(&l.from, 28),
        flags.concat(),
        l.size,
        l.subject
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

fn parse_day(s: &str) -> Result<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| Error::Usage(format!("--since {s:?}: expected YYYY-MM-DD")))
}

async fn list(
    args: &ListArgs,
    session: &mut Session,
    json: bool,
    io: &mut MailIo<'_>,
) -> Result<()> {
    let since = args.since.as_deref().map(parse_day).transpose()?;
    let skip = args.page.saturating_sub(1) * args.limit;
    let mut lines = Vec::new();
    if session.reads_pop3() {
        if args.unseen {
            return Err(Error::Usage(
                "POP3 has no \\Seen flag: --unseen needs IMAP".into(),
            ));
        }
        let mut pop = session.pop3(io).await?;
        let mut entries = pop.list().await?;
        entries.reverse();
        let mut matched = 0;
        for entry in entries {
            let header = pop.top(entry.number, 0).await?;
            let head = message::headline(&header);
            let contains = |hay: &str, needle: &Option<String>| {
                needle
                    .as_ref()
                    .is_none_or(|n| hay.to_lowercase().contains(&n.to_lowercase()))
            };
            let recent = since.is_none_or(|d| {
                head.date
                    .as_deref()
                    .is_some_and(|date| date[..date.len().min(10)] >= *d.to_string())
            });
            if !(contains(&head.from, &args.from)
                && contains(&head.subject, &args.subject)
                && recent)
            {
                continue;
            }
            matched += 1;
            if matched <= skip {
                continue;
            }
            lines.push(Line {
                id: entry.number,
                uidl: entry.uid,
                date: head.date,
                from: head.from,
                subject: head.subject,
                flags: Vec::new(),
                size: entry.size,
            });
            if lines.len() >= args.limit {
                break;
            }
        }
        pop.quit().await?;
    } else {
        let mut imap = session.imap(io).await?;
        imap.select(&args.mailbox, true).await?;
        let query = Query {
            unseen: args.unseen,
            since,
            from: args.from.clone(),
            subject: args.subject.clone(),
        };
        let mut uids = imap.search(&query).await?;
        uids.reverse();
        let page: Vec<u32> = uids.into_iter().skip(skip).take(args.limit).collect();
        let mut summaries = imap.summaries(&page).await?;
        summaries.sort_by_key(|s| std::cmp::Reverse(s.uid));
        imap.logout().await;
        for s in summaries {
            let head = message::headline(&s.header);
            lines.push(Line {
                id: s.uid,
                uidl: None,
                date: head.date,
                from: head.from,
                subject: head.subject,
                flags: s.flags,
                size: s.size,
            });
        }
    }
    print_lines(io, json, &lines)
}

async fn fetch_whole(
    id: u32,
    mailbox: &str,
    mark_seen: bool,
    session: &mut Session,
    io: &mut MailIo<'_>,
) -> Result<Vec<u8>> {
    if session.reads_pop3() {
        let mut pop = session.pop3(io).await?;
        let raw = pop.retr(id).await?;
        pop.quit().await?;
        Ok(raw)
    } else {
        let mut imap = session.imap(io).await?;
        imap.select(mailbox, !mark_seen).await?;
        let raw = imap.message(id, mark_seen).await?;
        imap.logout().await;
        Ok(raw)
    }
}

async fn read(
    id: u32,
    mailbox: &str,
    raw: bool,
    peek: bool,
    session: &mut Session,
    json: bool,
    io: &mut MailIo<'_>,
) -> Result<()> {
    let source = fetch_whole(id, mailbox, !peek, session, io).await?;
    if raw {
        io.stdout.write_all(&source)?;
        return Ok(());
    }
    let shown = message::render(&source);
    if json {
        return print_json(io, &json!({"version": 1, "message": shown}));
    }
    let out = &mut io.stdout;
    writeln!(out, "From: {}", shown.headline.from)?;
    if !shown.to.is_empty() {
        writeln!(out, "To: {}", shown.to.join(", "))?;
    }
    if !shown.cc.is_empty() {
        writeln!(out, "Cc: {}", shown.cc.join(", "))?;
    }
    if let Some(date) = &shown.headline.date {
        writeln!(out, "Date: {date}")?;
    }
    writeln!(out, "Subject: {}", shown.headline.subject)?;
    writeln!(out)?;
    writeln!(out, "{}", shown.text.trim_end())?;
    if !shown.attachments.is_empty() {
        writeln!(out)?;
        writeln!(out, "Attachments:")?;
        for a in &shown.attachments {
            writeln!(
                out,
                "  {}. {} ({}, {} bytes)",
                a.index, a.name, a.content_type, a.size
            )?;
        }
    }
    Ok(())
}

async fn save_attachments(
    id: u32,
    mailbox: &str,
    dir: &std::path::Path,
    index: Option<usize>,
    session: &mut Session,
    json: bool,
    io: &mut MailIo<'_>,
) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::File(format!("{} is not a directory", dir.display())));
    }
    let mut saved = Vec::new();
    if session.reads_pop3() {
        // POP3 has no partial fetch: the whole message (within --max-size).
        let mut pop = session.pop3(io).await?;
        let raw = pop.retr(id).await?;
        pop.quit().await?;
        for (info, content) in message::extract_attachments(&raw) {
            if index.is_none_or(|i| i == info.index) {
                let path = message::save_attachment(dir, &info.name, &content)?;
                report_saved(
                    io,
                    json,
                    &mut saved,
                    &info.name,
                    &path,
                    content.len() as u64,
                )?;
            }
        }
    } else {
        // Only the needed parts travel: BODYSTRUCTURE, then each part's MIME
        // header and its content, streamed to disk as it arrives.
        let mut imap = session.imap(io).await?;
        imap.select(mailbox, true).await?;
        let structure = imap.structure(id).await?;
        let parts: Vec<_> = mailroom_mua::imap::parts(&structure)
            .into_iter()
            .filter(|p| p.attachment)
            .collect();
        let mut bar = Bar::new(io.progress && !json);
        for (i, part) in parts.iter().enumerate() {
            if index.is_some_and(|want| want != i + 1) {
                continue;
            }
            let header = imap.part_header(id, &part.path).await?;
            let name =
                message::part_file_name(&header).unwrap_or_else(|| format!("attachment-{}", i + 1));
            let mut file = PartFile::create(dir, Encoding::from_name(&part.encoding))?;
            imap.stream_part(id, part, &mut |chunk| file.write(chunk), &mut bar)
                .await?;
            let (path, size) = file.commit(&name)?;
            report_saved(io, json, &mut saved, &name, &path, size)?;
        }
        imap.logout().await;
    }
    if saved.is_empty() {
        return Err(Error::NotFound(match index {
            Some(i) => format!("message {id} has no attachment {i}"),
            None => format!("message {id} has no attachments"),
        }));
    }
    if json {
        print_json(io, &json!({"version": 1, "saved": saved}))?;
    }
    Ok(())
}

/// Prints (or, with `--json`, collects) one saved attachment.
fn report_saved(
    io: &mut MailIo<'_>,
    json: bool,
    saved: &mut Vec<serde_json::Value>,
    name: &str,
    path: &std::path::Path,
    size: u64,
) -> Result<()> {
    saved.push(json!({"name": name, "path": path, "size": size}));
    if !json {
        writeln!(io.stdout, "{}\t{size} bytes", path.display())?;
    }
    Ok(())
}

/// Transfers at least this large get a progress bar (on a terminal).
const BAR_THRESHOLD: u64 = 1 << 20;

/// A progress bar on standard error, drawn only when it is a terminal,
/// without `--json`, and for transfers of [`BAR_THRESHOLD`] or more.
struct Bar {
    show: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    fn new(show: bool) -> Bar {
        Bar { show, bar: None }
    }
}

impl Progress for Bar {
    fn start(&mut self, what: &str, total: u64) {
        if !self.show || total < BAR_THRESHOLD {
            return;
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        self.bar = Some(bar);
    }

    fn advance(&mut self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

async fn watch(
    mailbox: &str,
    count: Option<usize>,
    interval: u64,
    session: &mut Session,
    json: bool,
    io: &mut MailIo<'_>,
) -> Result<()> {
    let interval = Duration::from_secs(interval.max(1));
    let mut printed = 0usize;
    let mut known: Option<u32> = None;
    let mut seen_uidls: Option<std::collections::HashSet<String>> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let round = if session.reads_pop3() {
            watch_pop3_round(&mut seen_uidls, session, json, io).await
        } else {
            watch_imap_session(
                mailbox,
                &mut known,
                count.map(|c| c - printed),
                interval,
                session,
                json,
                io,
            )
            .await
        };
        match round {
            Ok(n) => {
                printed += n;
                backoff = Duration::from_secs(1);
                if count.is_some_and(|c| printed >= c) {
                    return Ok(());
                }
                if session.reads_pop3() {
                    tokio::time::sleep(interval).await;
                }
            }
            // Errors that a reconnection cannot cure end the watch.
            Err(
                e @ (Error::Auth(_) | Error::Usage(_) | Error::Tls { .. } | Error::NotFound(_)),
            ) => {
                return Err(e);
            }
            Err(e) => {
                let _ = writeln!(
                    io.stderr,
                    "watch: {e}; reconnecting in {}s",
                    backoff.as_secs()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// One IMAP connection's worth of watching: IDLE (re-issued every 25
/// minutes, under the 29-minute limit of RFC 2177) or NOOP polling; new
/// messages are found by UID (above the highest seen), not `\Recent`.
/// Returns how many lines it printed when `remaining` is reached.
async fn watch_imap_session(
    mailbox: &str,
    known: &mut Option<u32>,
    remaining: Option<usize>,
    interval: Duration,
    session: &mut Session,
    json: bool,
    io: &mut MailIo<'_>,
) -> Result<usize> {
    let mut imap = session.imap(io).await?;
    imap.select(mailbox, true).await?;
    let all = imap.search(&Query::default()).await?;
    let mut highest = match *known {
        Some(k) => k,
        None => all.last().copied().unwrap_or(0),
    };
    *known = Some(highest);
    let mut printed = 0;
    // Messages that arrived while we were disconnected.
    let mut check_now = true;
    loop {
        if check_now {
            let new: Vec<u32> = imap
                .search(&Query::default())
                .await?
                .into_iter()
                .filter(|&u| u > highest)
                .collect();
            for s in imap.summaries(&new).await? {
                let head = message::headline(&s.header);
                let line = Line {
                    id: s.uid,
                    uidl: None,
                    date: head.date,
                    from: head.from,
                    subject: head.subject,
                    flags: s.flags,
                    size: s.size,
                };
                if json {
                    writeln!(
                        io.stdout,
                        "{}",
                        serde_json::to_string(&json!({"version": 1, "message": line}))
                            .unwrap_or_default()
                    )?;
                } else {
                    writeln!(io.stdout, "{}", format_line(&line))?;
                }
                io.stdout.flush()?;
                highest = highest.max(s.uid);
                *known = Some(highest);
                printed += 1;
                if remaining.is_some_and(|r| printed >= r) {
                    imap.logout().await;
                    return Ok(printed);
                }
            }
        }
        check_now = if imap.has("IDLE") {
            imap.idle(Duration::from_secs(25 * 60)).await? == Idled::Changed
        } else {
            tokio::time::sleep(interval).await;
            imap.noop().await?;
            true
        };
    }
}

/// One POP3 poll: prints messages whose UIDL was not seen before.
async fn watch_pop3_round(
    seen: &mut Option<std::collections::HashSet<String>>,
    session: &mut Session,
    json: bool,
    io: &mut MailIo<'_>,
) -> Result<usize> {
    let mut pop = session.pop3(io).await?;
    let entries = pop.list().await?;
    let first_round = seen.is_none();
    let known = seen.get_or_insert_with(Default::default);
    let mut printed = 0;
    for entry in entries {
        let Some(uid) = entry.uid.clone() else {
            pop.quit().await?;
            return Err(Error::Usage(
                "the POP3 server has no UIDL: cannot watch".into(),
            ));
        };
        if !known.insert(uid) || first_round {
            continue;
        }
        let head = message::headline(&pop.top(entry.number, 0).await?);
        let line = Line {
            id: entry.number,
            uidl: entry.uid,
            date: head.date,
            from: head.from,
            subject: head.subject,
            flags: Vec::new(),
            size: entry.size,
        };
        if json {
            writeln!(io.stdout, "{}", json!({"version": 1, "message": line}))?;
        } else {
            writeln!(io.stdout, "{}", format_line(&line))?;
        }
        io.stdout.flush()?;
        printed += 1;
    }
    pop.quit().await?;
    Ok(printed)
}

/// What `account add` was given (flags) or told (answers).
#[derive(Debug, Clone, Default)]
struct NewAccount {
    name: Option<String>,
    email: Option<String>,
    host: Option<String>,
    login: Option<String>,
    read_pop3: bool,
    security: Option<Security>,
    /// SMTP, IMAP, POP3.
    ports: [Option<u16>; 3],
    password_command: Vec<String>,
    password_env: Option<String>,
    password_prompt: bool,
    default: bool,
}

impl NewAccount {
    /// The profile: its name, the account, and whether it becomes the
    /// default. Fails naming what is missing.
    fn build(self, first: bool) -> Result<(String, Account, bool)> {
        let (Some(name), Some(email), Some(host)) = (self.name, self.email, self.host) else {
            return Err(Error::Usage(
                "account add needs a NAME, --email and --host (on a terminal it asks for them)"
                    .into(),
            ));
        };
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(Error::Usage(format!("invalid profile name {name:?}")));
        }
        if host.trim().is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Usage(format!("invalid host name {host:?}")));
        }
        Mailbox::parse(&email)?;
        let security = self.security.unwrap_or(Security::Tls);
        let server = |port: Option<u16>| {
            Some(Server {
                host: host.clone(),
                port,
                security,
            })
        };
        let account = Account {
            email,
            user: self.login.filter(|l| !l.is_empty()),
            read: if self.read_pop3 {
                ReadProtocol::Pop3
            } else {
                ReadProtocol::Imap
            },
            password_command: (!self.password_prompt && !self.password_command.is_empty())
                .then_some(self.password_command),
            password_env: self.password_env.filter(|_| !self.password_prompt),
            smtp: server(self.ports[0]),
            imap: server(self.ports[1]),
            pop3: server(self.ports[2]),
            ..Account::default()
        };
        Ok((name, account, self.default || first))
    }
}

/// Questions on stderr, answers from stdin, a line each.
struct Questions<'a> {
    input: std::io::BufReader<&'a mut (dyn Read + Send)>,
    err: &'a mut (dyn Write + Send),
}

impl Questions<'_> {
    /// One line of explanation.
    fn say(&mut self, text: &str) -> Result<()> {
        writeln!(self.err, "{text}")?;
        Ok(())
    }

    /// Asks until answered; an empty answer takes the default.
    fn ask(&mut self, question: &str, default: Option<&str>) -> Result<String> {
        use std::io::BufRead as _;
        loop {
            match default {
                Some(d) if !d.is_empty() => write!(self.err, "{question} [{d}]: ")?,
                _ => write!(self.err, "{question}: ")?,
            }
            self.err.flush()?;
            let mut line = String::new();
            if self.input.read_line(&mut line)? == 0 {
                return Err(Error::Usage(
                    "account add: the input ended before the profile was complete".into(),
                ));
            }
            let line = line.trim();
            match (line.is_empty(), default) {
                (false, _) => return Ok(line.to_string()),
                (true, Some(d)) => return Ok(d.to_string()),
                (true, None) => self.say("  (an answer is needed)")?,
            }
        }
    }
}

/// Asks on the terminal (questions on stderr, answers from stdin) for what
/// the flags of `account add` left out. Never asks for the password
/// itself, only for where it comes from.
fn ask_account(
    mut given: NewAccount,
    accounts: &Accounts,
    io: &mut MailIo<'_>,
) -> Result<(String, Account, bool)> {
    let mut q = Questions {
        input: std::io::BufReader::new(&mut *io.stdin),
        err: &mut *io.stderr,
    };
    q.say("New mail account (the password is not stored; you choose where it comes from).")?;
    let email = match given.email.take() {
        Some(e) => e,
        None => loop {
            let e = q.ask("Email address", None)?;
            match Mailbox::parse(&e) {
                Ok(_) => break e,
                Err(error) => q.say(&format!("  {error}"))?,
            }
        },
    };
    let domain = email.rsplit_once('@').map_or("", |(_, d)| d).to_string();
    let name = match given.name.take() {
        Some(n) => n,
        None => {
            let suggested = domain.split('.').next().unwrap_or("").to_string();
            let suggested = if suggested.is_empty() || accounts.accounts.contains_key(&suggested) {
                format!("account{}", accounts.accounts.len() + 1)
            } else {
                suggested
            };
            q.ask("Profile name", Some(&suggested))?
        }
    };
    let host = match given.host.take() {
        Some(h) => h,
        None => q.ask(
            "Server host name (IMAP, POP3 and submission)",
            Some(&domain),
        )?,
    };
    if !given.read_pop3 {
        given.read_pop3 = loop {
            match q
                .ask("Read mail over imap or pop3", Some("imap"))?
                .to_ascii_lowercase()
                .as_str()
            {
                "imap" => break false,
                "pop3" => break true,
                _ => q.say("  imap or pop3")?,
            }
        };
    }
    let security = match given.security {
        Some(s) => s,
        None => loop {
            match q
                .ask("Security: tls (implicit TLS) or starttls", Some("tls"))?
                .parse::<Security>()
            {
                Ok(s) => break s,
                Err(e) => q.say(&format!("  {e}"))?,
            }
        },
    };
    given.security = Some(security);
    let protocols = [
        Protocol::Smtp,
        if given.read_pop3 {
            Protocol::Pop3
        } else {
            Protocol::Imap
        },
    ];
    for protocol in protocols {
        let slot = match protocol {
            Protocol::Smtp => 0,
            Protocol::Imap => 1,
            Protocol::Pop3 => 2,
        };
        if given.ports[slot].is_some() {
            continue;
        }
        let default = protocol.default_port(security).to_string();
        let question = format!("{} port", protocol.name().to_uppercase());
        let port = loop {
            match q.ask(&question, Some(&default))?.parse::<u16>() {
                Ok(p) if p > 0 => break p,
                _ => q.say("  a port number")?,
            }
        };
        given.ports[slot] = (port.to_string() != default).then_some(port);
    }
    if given.login.is_none() {
        let login = q.ask("Login name", Some(&email))?;
        given.login = (login != email).then_some(login);
    }
    let choosing =
        given.password_command.is_empty() && given.password_env.is_none() && !given.password_prompt;
    if choosing {
        q.say("Where does the password come from?\n  1) a command that prints it (e.g. pass show mail/work)\n  2) an environment variable\n  3) ask every time")?;
        loop {
            match q.ask("Choice", Some("3"))?.as_str() {
                "1" => {
                    let line = q.ask("Command (words separated by spaces, no shell)", None)?;
                    given.password_command = line.split_whitespace().map(str::to_string).collect();
                    break;
                }
                "2" => {
                    given.password_env = Some(q.ask("Variable name", Some(account::PASSWORD_ENV))?);
                    break;
                }
                "3" => {
                    given.password_prompt = true;
                    break;
                }
                _ => q.say("  1, 2 or 3")?,
            }
        }
    }
    if !given.default && !accounts.accounts.is_empty() && accounts.default.as_deref() != Some(&name)
    {
        given.default = q
            .ask("Make it the default account? (y/n)", Some("n"))?
            .to_ascii_lowercase()
            .starts_with('y');
    }
    given.email = Some(email);
    given.name = Some(name);
    given.host = Some(host);
    given.build(accounts.accounts.is_empty())
}

async fn account_command(
    command: &AccountCommand,
    opts: &MailOptions,
    io: &mut MailIo<'_>,
) -> Result<()> {
    let path = accounts_path(opts, io)?;
    let mut accounts = Accounts::load(&path)?;
    match command {
        AccountCommand::Add {
            name,
            email,
            host,
            login,
            read_pop3,
            password_command,
            password_env,
            password_prompt,
            default,
        } => {
            let given = NewAccount {
                name: name.clone(),
                email: email.clone(),
                host: host.clone(),
                login: login.clone(),
                read_pop3: *read_pop3,
                security: opts.security,
                ports: [opts.smtp_port, opts.imap_port, opts.pop3_port],
                password_command: password_command.clone(),
                password_env: password_env.clone(),
                password_prompt: *password_prompt,
                default: *default,
            };
            let complete = given.name.is_some() && given.email.is_some() && given.host.is_some();
            let (name, account, make_default) = if complete || !io.interactive {
                given.build(accounts.accounts.is_empty())?
            } else {
                ask_account(given, &accounts, io)?
            };
            accounts.accounts.insert(name.clone(), account);
            if make_default || accounts.default.is_none() {
                accounts.default = Some(name.clone());
            }
            accounts.save(&path)?;
            if opts.json {
                print_json(io, &json!({"version": 1, "account": name, "file": path}))?;
            } else {
                writeln!(io.stdout, "account {name} written to {}", path.display())?;
            }
            Ok(())
        }
        AccountCommand::List => {
            if opts.json {
                let list: Vec<_> = accounts
                    .accounts
                    .iter()
                    .map(|(n, a)| json!({"name": n, "email": a.email, "default": accounts.default.as_deref() == Some(n)}))
                    .collect();
                return print_json(io, &json!({"version": 1, "accounts": list}));
            }
            for (name, a) in &accounts.accounts {
                let mark = if accounts.default.as_deref() == Some(name) {
                    "*"
                } else {
                    " "
                };
                writeln!(io.stdout, "{mark} {name}\t{}", a.email)?;
            }
            Ok(())
        }
        AccountCommand::Check => {
            let mut session = resolve(opts, io)?;
            let mut report = Vec::new();
            for protocol in [Protocol::Smtp, Protocol::Imap, Protocol::Pop3] {
                let Ok(endpoint) = session.endpoint(protocol) else {
                    continue;
                };
                let password = session.password(io)?;
                let options = session.options.clone();
                let login = session.account.login().to_string();
                let capabilities: Vec<String> = match protocol {
                    Protocol::Smtp => {
                        let mut c = SmtpClient::connect(&endpoint, &options).await?;
                        let caps = c.capabilities().keywords().map(str::to_string).collect();
                        c.login(&login, &password).await?;
                        c.quit().await;
                        caps
                    }
                    Protocol::Imap => {
                        let mut c = ImapClient::connect(&endpoint, &options).await?;
                        let caps = c.capabilities().to_vec();
                        c.login(&login, &password).await?;
                        c.logout().await;
                        caps
                    }
                    Protocol::Pop3 => {
                        let mut c = Pop3Client::connect(&endpoint, &options).await?;
                        let caps = c.capabilities().to_vec();
                        c.login(&login, &password).await?;
                        c.quit().await?;
                        caps
                    }
                };
                if !opts.json {
                    writeln!(
                        io.stdout,
                        "{} {}:{} login OK; capabilities: {}",
                        protocol.name(),
                        endpoint.host,
                        endpoint.port,
                        capabilities.join(" ")
                    )?;
                }
                report.push(json!({"protocol": protocol.name(), "host": endpoint.host, "port": endpoint.port, "capabilities": capabilities, "login": "ok"}));
            }
            if opts.json {
                print_json(io, &json!({"version": 1, "servers": report}))?;
            }
            Ok(())
        }
    }
}
