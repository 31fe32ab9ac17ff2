//! `dakera-snapshot`: inspect, verify, export, import, expire and copy snapshot
//! repositories from a terminal or from cron. A thin shell over the library: every command
//! is one or two library calls plus output formatting.

mod keys;
mod progress;
mod prompt;
mod render;

use clap::{ArgGroup, Parser, Subcommand};
use dakera_snapshot::error::SinkErrorKind;
use dakera_snapshot::jsonl::{export_jsonl, import_jsonl, import_jsonl_incremental};
use dakera_snapshot::sink::redact_url;
use dakera_snapshot::{
    CompressionLevel, CopyOutcome, CreateOptions, DamagedSnapshot, Error, Progress,
    RetentionPolicy, SidecarCache, SinkOptions, SnapshotConfig, SnapshotId, SnapshotManager,
};
use progress::Bars;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const EXAMPLES: &str = "\
Examples:
  # import JSON Lines into a local repository, then look at it
  dakera-snapshot --repo ./backups import vectors.jsonl --description 'first load'
  dakera-snapshot --repo ./backups list
  # copy everything to S3 (credentials from AWS_* variables), verify it there
  dakera-snapshot --repo ./backups copy --all --to s3://my-bucket/dakera
  DAKERA_SNAPSHOT_URL=s3://my-bucket/dakera dakera-snapshot verify --all
  # keep a week of dailies, see first what would go
  dakera-snapshot --repo s3://my-bucket/dakera prune --keep-daily 7 --dry-run

Exit status: 0 success, 1 failure (including a failed verification), 2 usage error.";

