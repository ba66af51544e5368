//! The strict check of a fetched key set: JSON without duplicate members, a non-empty
//! `keys` array of public keys only; what it holds is summed up for the log.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// JWK members holding private or secret key material (RFC 7518 section 6): `d`, `p`, `q`,
/// `dp`, `dq`, `qi`, `oth` of RSA, `d` of EC and OKP, `k` of a symmetric key.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// Key ids, and member names shown in errors, are cut to this many characters.
const KID_CHARS: usize = 64;

/// What a valid key set holds, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySummary {
    /// Keys in the set.
    pub keys: usize,
    /// Their `kid` members, where present (cut to a bounded length).
    pub kids: Vec<String>,
}

/// Why a fetched document is not a key set the server may be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKeySet {
    /// Not parsable JSON, or a member given twice in one object.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// Valid JSON but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// No `keys` member, not an array, or an empty one.
    #[error("no non-empty `keys` array")]
    NoKeys,
    /// A member of `keys` that is not an object.
    #[error("key {index}: not a JSON object")]
    KeyNotObject {
        /// Position in `keys`.
        index: usize,
    },
    /// A required member missing, empty or not a string.
    #[error("key {index}: no `{member}`")]
    MissingMember {
        /// Position in `keys`.
        index: usize,
        /// The member's name.
        member: &'static str,
    },
    /// Private or secret key material: the document is refused whole.
    #[error("key {index}: private key member `{member}`")]
    PrivateMember {
        /// Position in `keys`.
        index: usize,
        /// The member's name.
        member: &'static str,
    },
}

/// Checks that `document` is a JSON object with a non-empty `keys` array of public keys:
/// each with `kty`, RSA with `n` and `e`, EC with `crv`, `x` and `y`, OKP with `crv` and
/// `x`, and none with a private member.
pub(super) fn check_key_set(document: &[u8]) -> Result<KeySummary, InvalidKeySet> {
    // Duplicate members are refused: the bytes are stored as they are, so a private member
    // hidden in an earlier duplicate would otherwise pass unseen.
    let Strict(value) =
        serde_json::from_slice(document).map_err(|e| InvalidKeySet::NotJson(e.to_string()))?;
    let Value::Object(set) = value else {
        return Err(InvalidKeySet::NotObject);
    };
    let keys = match set.get("keys") {
        Some(Value::Array(keys)) if !keys.is_empty() => keys,
        _ => return Err(InvalidKeySet::NoKeys),
    };
    let mut kids = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let Value::Object(key) = key else {
            return Err(InvalidKeySet::KeyNotObject { index });
        };
        if let Some(member) = PRIVATE_MEMBERS.into_iter().find(|m| key.contains_key(*m)) {
            return Err(InvalidKeySet::PrivateMember { index, member });
        }
        let required: &[&'static str] = match non_empty_str(key, "kty") {
            None => &["kty"],
            Some("RSA") => &["n", "e"],
            Some("EC") => &["crv", "x", "y"],
            Some("OKP") => &["crv", "x"],
            Some(_) => &[],
        };
        if let Some(member) = required.iter().find(|m| non_empty_str(key, m).is_none()) {
            return Err(InvalidKeySet::MissingMember { index, member });
        }
        if let Some(kid) = key.get("kid").and_then(Value::as_str) {
            kids.push(kid.chars().take(KID_CHARS).collect());
        }
    }
    Ok(KeySummary {
        keys: keys.len(),
        kids,
    })
}

