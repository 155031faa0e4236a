//! The audit log: one JSON object a line, appended by every shim on the
//! host, each line one `write(2)` to an `O_APPEND` file so lines from
//! different shims never interleave.

use crate::{Decision, Totals};
use furnace_api::v1::Permission;
use furnace_config::Response;
use serde::Serialize;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One decision as the audit log holds it.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub unix_ms: u64,
    /// `<namespace>/<container id>`.
    pub partition: &'a str,
    pub rule: &'a str,
    pub condition: &'static str,
    /// How many of the condition the rule's window held, and how many fire it.
    pub seen: u64,
    pub count: u64,
    pub window_ms: u64,
    pub response: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls_per_second: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<Permission>,
    /// Every total of the sample that fired the rule.
    pub evidence: Totals,
    /// `applied`, or what went wrong carrying the response out.
    pub outcome: String,
}

impl<'a> AuditRecord<'a> {
    pub fn of(decision: &'a Decision, partition: &'a str, unix_ms: u64, outcome: String) -> Self {
        let (calls_per_second, permission) = match decision.response {
            Response::Throttle { calls_per_second } => (Some(calls_per_second), None),
            Response::Revoke { permission } => (None, Some(permission)),
            _ => (None, None),
        };
        AuditRecord {
            unix_ms,
            partition,
            rule: &decision.rule.name,
            condition: decision.rule.when.name(),
            seen: decision.seen,
            count: decision.rule.count,
            window_ms: decision.rule.window_ms,
            response: decision.response.name(),
            calls_per_second,
            permission,
            evidence: decision.totals,
            outcome,
        }
    }
}

pub struct AuditLog {
    path: PathBuf,
    file: File,
}

impl AuditLog {
    /// Opens `path` for appending, creating it (0600) and its directory
    /// (0700) if need be.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Ok(AuditLog {
            path: path.to_owned(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line.
    pub fn write(&self, record: &AuditRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        (&self.file).write_all(&line)
    }
}