/// Inspect, verify, export, import, expire and copy dakera snapshot repositories.
#[derive(Parser, Debug)]
#[command(name = "dakera-snapshot", version, after_help = EXAMPLES)]
struct Cli {
    /// The repository: a local directory, file:///abs/path, s3://bucket/prefix,
    /// gs://bucket/prefix or az://container/prefix. Credentials come from the usual
    /// AWS_*, GOOGLE_*, AZURE_* variables.
    #[arg(
        long,
        env = "DAKERA_SNAPSHOT_URL",
        global = true,
        help_heading = "Global options",
        value_name = "URL"
    )]
    repo: Option<String>,

    /// A TOML file with `repo = "URL"`, an `[options]` table of backend options and a
    /// `[snapshot]` table of snapshot settings; the command line wins over it.
    #[arg(
        long,
        env = "DAKERA_SNAPSHOT_CONFIG",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    /// A backend option, KEY=VALUE (repeatable), e.g. endpoint=http://127.0.0.1:9000,
    /// allow_http=true, region=eu-west-1. Values are never printed.
    #[arg(long = "option", short = 'o', global = true, help_heading = "Global options", value_name = "KEY=VALUE", value_parser = key_value)]
    options: Vec<(String, String)>,

    /// Retries of a failed request to object storage (default 10).
    #[arg(long, global = true, help_heading = "Global options", value_name = "N")]
    retries: Option<usize>,

    /// Give up retrying a request after this long (default 3m).
    #[arg(long, global = true, help_heading = "Global options", value_name = "DURATION", value_parser = humantime::parse_duration)]
    retry_timeout: Option<Duration>,

    /// Where copies of remote repositories' sidecars are kept, so `list` fetches only the
    /// snapshots it has not seen (default $XDG_CACHE_HOME/dakera-snapshot, else
    /// ~/.cache/dakera-snapshot). Safe to delete at any time.
    #[arg(
        long,
        env = "DAKERA_SNAPSHOT_CACHE_DIR",
        global = true,
        help_heading = "Global options",
        value_name = "DIR"
    )]
    cache_dir: Option<PathBuf>,

    /// Read every sidecar from the repository: keep no local copies.
    #[arg(long, global = true, help_heading = "Global options")]
    no_cache: bool,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,

    /// No progress bars and no informational messages on stderr.
    #[arg(long, short, global = true, help_heading = "Global options")]
    quiet: bool,

    /// More logging on stderr (-v info, -vv debug, -vvv trace) and the full chain of causes
    /// of an error. RUST_LOG overrides the level.
    #[arg(long, short, global = true, help_heading = "Global options", action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(flatten)]
    keys: keys::KeyArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a new repository: with --encrypt, an encrypted one (AES-256-GCM, a random master
    /// key wrapped by your password or key file). Encryption is decided here, once.
    #[command(
        after_help = "Examples:\n  dakera-snapshot --repo s3://bucket/dakera init --encrypt            # asks for a password\n  dakera-snapshot --repo ./backups --password-file pw.txt init --encrypt\n  dakera-snapshot key generate repo.key && dakera-snapshot --repo ./backups --key-file repo.key init --encrypt"
    )]
    Init {
        /// Encrypt everything written to the repository.
        #[arg(long)]
        encrypt: bool,
    },

    /// Manage the user keys of an encrypted repository.
    #[command(subcommand)]
    Key(keys::KeyCommand),

    /// List snapshots, newest first.
    #[command(
        after_help = "Example:\n  dakera-snapshot --repo ./backups list --json | jq '.[0].id'"
    )]
    List,

    /// Show one snapshot's sidecar (namespaces, sizes, checksums) and its chain of ancestors.
    #[command(
        after_help = "Examples:\n  dakera-snapshot --repo ./backups show latest\n  dakera-snapshot --repo ./backups show 20261125T101500123Z-0123456789abcdef --json"
    )]
    Show {
        /// Snapshot id, `latest`, or `latest~N` (N before the newest).
        id: String,
    },

    /// Download and check snapshots: size, SHA-256, every frame, per-namespace counts and
    /// digests, and that every ancestor exists. Exits 1 if anything is broken.
    #[command(
        group(ArgGroup::new("which").required(true).args(["id", "all"])),
        after_help = "Examples:\n  dakera-snapshot --repo ./backups verify latest\n  dakera-snapshot --repo s3://bucket/dakera verify --all"
    )]
    Verify {
        /// Snapshot id, `latest`, or `latest~N` (N before the newest).
        id: Option<String>,
        /// Verify every snapshot in the repository.
        #[arg(long)]
        all: bool,
    },

    /// Write a snapshot's vectors (incremental chains resolved) as JSON Lines:
    /// {"namespace","id","values","metadata","ttl_seconds","expires_at"} per line.
    #[command(
        after_help = "Examples:\n  dakera-snapshot --repo ./backups export latest --output all.jsonl\n  dakera-snapshot --repo ./backups export latest -n docs --output - | head\n  dakera-snapshot --repo ./backups export latest --gzip --output all.jsonl.gz"
    )]
    Export {
        /// Snapshot id, `latest`, or `latest~N` (N before the newest).
        id: String,
        /// Only this namespace (repeatable).
        #[arg(long = "namespace", short = 'n', value_name = "NS")]
        namespaces: Vec<String>,
        /// Output file, or `-` for stdout. A file appears only once complete.
        #[arg(long, value_name = "FILE")]
        output: String,
        /// Compress the output with gzip.
        #[arg(long)]
        gzip: bool,
    },

    /// Build a full snapshot from JSON Lines (plain or gzip, from a file or `-` for stdin),
    /// one pass with bounded memory. Prints the new snapshot's id.
    #[command(
        after_help = "Examples:\n  dakera-snapshot --repo ./backups import vectors.jsonl --description 'migration' --label env=prod\n  zcat dump.jsonl.gz | dakera-snapshot --repo ./backups import -\n  dakera-snapshot --repo ./backups import today.jsonl --parent latest"
    )]
    Import {
        /// Input file, or `-` for stdin.
        input: String,
        /// Build an incremental snapshot on this one (an id, `latest` or `latest~N`): the
        /// input is the whole store at a later time; only what changed is stored, down to
        /// the chunks inside a namespace.
        #[arg(long, value_name = "ID")]
        parent: Option<String>,
        /// Free-text description stored with the snapshot.
        #[arg(long)]
        description: Option<String>,
        /// Label KEY=VALUE stored with the snapshot (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// Compression level (default: the config file's, else fast).
        #[arg(long, value_enum)]
        level: Option<Level>,
    },

    /// Delete snapshots. Refuses if other snapshots build on one, unless --force, which
    /// deletes those too and lists them. Every id is checked before anything is deleted.
    #[command(
        after_help = "Examples:\n  dakera-snapshot --repo ./backups delete 20261125T101500123Z-0123456789abcdef --dry-run\n  dakera-snapshot --repo ./backups delete 20261125T101500123Z-0123456789abcdef --force\n  dakera-snapshot --repo ./backups delete ID1 ID2"
    )]
    Delete {
        /// Snapshot ids (or `latest`, `latest~N`).
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        /// Also delete the snapshots that build on them.
        #[arg(long)]
        force: bool,
        /// Say what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },

    /// Delete snapshots no retention rule keeps. Rules combine (a snapshot any rule keeps
    /// stays); the newest snapshot and every ancestor of a kept one always stay.
    #[command(
        group(ArgGroup::new("rules").required(true).multiple(true)
            .args(["keep_last", "keep_within", "keep_daily", "keep_weekly"])),
        after_help = "Examples:\n  dakera-snapshot --repo ./backups prune --keep-last 10 --dry-run\n  dakera-snapshot --repo s3://bucket/dakera prune --keep-within 2d --keep-daily 7 --keep-weekly 8"
    )]
    Prune {
        /// Keep the newest N snapshots.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Keep snapshots younger than this (e.g. 36h, 7d, 2w).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        keep_within: Option<Duration>,
        /// Keep the newest snapshot of each of the last N days.
        #[arg(long, value_name = "N")]
        keep_daily: Option<usize>,
        /// Keep the newest snapshot of each of the last N ISO weeks.
        #[arg(long, value_name = "N")]
        keep_weekly: Option<usize>,
        /// Show what would be deleted and why the rest stays; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },

    /// Remove blobs without a sidecar (left by writers that crashed before committing) and
    /// stale temporary uploads, if older than the grace period, and pins of incremental
    /// writers that died (after 6 hours).
    #[command(after_help = "Example:\n  dakera-snapshot --repo ./backups gc --grace 6h --dry-run")]
    Gc {
        /// Leave anything younger than this alone (writers may still be at work).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Show what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },

    /// Copy snapshots (with the ancestors they need) to another repository, checking
    /// size and SHA-256 on the way and after arrival. Snapshots already there are skipped.
    #[command(
        group(ArgGroup::new("which").required(true).args(["ids", "all"])),
        after_help = "Examples:\n  dakera-snapshot --repo ./backups copy latest --to s3://bucket/dakera\n  dakera-snapshot --repo s3://bucket/dakera copy --all --to gs://other-bucket/dakera"
    )]
    Copy {
        /// Snapshot ids (or `latest`, `latest~N`).
        ids: Vec<String>,
        /// Copy every snapshot.
        #[arg(long)]
        all: bool,
        /// Destination repository URL (created if it is a missing local directory).
        #[arg(long, value_name = "URL")]
        to: String,
        /// A backend option for the destination, KEY=VALUE (repeatable).
        #[arg(long = "to-option", value_name = "KEY=VALUE", value_parser = key_value)]
        to_options: Vec<(String, String)>,
        #[command(flatten)]
        to_key: keys::ToKey,
    },

    /// Compare two snapshots namespace by namespace: added, removed, changed (with vector
    /// counts before and after), unchanged.
    #[command(
        after_help = "Example:\n  dakera-snapshot --repo ./backups diff 20261124T000000000Z-00000000000000aa latest"
    )]
    Diff {
        /// The earlier snapshot (id or `latest`).
        from: String,
        /// The later snapshot (id or `latest`).
        to: String,
    },

    /// Print a shell completion script: `source <(dakera-snapshot completions bash)`, or
    /// save it where your shell loads completions from.
    #[command(
        after_help = "Examples:\n  dakera-snapshot completions bash > ~/.local/share/bash-completion/completions/dakera-snapshot\n  dakera-snapshot completions zsh > ~/.zfunc/_dakera-snapshot\n  dakera-snapshot completions fish > ~/.config/fish/completions/dakera-snapshot.fish"
    )]
    Completions {
        /// bash, zsh or fish (also elvish, powershell).
        shell: clap_complete::Shell,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Level {
    Fast,
    Default,
    Best,
}

impl From<Level> for CompressionLevel {
    fn from(l: Level) -> Self {
        match l {
            Level::Fast => CompressionLevel::Fast,
            Level::Default => CompressionLevel::Default,
            Level::Best => CompressionLevel::Best,
        }
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Why the command failed: a usage problem (exit 2) or anything else (exit 1).
enum Failure {
    Usage(String),
    Failed(Error),
    /// Already reported (e.g. a verification that found problems).
    Reported,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::Config(_) | Error::InvalidInput { .. } => Failure::Usage(e.to_string()),
            other => Failure::Failed(other),
        }
    }
}

type CliResult<T = ()> = Result<T, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let verbose = cli.verbose > 0;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Reported) => ExitCode::from(1),
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {}", one_line(&msg));
            ExitCode::from(2)
        }
        // The reader of our output went away (`... | head`): stop quietly, like a process
        // ended by SIGPIPE, but with our usual failure status.
        Err(Failure::Failed(e)) if is_broken_pipe(&e) => ExitCode::from(1),
        Err(Failure::Failed(e)) => {
            let mut line = one_line(&e.to_string());
            // The innermost cause ("Connection refused", "No such file") is often the one
            // that tells what to fix; name it when the message does not already. A sink
            // error whose kind already says what to do keeps the server's words for -v.
            let said = e
                .sink_kind()
                .is_some_and(|k| !matches!(k, SinkErrorKind::Transient | SinkErrorKind::Other));
            let mut root = std::error::Error::source(&e).filter(|_| !said);
            while let Some(next) = root.and_then(|c| c.source()) {
                root = Some(next);
            }
            if let Some(root) = root.map(|r| one_line(&r.to_string())) {
                if !line.contains(&root) {
                    line = format!("{line} (cause: {root})");
                }
            }
            eprintln!("error: {line}");
            if verbose {
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    eprintln!("  caused by: {}", one_line(&c.to_string()));
                    cause = c.source();
                }
            }
            ExitCode::from(1)
        }
    }
}

