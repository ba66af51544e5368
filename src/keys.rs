//! Every Redis key name the daemon reads or writes: one fixed name, the rest built only
//! from validated ids.

use crate::ids::{TenantId, Uid};

/// `jwksurl:8e646686-…`: the identity provider's key set, read by the server (a fixed name:
/// the server's contract).
pub const JWKS: &str = "jwksurl:8e646686-9d36-480b-95ea-1718b24c1c98";

/// `wado:{tenant}:study:{study}:metadata`: the server's cached study rows.
pub fn study_metadata(tenant: &TenantId, study: &Uid) -> String {
    format!("wado:{tenant}:study:{study}:metadata")
}

/// `wado:{tenant}:study:{study}:metadata:version`: the database snapshot the study key
/// holds, so that an older snapshot never overwrites a newer one.
pub fn study_version(tenant: &TenantId, study: &Uid) -> String {
    format!("wado:{tenant}:study:{study}:metadata:version")
}

/// `wado:{tenant}:study:{study}:metadata:digest`: the SHA-1 of what the daemon last wrote to
/// the study key, so that a later write by someone else (the server) can be told apart.
pub fn study_digest(tenant: &TenantId, study: &Uid) -> String {
    format!("wado:{tenant}:study:{study}:metadata:digest")
}

/// `db:{tenant}:study:{study}:metadata`: the server's negative flag ("the database failed").
pub fn study_negative_flag(tenant: &TenantId, study: &Uid) -> String {
    format!("db:{tenant}:study:{study}:metadata")
}

/// `wado:{tenant}:series:{series}:json_generating`: `"1"` while the series document is being
/// built; the daemon holds it as a lock.
pub fn series_lock(tenant: &TenantId, series: &Uid) -> String {
    format!("wado:{tenant}:series:{series}:json_generating")
}

/// `wado:{tenant}:series:{series}:json_generating:owner`: the random token of the lock's
/// holder.
pub fn series_lock_owner(tenant: &TenantId, series: &Uid) -> String {
    format!("wado:{tenant}:series:{series}:json_generating:owner")
}

/// `wado:{tenant}:series:{series}:metadata`: the optional Redis copy of the series document.
pub fn series_metadata(tenant: &TenantId, series: &Uid) -> String {
    format!("wado:{tenant}:series:{series}:metadata")
}

/// `dcw:{group}:series:due`: series waiting for their build, scored by due time (ms).
pub fn series_schedule(group: &str) -> String {
    format!("dcw:{group}:series:due")
}

/// `dcw:{group}:series:first`: when each scheduled series got its first pending event.
pub fn series_first_event(group: &str) -> String {
    format!("dcw:{group}:series:first")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_server() {
        let t = TenantId::parse("1234567890").expect("tenant");
        let s = Uid::parse("1.2.3").expect("uid");
        assert_eq!(
            study_metadata(&t, &s),
            "wado:1234567890:study:1.2.3:metadata"
        );
        assert_eq!(
            study_negative_flag(&t, &s),
            "db:1234567890:study:1.2.3:metadata"
        );
        assert_eq!(
            study_version(&t, &s),
            "wado:1234567890:study:1.2.3:metadata:version"
        );
        assert_eq!(
            series_lock(&t, &s),
            "wado:1234567890:series:1.2.3:json_generating"
        );
        assert_eq!(
            series_lock_owner(&t, &s),
            "wado:1234567890:series:1.2.3:json_generating:owner"
        );
        assert_eq!(
            series_metadata(&t, &s),
            "wado:1234567890:series:1.2.3:metadata"
        );
    }
}
