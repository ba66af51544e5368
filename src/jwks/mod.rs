//! The identity provider's key set (JWKS): fetched over verified HTTPS on a jittered
//! schedule, checked (public keys only), and written unchanged to the key the server reads;
//! while the provider is down the last good value stays, its TTL extended before it expires.
//!
//! `check` judges a document, `fetch` gets one, `refresher` keeps Redis up to date with it.

mod check;
mod fetch;
mod refresher;

pub use fetch::{FetchError, MAX_DOCUMENT_BYTES, MAX_REDIRECTS};
pub use refresher::{Cached, Outcome, Refresher};