/// True when writing our output failed because its reader closed the pipe.
fn is_broken_pipe(e: &Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Everything a command needs: the repository, output settings, progress.
struct Ctx {
    manager: SnapshotManager,
    json: bool,
    quiet: bool,
    bars: Arc<Bars>,
}

impl Ctx {
    /// An informational line on stderr (suppressed by --quiet).
    fn note(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            self.bars.suspend(|| eprintln!("{}", msg.as_ref()));
        }
    }
}

/// What a `--config` file may hold.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// The repository URL (`--repo` wins).
    repo: Option<String>,
    /// Backend options (`-o KEY=VALUE` wins per key).
    #[serde(default)]
    options: std::collections::BTreeMap<String, String>,
    /// Snapshot settings (`SnapshotConfig` fields).
    snapshot: Option<SnapshotConfig>,
}

impl ConfigFile {
    fn read(path: &Path) -> CliResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let what = format!("reading the config file {}", path.display());
            Failure::Failed(Error::io(what, e))
        })?;
        toml::from_str(&text).map_err(|e| {
            let why = one_line(&e.to_string());
            Failure::Usage(format!("config file {}: {why}", path.display()))
        })
    }

    /// Snapshot settings: the file's, with retention off (it is explicit in the CLI:
    /// `prune`; an import or copy never deletes anything).
    fn snapshot_config(&self) -> CliResult<SnapshotConfig> {
        let config = self
            .snapshot
            .clone()
            .unwrap_or_default()
            .with_max_snapshots(0);
        config.validate()?;
        Ok(config)
    }
}

