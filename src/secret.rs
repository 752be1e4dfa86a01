//! Values kept out of the config file: tokens, passwords, keys. A leaf: the feeds, Kafka and
//! firewall settings name their secrets with [`NamedSecret`] and read them at start.
//!
//! A secret's value never reaches a log line, a metric, `/status` or an error message; errors
//! name the secret and where it was looked for, never what was found.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::problems::Problems;

/// A named value kept out of the config file: exactly one of `value_from_env` and
/// `value_from_file`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedSecret {
    pub name: String,
    /// An environment variable holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from_env: Option<String>,
    /// A file holding the value (a mounted Secret); surrounding whitespace is trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from_file: Option<PathBuf>,
}

/// Where a secret's value comes from, without a name: one of an environment variable and a
/// file (a mounted Secret).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// An environment variable holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from_env: Option<String>,
    /// A file holding the value (a mounted Secret); surrounding whitespace is trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from_file: Option<PathBuf>,
}

/// A secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{name}: environment variable {variable} is not set")]
    MissingEnv { name: String, variable: String },
    #[error("{name}: cannot read {path}")]
    File {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SecretError {
    pub fn kind(&self) -> &'static str {
        match self {
            SecretError::MissingEnv { .. } => "secret_env",
            SecretError::File { .. } => "secret_file",
        }
    }
}

impl NamedSecret {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        self.source().validate(path, problems);
    }

    /// The value, read now (a rotated Secret file is picked up by the next read).
    pub fn read(&self) -> Result<String, SecretError> {
        self.source().read(&self.name)
    }

    fn source(&self) -> SecretSource {
        SecretSource {
            value_from_env: self.value_from_env.clone(),
            value_from_file: self.value_from_file.clone(),
        }
    }
}

impl SecretSource {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.value_from_env.is_some() == self.value_from_file.is_some() {
            problems.push(
                path,
                "needs exactly one of value_from_env and value_from_file",
            );
        }
    }

    /// The value, read now; `name` says which secret in errors.
    pub fn read(&self, name: &str) -> Result<String, SecretError> {
        match (&self.value_from_env, &self.value_from_file) {
            (Some(variable), _) => std::env::var(variable).map_err(|_| SecretError::MissingEnv {
                name: name.to_owned(),
                variable: variable.clone(),
            }),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|value| value.trim().to_owned())
                .map_err(|source| SecretError::File {
                    name: name.to_owned(),
                    path: path.display().to_string(),
                    source,
                }),
            (None, None) => Ok(String::new()),
        }
    }
}

/// Credentials given as a key, or as a user and password: exactly one of the two, each secret
/// checked.
pub fn check_credentials(
    path: &str,
    api_key: Option<&SecretSource>,
    username: Option<&str>,
    password: Option<&SecretSource>,
    problems: &mut Problems,
) {
    match (api_key, username, password) {
        (Some(key), None, None) => key.validate(&format!("{path}.api_key"), problems),
        (None, Some(_), Some(password)) => password.validate(&format!("{path}.password"), problems),
        _ => problems.push(path, "set api_key, or username and password (not both)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_from_the_environment_or_a_file_and_errors_name_only_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let secret = |env: Option<&str>, file: Option<&std::path::Path>| NamedSecret {
            name: "Authorization".into(),
            value_from_env: env.map(Into::into),
            value_from_file: file.map(Into::into),
        };
        assert_eq!(secret(None, Some(&file)).read().unwrap(), "from-file");
        std::env::set_var("THREATFLOW_TEST_SECRET", "from-env");
        assert_eq!(
            secret(Some("THREATFLOW_TEST_SECRET"), None).read().unwrap(),
            "from-env"
        );
        let missing = secret(Some("THREATFLOW_TEST_UNSET_VARIABLE"), None)
            .read()
            .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "Authorization: environment variable THREATFLOW_TEST_UNSET_VARIABLE is not set"
        );
        let unreadable = secret(None, Some(&dir.path().join("absent")))
            .read()
            .unwrap_err();
        assert!(unreadable
            .to_string()
            .starts_with("Authorization: cannot read "));
        let mut problems = Problems::default();
        secret(Some("A"), Some(&file)).validate("x", &mut problems);
        secret(None, None).validate("y", &mut problems);
        assert_eq!(problems.paths(), ["x", "y"]);
    }
}
