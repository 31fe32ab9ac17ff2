//! The crate's one error type.
//!
//! Every variant says what failed and carries the id, key or namespace involved, so an
//! operator can act on the message alone. Errors never contain credentials: sinks attach the
//! object key, never a URL with user info or a signed request.

use std::fmt;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in a snapshot a corruption was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The snapshot whose blob or sidecar is corrupt.
    pub snapshot_id: String,
    /// The namespace whose data is corrupt, when the damage is inside one.
    pub namespace: Option<String>,
    /// Byte offset in the compressed blob (or in the sidecar), when known.
    pub offset: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snapshot {}", self.snapshot_id)?;
        if let Some(ns) = &self.namespace {
            write!(f, ", namespace {ns:?}")?;
        }
        if let Some(off) = self.offset {
            write!(f, ", near byte {off}")?;
        }
        Ok(())
    }
}

/// The operation a sink was performing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkOp {
    /// Writing a whole object.
    Put,
    /// Streaming (multipart) upload of an object.
    PutStreaming,
    /// Reading an object, whole or a range of it.
    Get,
    /// Reading an object's size and modification time.
    Head,
    /// Listing keys under a prefix.
    List,
    /// Removing an object.
    Delete,
}

impl fmt::Display for SinkOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SinkOp::Put => "put",
            SinkOp::PutStreaming => "streaming put",
            SinkOp::Get => "get",
            SinkOp::Head => "head",
            SinkOp::List => "list",
            SinkOp::Delete => "delete",
        })
    }
}

/// What kind of failure a sink met, classified once where the backend's own error is
/// mapped (from `object_store::Error` variants, an HTTP status, or an `io::ErrorKind`).
/// Control flow looks at this, never at message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkErrorKind {
    /// The object is absent.
    NotFound,
    /// A create-if-absent found the key taken, or a condition did not hold.
    AlreadyExists,
    /// The credentials were refused (bad key or secret, expired token).
    Unauthenticated,
    /// The credentials are valid but lack the right for this operation.
    PermissionDenied,
    /// No credentials were configured, and none could be found in the environment.
    NoCredentials,
    /// The bucket or container does not exist.
    BucketNotFound,
    /// A ranged read reached past the end of the object.
    InvalidRange,
    /// The backend does not support the operation.
    NotSupported,
    /// A failure that may pass: a timeout, a dropped connection, throttling, a server error.
    Transient,
    /// The repository is not usable as configured (e.g. a plain `http://` endpoint without
    /// `allow_http`).
    Configuration,
    /// Anything else (the source says what).
    Other,
}

impl SinkErrorKind {
    /// True when retrying the same call may succeed.
    pub fn is_retryable(self) -> bool {
        self == SinkErrorKind::Transient
    }

    /// A short explanation with what to do, for the kinds that have one; an error of such a
    /// kind shows this instead of the backend's own words (which stay in its source).
    pub fn hint(self) -> Option<&'static str> {
        Some(match self {
            SinkErrorKind::Unauthenticated => {
                "authentication failed: check the access key and secret"
            }
            SinkErrorKind::PermissionDenied => {
                "permission denied: check the credentials' rights on this bucket"
            }
            SinkErrorKind::BucketNotFound => "the bucket or container does not exist",
            _ => return None,
        })
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No snapshot with this id exists in the repository (its sidecar is absent).
    #[error("snapshot {id} not found")]
    SnapshotNotFound {
        /// The id that was asked for.
        id: String,
    },

    /// `latest` or `latest~N` names no snapshot: the repository has fewer.
    #[error("{spec} names no snapshot: {repository} has {}", count_snapshots(*.count))]
    NotThatMany {
        /// What was asked for (`latest`, `latest~3`).
        spec: String,
        /// The repository.
        repository: String,
        /// How many snapshots it has.
        count: usize,
    },