type Retry = (Option<usize>, Option<Duration>);

/// Backend options: KEY=VALUE pairs plus the global retry settings.
fn sink_options(retry: Retry, pairs: &[(String, String)]) -> SinkOptions {
    let mut o = pairs
        .iter()
        .fold(SinkOptions::new(), |o, (k, v)| o.with(k, v));
    (o.max_retries, o.retry_timeout) = retry;
    o
}

/// Opens a repository. `must_exist`: a local directory that is missing is an error rather
/// than silently created empty (a typo must not look like an empty repository).
fn open(
    url: &str,
    options: &SinkOptions,
    must_exist: bool,
    config: SnapshotConfig,
) -> CliResult<SnapshotManager> {
    if let Some(dir) = local_dir(url) {
        if dir.exists() && !dir.is_dir() {
            return Err(Failure::Failed(Error::Config(format!(
                "repository {} is a file, not a folder: name the repository's folder",
                dir.display()
            ))));
        }
        if must_exist && !dir.is_dir() {
            return Err(Failure::Failed(Error::Config(format!(
                "repository {} does not exist (import or copy --to create one)",
                dir.display()
            ))));
        }
    }
    Ok(SnapshotManager::from_url(url, options, config)?)
}

/// The sidecar cache of a remote repository, unless `--no-cache` or no cache folder is
/// known. A local repository reads its sidecars as fast as a cache would, and a `memory://`
/// one lives only as long as the process. The folder is chosen by the redacted URL and the
/// endpoint, so two servers with the same bucket name keep apart.
fn sidecar_cache(cli: &Cli, url: &str, options: &[(String, String)]) -> Option<SidecarCache> {
    if cli.no_cache || local_dir(url).is_some() || url.starts_with("memory://") {
        return None;
    }
    let root = cli.cache_dir.clone().or_else(SidecarCache::default_root)?;
    let shown = url::Url::parse(url).map_or_else(|_| url.to_string(), |u| redact_url(&u));
    let endpoint = options
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().contains("endpoint"))
        .map(|(_, v)| v.clone())
        .chain(
            [
                "AWS_ENDPOINT",
                "AWS_ENDPOINT_URL",
                "AZURITE_BLOB_STORAGE_URL",
            ]
            .iter()
            .filter_map(|v| std::env::var(v).ok()),
        )
        .next()
        .unwrap_or_default();
    Some(SidecarCache::for_repository(
        &root,
        &format!("{shown}\n{endpoint}"),
    ))
}