fn non_empty_str<'a>(object: &'a Map<String, Value>, member: &str) -> Option<&'a str> {
    object
        .get(member)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A JSON value read with every object's member names checked for duplicates.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.contains_key(&name) {
                let shown: String = name.chars().take(KID_CHARS).collect();
                return Err(de::Error::custom(format_args!(
                    "member {shown:?} given twice"
                )));
            }
            object.insert(name, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = r#"{"kty":"RSA","kid":"rsa-1","use":"sig","n":"0vx7agoebGcQSuu","e":"AQAB"}"#;
    const EC: &str =
        r#"{"kty":"EC","kid":"ec-1","crv":"P-256","x":"f83OJ3D2xF1","y":"x_FEzRu9m36"}"#;

    fn set(keys: &[&str]) -> String {
        format!(r#"{{"keys":[{}]}}"#, keys.join(","))
    }

    #[test]
    fn public_key_sets_pass_and_name_their_key_ids() {
        let okp = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7"}"#;
        let other = r#"{"kty":"future-kind","kid":"f"}"#;
        let summary = check_key_set(set(&[RSA, EC, okp, other]).as_bytes()).expect("valid");
        assert_eq!(summary.keys, 4);
        assert_eq!(summary.kids, ["rsa-1", "ec-1", "f"]);
        // Members besides `keys` are the provider's business.
        let extra = format!(r#"{{"keys":[{RSA}],"issuer":"x"}}"#);
        assert!(check_key_set(extra.as_bytes()).is_ok());
    }

    #[test]
    fn documents_that_are_not_public_key_sets_are_refused_with_their_reason() {
        use InvalidKeySet::*;
        let rsa_without_n = r#"{"kty":"RSA","e":"AQAB"}"#;
        let ec_without_y = r#"{"kty":"EC","crv":"P-256","x":"a"}"#;
        let empty_kty = r#"{"kty":"","n":"a","e":"b"}"#;
        let private_rsa = r#"{"kty":"RSA","n":"a","e":"b","d":"secret"}"#;
        let private_ec = r#"{"kty":"EC","crv":"P-256","x":"a","y":"b","d":"secret"}"#;
        let secret = r#"{"kty":"oct","k":"c2VjcmV0"}"#;
        let rsa_prime = r#"{"kty":"RSA","n":"a","e":"b","qi":"c"}"#;
        let hidden_twice = r#"{"kty":"RSA","n":"a","e":"b","d":"secret","d":"x"}"#;
        let cases: Vec<(String, InvalidKeySet)> = vec![
            ("[]".into(), NotObject),
            ("\"keys\"".into(), NotObject),
            ("{}".into(), NoKeys),
            (r#"{"keys":[]}"#.into(), NoKeys),
            (r#"{"keys":{}}"#.into(), NoKeys),
            (set(&["1"]), KeyNotObject { index: 0 }),
            (
                set(&[RSA, "{}"]),
                MissingMember {
                    index: 1,
                    member: "kty",
                },
            ),
            (
                set(&[empty_kty]),
                MissingMember {
                    index: 0,
                    member: "kty",
                },
            ),
            (
                set(&[rsa_without_n]),
                MissingMember {
                    index: 0,
                    member: "n",
                },
            ),
            (
                set(&[ec_without_y]),
                MissingMember {
                    index: 0,
                    member: "y",
                },
            ),
            (
                set(&[RSA, private_rsa]),
                PrivateMember {
                    index: 1,
                    member: "d",
                },
            ),
            (
                set(&[private_ec]),
                PrivateMember {
                    index: 0,
                    member: "d",
                },
            ),
            (
                set(&[secret]),
                PrivateMember {
                    index: 0,
                    member: "k",
                },
            ),
            (
                set(&[rsa_prime]),
                PrivateMember {
                    index: 0,
                    member: "qi",
                },
            ),
        ];
        for (document, expected) in cases {
            assert_eq!(
                check_key_set(document.as_bytes()),
                Err(expected),
                "{document}"
            );
        }
        for document in [
            String::new(),
            "{".into(),
            format!("{} trailing", set(&[RSA])),
            set(&[hidden_twice]),
            format!(r#"{{"keys":[{{"kty":"RSA","d":"x"}}],"keys":[{RSA}]}}"#),
        ] {
            assert!(
                matches!(check_key_set(document.as_bytes()), Err(NotJson(_))),
                "{document}"
            );
        }
        assert!(matches!(
            check_key_set(b"{\"keys\":[\xff]}"),
            Err(NotJson(_))
        ));
    }
}