    /// An object the operation needs is absent from the sink.
    #[error("object {key} not found")]
    ObjectNotFound {
        /// The key, relative to the sink's root.
        key: String,
    },

    /// A namespace that was asked for does not exist (in a store or in a snapshot).
    #[error("namespace {namespace:?} not found{}", context_suffix(.context))]
    NamespaceNotFound {
        /// The namespace name.
        namespace: String,
        /// Where it was looked for, e.g. "in snapshot X".
        context: String,
    },

    /// A write lost a race or would overwrite something that must not be overwritten.
    #[error("conflict on {key}: {reason}")]
    Conflict {
        /// The key or id involved.
        key: String,
        /// Why the write was refused.
        reason: String,
    },

    /// The caller passed something unusable: a malformed id, key, namespace or option.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid ("snapshot id", "key", "namespace", ...).
        what: &'static str,
        /// Why, naming the offending value when it is safe to print.
        reason: String,
    },

    /// Stored data does not match what it claims to be.
    #[error("corrupt data in {location}: {reason}")]
    Corrupt {
        /// Where the corruption is.
        location: Location,
        /// What check failed.
        reason: String,
    },

    /// The data was written by a newer, incompatible format version.
    #[error(
        "unsupported format version {found} in {what} (this build reads major version {supported})"
    )]
    UnsupportedVersion {
        /// What was being read ("blob of snapshot X", "sidecar of snapshot X").
        what: String,
        /// The version found.
        found: String,
        /// The major version this build reads.
        supported: u16,
    },

    /// The repository is encrypted and no key was given.
    #[error("{repository} is encrypted: give its password or key file (--password-file, --key-file, or DAKERA_SNAPSHOT_PASSWORD / DAKERA_SNAPSHOT_PASSWORD_FILE)")]
    KeyRequired {
        /// The repository.
        repository: String,
    },

    /// No user key of the repository opens with the password or key file given.
    #[error("no key of {repository} opens with the {given} given: wrong {given}, or its keys/ were altered")]
    WrongKey {
        /// The repository.
        repository: String,
        /// `password` or `key file`.
        given: &'static str,
    },

    /// A key was given for a repository that is not encrypted.
    #[error("{repository} is not encrypted: drop the password or key file, or make an encrypted repository with `init --encrypt`")]
    NotEncrypted {
        /// The repository.
        repository: String,
    },

    /// The repository's config object or its keys are not what they must be.
    #[error("repository config: {reason}")]
    RepositoryConfig {
        /// What is wrong, and what to do.
        reason: String,
    },

    /// A vector or namespace does not have the dimension it must have.
    #[error("dimension mismatch in namespace {namespace:?}: expected {expected}, got {actual}")]
    DimensionMismatch {
        /// The namespace.
        namespace: String,
        /// The dimension the namespace has.
        expected: usize,
        /// The dimension that was offered.
        actual: usize,
    },

    /// An incremental snapshot's chain of ancestors is incomplete, so it cannot be resolved.
    #[error("snapshot {id} cannot be resolved: its ancestor {missing} is missing")]
    BrokenChain {
        /// The snapshot being resolved.
        id: String,
        /// The ancestor whose sidecar is absent.
        missing: String,
    },

    /// A snapshot cannot be deleted because other snapshots depend on it.
    #[error(
        "snapshot {id} has snapshots built on it ({}); delete them first, or force the delete (--force) to remove them too",
        children.join(", ")
    )]
    HasDependents {
        /// The snapshot that was to be deleted.
        id: String,
        /// Snapshots whose chains go through it.
        children: Vec<String>,
    },

    /// A configuration value is out of range or inconsistent.
    #[error("configuration error: {0}")]
    Config(String),

    /// The sink failed while performing an operation on a key. The message is short when
    /// the kind says what to do (authentication, permissions, a missing bucket, ...): the
    /// backend's own words (a server's XML body, say) are then only in `source`.
    #[error("{op} of {key}{} failed: {}", in_repository(.repository), sink_reason(*.kind, .source.as_ref()))]
    Sink {
        /// What the sink was doing.
        op: SinkOp,
        /// The key (or prefix, for a listing) relative to the sink's root.
        key: String,
        /// The repository (sink) it happened in, credential-free, when the sink says.
        repository: String,
        /// What kind of failure it was.
        kind: SinkErrorKind,
        /// The underlying error, as the backend reported it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// Reading or writing a local file or stream (an export, an import) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written, e.g. "writing /tmp/out.jsonl".
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An input file (e.g. a JSON Lines import) is malformed at a given line.
    #[error("{input}{}: {reason}", line_part(*.line))]
    BadInput {
        /// The input's name (a path, or "stdin").
        input: String,
        /// 1-based line number; 0 when the problem is the input as a whole.
        line: u64,
        /// What is wrong with the line.
        reason: String,
    },

    /// The vector store returned an error.
    #[error("vector storage error: {0}")]
    Storage(String),

    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),

    /// An invariant of this crate did not hold: a bug, never the user's or the data's fault.
    #[error("internal error (please report it): {0}")]
    Internal(String),
}