/// The folder of a local repository that does not exist yet (opening it creates it).
fn new_local_repo(url: &str) -> Option<PathBuf> {
    local_dir(url).filter(|d| !d.exists())
}

fn local_dir(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(PathBuf::from(rest));
    }
    (!url.contains("://")).then(|| PathBuf::from(url))
}

async fn run(cli: Cli) -> CliResult {
    if let Command::Completions { shell } = cli.command {
        // Needs no repository.
        let mut cmd = <Cli as clap::CommandFactory>::command();
        let mut out = std::io::stdout().lock();
        clap_complete::generate(shell, &mut cmd, "dakera-snapshot", &mut out);
        return Ok(());
    }
    if let Command::Key(keys::KeyCommand::Generate { file }) = &cli.command {
        return keys::generate(file);
    }
    let file = match &cli.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::default(),
    };
    let Some(url) = cli.repo.clone().or(file.repo.clone()) else {
        return Err(Failure::Usage(
            "no repository: pass --repo URL, set DAKERA_SNAPSHOT_URL, or name it in --config"
                .into(),
        ));
    };
    // Uploads to object storage: keep their buffers from fragmenting glibc's heap.
    dakera_snapshot::allocator::pin_mmap_threshold_for(&url);
    let config = file.snapshot_config()?;
    // Only an import writes snapshots (and may create the repository).
    let (creates, config) = match &cli.command {
        Command::Import { level: Some(l), .. } => {
            (true, config.with_compression_level((*l).into()))
        }
        Command::Import { level: None, .. } | Command::Init { .. } => (true, config),
        _ => (false, config),
    };
    let bars = Arc::new(Bars::new(!cli.quiet && std::io::stderr().is_terminal()));
    let retry = (cli.retries, cli.retry_timeout);
    let new_repo = new_local_repo(&url);
    // Backend options: the file's, then the command line's (which win, key by key).
    let options: Vec<(String, String)> = file
        .options
        .iter()
        .filter(|(k, _)| !cli.options.iter().any(|(c, _)| c.eq_ignore_ascii_case(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(cli.options.iter().cloned())
        .collect();
    let mut manager = open(&url, &sink_options(retry, &options), !creates, config)?
        .with_progress(bars.clone() as Arc<dyn Progress>);
    if let Some(cache) = sidecar_cache(&cli, &url, &options) {
        manager = manager.with_sidecar_cache(cache);
    }
    manager = match &cli.command {
        Command::Init { encrypt } => keys::for_init(manager, &cli.keys, *encrypt)?,
        _ => keys::with_key(manager, &cli.keys, &url).await?,
    };
    let ctx = Ctx {
        manager,
        json: cli.json,
        quiet: cli.quiet,
        bars,
    };
    if let Some(dir) = new_repo.filter(|_| creates) {
        ctx.note(format!("creating a new repository at {}", dir.display()));
    }
    match cli.command {
        Command::Init { .. } => keys::init(&ctx).await,
        Command::Key(command) => keys::key(&ctx, &command).await,
        Command::List => list(&ctx).await,
        Command::Show { id } => show(&ctx, &id).await,
        Command::Verify { id, all } => verify(&ctx, id.as_deref(), all).await,
        Command::Export {
            id,
            namespaces,
            output,
            gzip,
        } => export(&ctx, &id, &namespaces, &output, gzip).await,
        Command::Import {
            input,
            parent,
            description,
            labels,
            ..
        } => import(&ctx, &input, parent.as_deref(), description, labels).await,
        Command::Delete {
            ids,
            force,
            dry_run,
        } => delete(&ctx, &ids, force, dry_run).await,
        Command::Prune {
            keep_last,
            keep_within,
            keep_daily,
            keep_weekly,
            dry_run,
        } => {
            let policy = RetentionPolicy {
                keep_last,
                keep_within,
                keep_daily,
                keep_weekly,
            };
            prune(&ctx, &policy, dry_run).await
        }
        Command::Gc { grace, dry_run } => gc(&ctx, grace, dry_run).await,
        Command::Copy {
            ids,
            all,
            to,
            to_options,
            to_key,
        } => {
            let dest = (to.as_str(), &sink_options(retry, &to_options));
            copy(&ctx, &ids, all, dest, (&to_key, &cli.keys)).await
        }
        Command::Diff { from, to } => diff(&ctx, &from, &to).await,
        Command::Completions { .. } => unreachable!("handled before the repository is opened"),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> CliResult {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)
        .map_err(|e| Failure::Failed(Error::io("writing to stdout", e.into())))?;
    writeln!(out).map_err(|e| Failure::Failed(Error::io("writing to stdout", e)))
}

fn print(text: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .map_err(|e| Failure::Failed(Error::io("writing to stdout", e)))
}

async fn list(ctx: &Ctx) -> CliResult {
    let catalog = ctx.manager.list_catalog().await?;
    if ctx.json {
        return print_json(&render::list_json(&catalog));
    }
    if catalog.snapshots.is_empty() && catalog.damaged.is_empty() {
        ctx.note(format!("no snapshots in {}", ctx.manager.sink().describe()));
        return Ok(());
    }
    print(&render::list(&catalog))?;
    if !catalog.damaged.is_empty() {
        eprintln!(
            "warning: {} snapshot(s) cannot be read (DAMAGED above); `verify --all` reports them, `delete ID --force` removes one",
            catalog.damaged.len()
        );
    }
    Ok(())
}

async fn show(ctx: &Ctx, id: &str) -> CliResult {
    let id = ctx.manager.find_snapshot(id).await?;
    let lineage = ctx.manager.lineage(id.as_str()).await?;
    if ctx.json {
        return print_json(&render::show_json(&lineage));
    }
    print(&render::show(&lineage))
}

async fn verify(ctx: &Ctx, id: Option<&str>, all: bool) -> CliResult {
    let outcomes = if all {
        ctx.manager.verify_all().await?
    } else {
        let id = ctx.manager.find_snapshot(id.unwrap_or("latest")).await?;
        vec![ctx.manager.verify_with_impact(id.as_str()).await?]
    };
    let broken = outcomes.iter().filter(|o| o.problem.is_some()).count();
    let affected = outcomes
        .iter()
        .filter(|o| o.problem.is_none() && !o.ok)
        .count();
    if ctx.json {
        print_json(&outcomes)?;
    } else {
        print(&render::verify(&outcomes))?;
    }
    if broken + affected > 0 {
        if !ctx.json {
            let more = match affected {
                0 => String::new(),
                n => format!("; {n} more build on a broken snapshot"),
            };
            eprintln!(
                "error: {broken} of {} snapshot(s) failed verification{more}",
                outcomes.len()
            );
        }
        return Err(Failure::Reported);
    }
    Ok(())
}

async fn export(ctx: &Ctx, id: &str, namespaces: &[String], output: &str, gzip: bool) -> CliResult {
    let id = ctx.manager.find_snapshot(id).await?;
    let only = (!namespaces.is_empty()).then_some(namespaces);
    let report = if output == "-" {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout);
        let report = write_export(ctx, &id, only, &mut w, gzip).await?;
        w.flush()
            .map_err(|e| Failure::Failed(Error::io("writing to stdout", e)))?;
        report
    } else {
        // A temporary file next to the target, renamed into place only when complete.
        let target = Path::new(output);
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            let missing = format!("the folder {} does not exist", dir.display());
            let missing = std::io::Error::new(std::io::ErrorKind::NotFound, missing);
            return Err(Failure::Failed(Error::io(
                format!("cannot write {output}"),
                missing,
            )));
        }
        let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| {
            Failure::Failed(Error::io(
                format!("creating a file in {}", dir.display()),
                e,
            ))
        })?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        let report = write_export(ctx, &id, only, &mut w, gzip).await?;
        w.flush()
            .map_err(|e| Failure::Failed(Error::io(format!("writing {output}"), e)))?;
        drop(w);
        tmp.as_file()
            .sync_all()
            .map_err(|e| Failure::Failed(Error::io(format!("writing {output}"), e)))?;
        tmp.persist(target)
            .map_err(|e| Failure::Failed(Error::io(format!("renaming into {output}"), e.error)))?;
        report
    };
    if ctx.json && output != "-" {
        return print_json(&report);
    }
    ctx.note(format!(
        "exported {} vectors from {} namespace(s) of snapshot {id} to {}",
        report.vectors,
        report.namespaces.len(),
        if output == "-" { "stdout" } else { output }
    ));
    Ok(())
}

