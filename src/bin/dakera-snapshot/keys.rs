//! Keys of encrypted repositories on the command line: where the key comes from (a file,
//! an environment variable, a prompt on the terminal), and the `init` and `key` commands.

use crate::{print, print_json, CliResult, Ctx, Failure};
use clap::{Args, Subcommand};
use dakera_snapshot::{Error, KdfParams, KeySource, SnapshotManager};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Where the key of an encrypted repository comes from (at most one).
#[derive(Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// The repository's password, read from the first line of FILE (encrypted
    /// repositories). Else from $DAKERA_SNAPSHOT_KEY_FILE, $DAKERA_SNAPSHOT_PASSWORD_FILE or
    /// $DAKERA_SNAPSHOT_PASSWORD (in that order); else, on a terminal, it is asked for.
    #[arg(
        long,
        global = true,
        help_heading = "Encryption",
        value_name = "FILE",
        conflicts_with = "key_file"
    )]
    pub password_file: Option<PathBuf>,

    /// The repository's 256-bit key file (32 bytes, or 64 hex digits; make one with
    /// `key generate FILE`).
    #[arg(long, global = true, help_heading = "Encryption", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

const PASSWORD_VAR: &str = "DAKERA_SNAPSHOT_PASSWORD";
const PASSWORD_FILE_VAR: &str = "DAKERA_SNAPSHOT_PASSWORD_FILE";
const KEY_FILE_VAR: &str = "DAKERA_SNAPSHOT_KEY_FILE";

/// A non-empty environment variable.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl KeyArgs {
    /// The key given by a flag, else by the environment, if any. (The variables are read
    /// here, not by clap, so a flag wins over a variable instead of conflicting with it.)
    pub fn given(&self) -> CliResult<Option<KeySource>> {
        if let Some(path) = &self.key_file {
            return Ok(Some(KeySource::key_file(path)?));
        }
        if let Some(path) = &self.password_file {
            return Ok(Some(KeySource::password_file(path)?));
        }
        if let Some(path) = var(KEY_FILE_VAR) {
            return Ok(Some(KeySource::key_file(path)?));
        }
        if let Some(path) = var(PASSWORD_FILE_VAR) {
            return Ok(Some(KeySource::password_file(path)?));
        }
        match var(PASSWORD_VAR) {
            Some(p) => Ok(Some(KeySource::password(p)?)),
            None => Ok(None),
        }
    }
}

/// Opens `manager`'s repository with the key given, or, for an encrypted repository when
/// none was and a terminal is there, with a password asked for.
pub async fn with_key(
    manager: SnapshotManager,
    args: &KeyArgs,
    url: &str,
) -> CliResult<SnapshotManager> {
    if let Some(key) = args.given()? {
        return Ok(manager.with_key(key));
    }
    match manager.is_encrypted().await {
        Err(Error::KeyRequired { .. }) if std::io::stdin().is_terminal() => {
            let password = ask(&format!("password for {url}: "))?;
            Ok(manager.with_key(password))
        }
        _ => Ok(manager),
    }
}

/// The key of a `copy` destination (at most one).
#[derive(Args, Debug, Clone, Default)]
pub struct ToKey {
    /// The destination's password, from the first line of FILE (an encrypted destination
    /// whose key differs from the source's).
    #[arg(long, value_name = "FILE", conflicts_with = "to_key_file")]
    pub to_password_file: Option<PathBuf>,
    /// The destination's 256-bit key file.
    #[arg(long, value_name = "FILE")]
    pub to_key_file: Option<PathBuf>,
}

/// Opens a `copy` destination: with `--to-password-file` / `--to-key-file` if given; else,
/// if it is encrypted, with the source's key (the same password may open both), or a
/// password asked for on a terminal.
pub async fn destination(
    manager: SnapshotManager,
    to: &ToKey,
    source: &KeyArgs,
    url: &str,
) -> CliResult<SnapshotManager> {
    if let Some(path) = &to.to_key_file {
        return Ok(manager.with_key(KeySource::key_file(path)?));
    }
    if let Some(path) = &to.to_password_file {
        return Ok(manager.with_key(KeySource::password_file(path)?));
    }
    match manager.is_encrypted().await {
        Err(Error::KeyRequired { .. }) => match source.given()? {
            Some(key) => Ok(manager.with_key(key)),
            None if std::io::stdin().is_terminal() => {
                let password = ask(&format!("password for {url}: "))?;
                Ok(manager.with_key(password))
            }
            None => Ok(manager),
        },
        _ => Ok(manager),
    }
}

fn ask(prompt: &str) -> CliResult<KeySource> {
    let line = crate::prompt::ask_hidden(prompt)
        .map_err(|e| Failure::Failed(Error::io("reading the password from the terminal", e)))?;
    Ok(KeySource::password(line)?)
}

