//! The study cache: a window's studies in rounds (plan from one query, one write round
//! trip, one XACK), the study JSON, the cache scripts, and the second look at negative
//! flags.

pub mod cache;
pub mod query;
pub mod recheck;
pub mod refresh;
pub mod round;
pub mod study;
