//! Credentials inside the settings: a password and a service URL that print as
//! `[redacted]` in `Debug`, `Display` and `Serialize`, and hand the real value only on
//! `expose()`.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A secret value: printed as `[redacted]` by `Debug`, `Display` and `Serialize`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

/// A service URL that may carry credentials: shown with its password redacted.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ServiceUrl(String);

impl ServiceUrl {
    /// The full URL, credentials included, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `[redacted]`; unparsable URLs are hidden whole.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_none() {
                    return url.to_string();
                }
                // A placeholder the URL keeps as it is (brackets would be percent-encoded).
                const PLACEHOLDER: &str = "dcwredactedpassword";
                // Cannot fail: a URL with a password has a host.
                let _ = url.set_password(Some(PLACEHOLDER));
                url.to_string().replacen(PLACEHOLDER, "[redacted]", 1)
            }
            Err(_) => "[unparsable URL, redacted]".into(),
        }
    }

    /// The URL's scheme, `None` when it does not parse.
    pub(super) fn scheme(&self) -> Option<String> {
        url::Url::parse(&self.0).ok().map(|u| u.scheme().to_owned())
    }
}

impl From<&str> for ServiceUrl {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for ServiceUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load;

    #[test]
    fn secrets_never_print() {
        let s = load(
            "",
            None,
            &[
                ("DCW__REDIS__URL", "redis://user:hunter2@127.0.0.1:6379"),
                ("DCW__REDIS__PASSWORD", "sw0rdfish"),
                ("DCW__DATABASE__URL", "postgres://app:letmein@db/dicom"),
            ],
        )
        .expect("valid");
        for shown in [format!("{s:?}"), s.to_redacted_toml()] {
            for secret in ["hunter2", "sw0rdfish", "letmein"] {
                assert!(!shown.contains(secret), "{secret} leaked in {shown}");
            }
            assert!(shown.contains("[redacted]"));
        }
        assert_eq!(s.database.url.expose(), "postgres://app:letmein@db/dicom");
    }
}
