//! Validated identifiers: the only values that may become part of a Redis key or a path.

use std::fmt;

/// Why a value is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Zero length.
    #[error("is empty")]
    Empty,
    /// Longer than the limit.
    #[error("is longer than {0} characters")]
    TooLong(usize),
    /// Holds a character outside the allowed set.
    #[error("holds a character outside {0}")]
    BadCharacter(&'static str),
    /// A UID with an empty component.
    #[error("has an empty component")]
    EmptyComponent,
    /// A tenant id that could not be one path component: `/`, `\\` or a control character.
    #[error("holds `/`, `\\` or a control character")]
    NotAPathComponent,
    /// A tenant id that names a directory itself or its parent.
    #[error("is `.` or `..`")]
    DotName,
}

/// A tenant id as the server stores it: 1 to 64 characters of UTF-8, anything that is
/// safe as one path component and key segment (no `/`, `\`, NUL or other control
/// character; not `.` or `..`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Longest accepted tenant id.
    pub const MAX_LEN: usize = 64;

    /// Validates a tenant id.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        if value.is_empty() {
            return Err(IdError::Empty);
        }
        // The column is varchar(64): characters, not bytes.
        if value.chars().nth(Self::MAX_LEN).is_some() {
            return Err(IdError::TooLong(Self::MAX_LEN));
        }
        if value
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
        {
            return Err(IdError::NotAPathComponent);
        }
        // `..` would climb out of the tenant's directory; `.` names the directory itself.
        if value == "." || value == ".." {
            return Err(IdError::DotName);
        }
        Ok(Self(value.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A DICOM UID: 1 to 64 digits and dots, no empty component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

impl Uid {
    /// Longest accepted UID (PS3.5 section 9.1).
    pub const MAX_LEN: usize = 64;

    /// Validates a UID.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        check_len(value, Self::MAX_LEN)?;
        if !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(IdError::BadCharacter("0-9 and ."));
        }
        // Rather than `split`: this runs for every UID of every entry.
        if value.starts_with('.') || value.ends_with('.') || value.contains("..") {
            return Err(IdError::EmptyComponent);
        }
        Ok(Self(value.to_owned()))
    }

    /// The UID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_len(value: &str, max: usize) -> Result<(), IdError> {
    match value.len() {
        0 => Err(IdError::Empty),
        n if n > max => Err(IdError::TooLong(max)),
        _ => Ok(()),
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants() {
        for good in [
            "1234567890",
            "a",
            "Tenant_A-1.b",
            "a:b",
            "a b",
            "Hôpital Zürich",
            "病院",
            "a*{b}",
            "a..b",
            "...",
            &"x".repeat(64),
            &"é".repeat(64),
        ] {
            assert_eq!(TenantId::parse(good).map(|t| t.0), Ok(good.to_owned()));
        }
        for (bad, err) in [
            ("", IdError::Empty),
            (&"x".repeat(65) as &str, IdError::TooLong(64)),
            (&"é".repeat(65), IdError::TooLong(64)),
            ("a/b", IdError::NotAPathComponent),
            ("a\\b", IdError::NotAPathComponent),
            ("a\0b", IdError::NotAPathComponent),
            ("a\nb", IdError::NotAPathComponent),
            ("a\u{7f}", IdError::NotAPathComponent),
            ("a\u{85}", IdError::NotAPathComponent),
            (".", IdError::DotName),
            ("..", IdError::DotName),
        ] {
            assert_eq!(TenantId::parse(bad), Err(err), "{bad:?}");
        }
    }

    #[test]
    fn uids() {
        for good in ["1", "1.2.840.10008.1.2", &"1".repeat(64)] {
            assert!(Uid::parse(good).is_ok(), "{good}");
        }
        for (bad, err) in [
            ("", IdError::Empty),
            (&"1".repeat(65) as &str, IdError::TooLong(64)),
            ("1.2a", IdError::BadCharacter("0-9 and .")),
            ("1.2 ", IdError::BadCharacter("0-9 and .")),
            ("1..2", IdError::EmptyComponent),
            (".1", IdError::EmptyComponent),
            ("1.", IdError::EmptyComponent),
        ] {
            assert_eq!(Uid::parse(bad), Err(err), "{bad:?}");
        }
    }
}
