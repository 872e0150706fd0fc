//! Secrets given to jobpipe (API keys, the webhook secret): from a flag, a
//! variable, or a file (`--*-file`, the Docker and Kubernetes secrets
//! convention), never empty, never shown. A leaf but for [`crate::error`].

use std::path::Path;
use std::sync::Arc;

use crate::error::ConfigError;

/// Reads the secret named `what` from `value` or from `file` (at most one
/// of them). A value that is empty, or a file that is empty or cannot be
/// read, is an error that names where it came from and what to do: an
/// empty key must not silently mean "no key".
pub fn resolve(
    what: &str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Arc<str>>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
            "{what} is given both directly and as a file; give one of them"
        ))),
        (Some(""), None) => Err(ConfigError::Invalid(format!(
            "{what} is set but empty; set it to the key, or unset it (a deploy template whose variable is unset gives an empty value)"
        ))),
        (Some(key), None) => Ok(Some(Arc::from(key))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| {
                ConfigError::KeyFileUnreadable {
                    what: what.to_owned(),
                    path: path.to_owned(),
                    source,
                }
            })?;
            // A file ends with a newline as often as not.
            let key = text.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "the file {} given for {what} is empty; put the key in it",
                    path.display()
                )));
            }
            Ok(Some(Arc::from(key)))
        }
        (None, None) => Ok(None),
    }
}

/// [`resolve`] for a secret that has a flag (and variable) of its own and
/// another for a file: named in errors `direct` or `in_file`, whichever
/// was used.
pub fn resolve_either(
    direct: &str,
    in_file: &str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Arc<str>>, ConfigError> {
    resolve(if file.is_some() { in_file } else { direct }, value, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_a_value_or_a_file_and_are_never_empty() {
        assert_eq!(resolve("k", None, None).unwrap(), None);
        assert_eq!(
            resolve("k", Some("s3cret"), None).unwrap().as_deref(),
            Some("s3cret")
        );
        let empty = resolve("--api-key (JOBPIPE_API_KEY)", Some(""), None).unwrap_err();
        assert!(empty.to_string().contains("JOBPIPE_API_KEY"), "{empty}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(
            resolve("k", None, Some(&file)).unwrap().as_deref(),
            Some("from-file")
        );
        std::fs::write(&file, "\n").unwrap();
        assert!(resolve("k", None, Some(&file)).is_err());
        assert!(resolve("k", None, Some(&dir.path().join("missing"))).is_err());
        assert!(resolve("k", Some("a"), Some(&file)).is_err());
    }
}
