//! The one error type of the partition policy. Every message names the
//! annotation, config key or spec field at fault and says what to do.

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A `furnace.dev/*` (or CRI) annotation is missing, malformed or asks
    /// for more than the provider allows.
    #[error("annotation `{key}`: {problem}; {fix}")]
    Annotation {
        key: String,
        problem: String,
        fix: String,
    },

    /// The provider config cannot be read or used (furnace-config's error,
    /// naming the file and the key).
    #[error(transparent)]
    Config(#[from] furnace_config::ConfigError),

    /// The incoming OCI spec carries something the partition may not have
    /// (for example a bind mount of a host path).
    #[error("OCI spec `{field}`: {problem}; {fix}")]
    Spec {
        field: String,
        problem: String,
        fix: String,
    },

    /// The caller passed host paths (sockets, key files, the relay's
    /// files) the policy cannot bind for this role.
    #[error("host bind `{which}`: {problem}; {fix}")]
    Bind {
        which: &'static str,
        problem: String,
        fix: String,
    },

    /// The caller passed no PID 1 init where the role needs one, or one
    /// the policy cannot mount.
    #[error("PID 1 init: {problem}; {fix}")]
    Init { problem: String, fix: String },

    /// An embedded seccomp data file is broken (a build-time bug; tests catch it).
    #[error("seccomp profile `{role}`: {problem}; fix runtime/seccomp/{role}.json")]
    SeccompData { role: &'static str, problem: String },
}

impl PolicyError {
    pub(crate) fn annotation(
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        PolicyError::Annotation {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    pub(crate) fn spec(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        PolicyError::Spec {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