async fn write_export(
    ctx: &Ctx,
    id: &SnapshotId,
    only: Option<&[String]>,
    w: &mut (dyn Write + Send),
    gzip: bool,
) -> CliResult<dakera_snapshot::ExportReport> {
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::new(6));
        let report = export_jsonl(&ctx.manager, id.as_str(), only, &mut gz).await?;
        gz.finish()
            .map_err(|e| Failure::Failed(Error::io("compressing the export", e)))?;
        Ok(report)
    } else {
        Ok(export_jsonl(&ctx.manager, id.as_str(), only, w).await?)
    }
}

/// Counts input bytes into the progress bar.
struct Counted<R> {
    inner: R,
    bars: Arc<Bars>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bars.advance(n as u64);
        Ok(n)
    }
}

async fn import(
    ctx: &Ctx,
    input: &str,
    parent: Option<&str>,
    description: Option<String>,
    labels: Vec<(String, String)>,
) -> CliResult {
    let options = CreateOptions {
        description,
        labels: labels.into_iter().collect(),
    };
    let (reader, name, size): (Box<dyn Read + Send>, String, Option<u64>) = if input == "-" {
        (Box::new(std::io::stdin()), "stdin".into(), None)
    } else {
        let file = std::fs::File::open(input)
            .map_err(|e| Failure::Failed(Error::io(format!("opening {input}"), e)))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(file), input.to_string(), size)
    };
    ctx.bars.begin(&format!("read and sort {name}"), size);
    let counted = Counted {
        inner: reader,
        bars: ctx.bars.clone(),
    };
    let result = match parent {
        None => import_jsonl(&ctx.manager, counted, &name, options).await,
        Some(p) => {
            let parent = ctx.manager.find_snapshot(p).await?;
            import_jsonl_incremental(&ctx.manager, counted, &name, parent.as_str(), options).await
        }
    };
    ctx.bars.end();
    let report = result?;
    if ctx.json {
        return print_json(&render::summary(&report.snapshot));
    }
    ctx.note(format!(
        "imported {} records into {} namespace(s): snapshot {} ({} compressed)",
        report.records,
        report.snapshot.namespaces.len(),
        report.snapshot.id,
        indicatif::HumanBytes(report.snapshot.size_bytes)
    ));
    print(&format!("{}\n", report.snapshot.id))
}