fn line_part(line: u64) -> String {
    match line {
        0 => String::new(),
        n => format!(", line {n}"),
    }
}

fn count_snapshots(count: usize) -> String {
    match count {
        0 => "no snapshots yet".into(),
        1 => "only 1 snapshot".into(),
        n => format!("only {n} snapshots"),
    }
}

fn in_repository(repository: &str) -> String {
    match repository {
        "" => String::new(),
        r => format!(" in {r}"),
    }
}

fn sink_reason(kind: SinkErrorKind, source: &(dyn std::error::Error + Send + Sync)) -> String {
    kind.hint()
        .map_or_else(|| source.to_string(), str::to_string)
}

fn context_suffix(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!(" {context}")
    }
}

impl Error {
    /// Builds an [`Error::InvalidInput`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Sink`] from any error type.
    pub fn sink(
        op: SinkOp,
        key: impl Into<String>,
        kind: SinkErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Sink {
            op,
            key: key.into(),
            repository: String::new(),
            kind,
            source: source.into(),
        }
    }

    /// Names the repository of a sink error (other errors are returned unchanged).
    pub fn in_repository(mut self, description: impl Into<String>) -> Self {
        if let Error::Sink { repository, .. } = &mut self {
            *repository = description.into();
        }
        self
    }

    /// The kind of a sink failure (`NotFound` for [`Error::ObjectNotFound`],
    /// `AlreadyExists` for [`Error::Conflict`]); `None` for errors that did not come from
    /// a sink.
    pub fn sink_kind(&self) -> Option<SinkErrorKind> {
        match self {
            Error::Sink { kind, .. } => Some(*kind),
            Error::ObjectNotFound { .. } => Some(SinkErrorKind::NotFound),
            Error::Conflict { .. } => Some(SinkErrorKind::AlreadyExists),
            _ => None,
        }
    }

    /// True when retrying the operation may succeed (a transient sink failure).
    pub fn is_retryable(&self) -> bool {
        self.sink_kind().is_some_and(SinkErrorKind::is_retryable)
    }

    /// Builds an [`Error::Corrupt`].
    pub fn corrupt(
        snapshot_id: &str,
        namespace: Option<&str>,
        offset: Option<u64>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            location: Location {
                snapshot_id: snapshot_id.to_string(),
                namespace: namespace.map(str::to_string),
                offset,
            },
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Io`].
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// True when this error means "the thing asked for is absent".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::SnapshotNotFound { .. }
                | Error::NotThatMany { .. }
                | Error::ObjectNotFound { .. }
                | Error::NamespaceNotFound { .. }
                | Error::Sink {
                    kind: SinkErrorKind::NotFound,
                    ..
                }
        )
    }

    /// True when the stored data failed an integrity check.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}
