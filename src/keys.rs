//! Every Redis key name the daemon reads or writes, built only from validated ids.

use crate::ids::{TenantId, Uid};

/// `wado:{tenant}:study:{study}:metadata`: the server's cached study rows.
pub fn study_metadata(tenant: &TenantId, study: &Uid) -> String {
    format!("wado:{tenant}:study:{study}:metadata")
}

/// `wado:{tenant}:study:{study}:metadata:version`: the database snapshot the study key
/// holds, so that an older snapshot never overwrites a newer one.
pub fn study_version(tenant: &TenantId, study: &Uid) -> String {
    format!("wado:{tenant}:study:{study}:metadata:version")
}

/// `db:{tenant}:study:{study}:metadata`: the server's negative flag ("the database failed").
pub fn study_negative_flag(tenant: &TenantId, study: &Uid) -> String {
    format!("db:{tenant}:study:{study}:metadata")
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
    }
}