async fn delete(ctx: &Ctx, ids: &[String], force: bool, dry_run: bool) -> CliResult {
    // Every id is resolved and checked first: a typo in the second id deletes nothing.
    let mut plans: Vec<(SnapshotId, Vec<SnapshotId>)> = Vec::new();
    for spec in ids {
        let id = ctx.manager.find_snapshot(spec).await?;
        let doomed = ctx.manager.plan_delete(id.as_str(), force).await?;
        plans.push((id, doomed));
    }
    let mut deleted: Vec<SnapshotId> = Vec::new();
    let mut text = String::new();
    let verb = if dry_run { "would delete" } else { "deleted" };
    for (id, doomed) in plans {
        let done = if dry_run {
            doomed
        } else if deleted.contains(&id) {
            Vec::new() // built on an id deleted before it, with --force
        } else {
            ctx.manager.delete_snapshot(id.as_str(), force).await?
        };
        for d in done {
            if deleted.contains(&d) {
                continue;
            }
            let why = if d == id { "" } else { " (built on it)" };
            text.push_str(&format!("{verb} {d}{why}\n"));
            deleted.push(d);
        }
    }
    if ctx.json {
        return print_json(&deleted);
    }
    print(&text)
}

async fn prune(ctx: &Ctx, policy: &RetentionPolicy, dry_run: bool) -> CliResult {
    let report = ctx.manager.apply_retention(policy, dry_run).await?;
    if ctx.json {
        return print_json(&report);
    }
    print(&render::prune(&report, dry_run))
}

