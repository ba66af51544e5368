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
    /// A UID with an empty component, or a tenant made of dots only.
    #[error("has an empty or dot-only component")]
    EmptyComponent,
}

/// A tenant id: 1 to 64 of `A-Z a-z 0-9 . _ -`, never `.`, `..` or holding `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Longest accepted tenant id.
    pub const MAX_LEN: usize = 64;

    /// Validates a tenant id.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        check_len(value, Self::MAX_LEN)?;
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(IdError::BadCharacter("A-Z a-z 0-9 . _ -"));
        }
        // `..` could climb out of a directory; `.` alone names the directory itself.
        if value == "." || value.contains("..") {
            return Err(IdError::EmptyComponent);
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
        for good in ["1234567890", "a", "Tenant_A-1.b", &"x".repeat(64)] {
            assert!(TenantId::parse(good).is_ok(), "{good}");
        }
        for (bad, err) in [
            ("", IdError::Empty),
            (&"x".repeat(65) as &str, IdError::TooLong(64)),
            ("a:b", IdError::BadCharacter("A-Z a-z 0-9 . _ -")),
            ("a*", IdError::BadCharacter("A-Z a-z 0-9 . _ -")),
            ("a{b}", IdError::BadCharacter("A-Z a-z 0-9 . _ -")),
            ("a/b", IdError::BadCharacter("A-Z a-z 0-9 . _ -")),
            ("a b", IdError::BadCharacter("A-Z a-z 0-9 . _ -")),
            ("é", IdError::BadCharacter("A-Z a-z 0-9 . _ -")),
            (".", IdError::EmptyComponent),
            ("..", IdError::EmptyComponent),
            ("a..b", IdError::EmptyComponent),
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