/// The key a new key is made from.
#[derive(Args, Debug, Clone, Default)]
pub struct NewKey {
    /// The new password, from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "new_key_file")]
    pub new_password_file: Option<PathBuf>,
    /// The new 256-bit key file.
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
}

/// A new key: from `--new-password-file` or `--new-key-file`, else asked for twice on a
/// terminal.
fn new_key(new: &NewKey) -> CliResult<KeySource> {
    if let Some(path) = &new.new_key_file {
        return Ok(KeySource::key_file(path)?);
    }
    if let Some(path) = &new.new_password_file {
        return Ok(KeySource::password_file(path)?);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(
            "no new key: pass --new-password-file FILE or --new-key-file FILE".into(),
        ));
    }
    let first = ask("new password: ")?;
    let again = ask("new password again: ")?;
    match (&first, &again) {
        (KeySource::Password(a), KeySource::Password(b)) if a == b => Ok(first),
        _ => Err(Failure::Usage(
            "the two passwords differ; nothing was changed".into(),
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Add a user key: a new password or key file that opens the repository too.
    #[command(
        after_help = "Example (rotate a password):\n  dakera-snapshot --repo s3://bucket/dakera --password-file old.txt key add --new-password-file new.txt\n  dakera-snapshot --repo s3://bucket/dakera --password-file new.txt key remove OLD_KEY_ID"
    )]
    Add {
        #[command(flatten)]
        new: NewKey,
    },
    /// List the repository's user keys (nothing secret).
    List,
    /// Remove a user key (never the last one, nor the one in use).
    Remove {
        /// The key's id, as `key list` shows it.
        id: String,
    },
    /// Write a new random 256-bit key to FILE (readable by you only), for `--key-file`.
    /// Needs no repository.
    Generate {
        /// Where to write it; refused if it exists.
        file: PathBuf,
    },
}

/// The manager `init` works with: with the new repository's first key for `--encrypt`
/// (given, or asked for twice on a terminal).
pub fn for_init(
    manager: SnapshotManager,
    args: &KeyArgs,
    encrypt: bool,
) -> CliResult<SnapshotManager> {
    match (encrypt, args.given()?) {
        (true, Some(key)) => Ok(manager.with_key(key)),
        (true, None) => Ok(manager.with_key(new_key(&NewKey::default())?)),
        (false, Some(_)) => Err(Failure::Usage(
            "a password or key file was given without --encrypt: add --encrypt to make an encrypted repository".into(),
        )),
        (false, None) => Ok(manager),
    }
}

/// `init [--encrypt]`.
pub async fn init(ctx: &Ctx) -> CliResult {
    let info = ctx.manager.init(KdfParams::default()).await?;
    if ctx.json {
        return print_json(&serde_json::json!({
            "repository_id": info.repository_id,
            "encrypted": info.encrypted,
            "key": info.key,
        }));
    }
    match &info.key {
        Some(k) => print(&format!(
            "initialized encrypted repository {} (AES-256-GCM); key {} ({})\nKeep the password or key file safe: without it the snapshots cannot be read, by anyone.\n",
            info.repository_id, k.id, k.kind
        )),
        None => print(&format!(
            "initialized unencrypted repository {}\n",
            info.repository_id
        )),
    }
}

/// `key generate FILE` (before any repository is opened).
pub fn generate(file: &Path) -> CliResult {
    KeySource::generate_key_file(file)?;
    print(&format!(
        "wrote a new 256-bit key to {}; pass it with --key-file\n",
        file.display()
    ))
}

/// `key add|list|remove`.
pub async fn key(ctx: &Ctx, command: &KeyCommand) -> CliResult {
    match command {
        KeyCommand::Add { new } => {
            let key = new_key(new)?;
            let info = ctx.manager.add_key(&key).await?;
            if ctx.json {
                return print_json(&info);
            }
            print(&format!("added key {} ({})\n", info.id, info.kind))
        }
        KeyCommand::List => {
            let keys = ctx.manager.list_keys().await?;
            if ctx.json {
                return print_json(&keys);
            }
            let mut out = String::from("ID                KIND      ADDED\n");
            for k in keys {
                let added = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(k.created_at_ms),
                );
                let current = if k.current { "  (this one)" } else { "" };
                out.push_str(&format!("{:<17} {:<9} {added}{current}\n", k.id, k.kind));
            }
            print(&out)
        }
        KeyCommand::Remove { id } => {
            ctx.manager.remove_key(id).await?;
            print(&format!("removed key {id}\n"))
        }
        KeyCommand::Generate { .. } => unreachable!("handled before the repository is opened"),
    }
}