async fn gc(ctx: &Ctx, grace: Duration, dry_run: bool) -> CliResult {
    let report = ctx.manager.collect_garbage(grace, dry_run).await?;
    if ctx.json {
        return print_json(&report);
    }
    print(&render::gc(&report, dry_run))
}

async fn copy(
    ctx: &Ctx,
    ids: &[String],
    all: bool,
    (to, to_options): (&str, &SinkOptions),
    (to_key, source_key): (&keys::ToKey, &keys::KeyArgs),
) -> CliResult {
    dakera_snapshot::allocator::pin_mmap_threshold_for(to);
    let mut skipped_damaged = Vec::new();
    let wanted: Vec<SnapshotId> = if all {
        let catalog = ctx.manager.list_catalog().await?;
        skipped_damaged = catalog.damaged;
        catalog.snapshots.into_iter().rev().map(|m| m.id).collect()
    } else {
        let mut v = Vec::new();
        for id in ids {
            v.push(ctx.manager.find_snapshot(id).await?);
        }
        v
    };
    if let Some(dir) = new_local_repo(to) {
        ctx.note(format!("creating a new repository at {}", dir.display()));
    }
    let dest = open(to, to_options, false, ctx.manager.config().clone())?;
    let dest = keys::destination(dest, to_key, source_key, to).await?;
    let plan = if all {
        copy_plan_around_damage(ctx, &wanted, &mut skipped_damaged).await?
    } else {
        ctx.manager.copy_plan(&wanted).await?
    };
    let mut outcomes = Vec::new();
    for id in &plan {
        let outcome = ctx.manager.copy_snapshot(id.as_str(), &dest).await?;
        if !ctx.json {
            match &outcome {
                CopyOutcome::Copied { snapshot_id, bytes } => print(&format!(
                    "copied {snapshot_id} ({}), checked at the destination\n",
                    indicatif::HumanBytes(*bytes)
                ))?,
                CopyOutcome::AlreadyPresent { snapshot_id } => {
                    print(&format!("skipped {snapshot_id}: already present\n"))?
                }
            }
        }
        outcomes.push(outcome);
    }
    if ctx.json {
        print_json(&outcomes)?;
    } else if plan.is_empty() && skipped_damaged.is_empty() {
        ctx.note("nothing to copy: the repository is empty");
    }
    if skipped_damaged.is_empty() {
        return Ok(());
    }
    for d in &skipped_damaged {
        eprintln!("error: not copied: {}: {}", d.id, d.problem);
    }
    eprintln!(
        "error: {} snapshot(s) could not be copied; `verify --all` shows why",
        skipped_damaged.len()
    );
    Err(Failure::Reported)
}

/// The copy plan of `--all`: every readable snapshot with its ancestors, leaving out (and
/// recording in `damaged`) those whose chain runs through a sidecar that cannot be read.
async fn copy_plan_around_damage(
    ctx: &Ctx,
    wanted: &[SnapshotId],
    damaged: &mut Vec<DamagedSnapshot>,
) -> Result<Vec<SnapshotId>, Failure> {
    let mut plan: Vec<SnapshotId> = Vec::new();
    for id in wanted {
        match ctx.manager.copy_plan(std::slice::from_ref(id)).await {
            Ok(chain) => plan.extend(
                chain
                    .into_iter()
                    .filter(|c| !plan.contains(c))
                    .collect::<Vec<_>>(),
            ),
            Err(e) if e.is_corrupt() => {
                damaged.push(DamagedSnapshot::new(id.clone(), e.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(plan)
}

async fn diff(ctx: &Ctx, from: &str, to: &str) -> CliResult {
    let from = ctx.manager.find_snapshot(from).await?;
    let to = ctx.manager.find_snapshot(to).await?;
    let d = ctx
        .manager
        .diff_snapshots(from.as_str(), to.as_str())
        .await?;
    if ctx.json {
        return print_json(&d);
    }
    print(&render::diff(&d))
}
