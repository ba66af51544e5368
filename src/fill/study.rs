//! The server's `DicomStateMeta` rows and their study metadata JSON (no I/O).

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use serde::{Deserialize, Serialize};

/// One `dicom_state_meta` row (one series), field for field and in the order of the
/// server's `DicomStateMeta`, so its JSON is byte-compatible with what the server caches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[allow(missing_docs)] // The fields are the columns; SPEC section 3 documents them.
pub struct DicomStateMeta {
    pub tenant_id: String,
    pub patient_id: String,
    pub study_uid: String,
    pub series_uid: String,
    pub study_uid_hash: String,
    pub series_uid_hash: String,
    pub study_date_origin: String,
    pub patient_name: Option<String>,
    pub patient_sex: Option<String>,
    pub patient_birth_date: Option<NaiveDate>,
    pub patient_birth_time: Option<NaiveTime>,
    pub patient_age: Option<String>,
    pub patient_size: Option<f64>,
    pub patient_weight: Option<f64>,
    pub study_date: NaiveDate,
    pub study_time: Option<NaiveTime>,
    pub accession_number: Option<String>,
    pub study_id: Option<String>,
    pub study_description: Option<String>,
    pub modality: Option<String>,
    pub series_number: Option<i32>,
    pub series_date: Option<NaiveDate>,
    pub series_time: Option<NaiveTime>,
    pub series_description: Option<String>,
    pub body_part_examined: Option<String>,
    pub protocol_name: Option<String>,
    pub series_related_instances: Option<i32>,
    pub created_time: NaiveDateTime,
    pub updated_time: NaiveDateTime,
}

/// The study metadata value: the compact JSON array of the study's rows.
pub fn encode(rows: &[DicomStateMeta]) -> String {
    // Serializing plain strings, numbers and chrono values into a String cannot fail.
    serde_json::to_string(rows).expect("DicomStateMeta always serializes")
}

/// Splits rows sorted by (tenant, study) into one slice per study.
pub fn by_study(rows: &[DicomStateMeta]) -> impl Iterator<Item = &[DicomStateMeta]> {
    rows.chunk_by(|a, b| a.tenant_id == b.tenant_id && a.study_uid == b.study_uid)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The element of the server's sample CT study, as in the research notes.
    pub(crate) fn sample_row() -> DicomStateMeta {
        let dt = |s| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").expect("datetime");
        DicomStateMeta {
            tenant_id: "1234567890".into(),
            patient_id: "91996843".into(),
            study_uid: "1.2.840.113619.2.405.3.2831171869.418.1754040614.941".into(),
            series_uid: "1.2.840.113619.2.405.3.2831171869.418.1754040615.219.6".into(),
            study_uid_hash: "16231242814824793332".into(),
            series_uid_hash: "11907629744418702043".into(),
            study_date_origin: "20250807".into(),
            patient_name: Some("CHEN YOU FANG".into()),
            patient_sex: Some("F".into()),
            patient_birth_date: NaiveDate::from_ymd_opt(1973, 12, 15),
            patient_birth_time: None,
            patient_age: Some("051Y".into()),
            patient_size: Some(1.6),
            patient_weight: Some(77.0),
            study_date: NaiveDate::from_ymd_opt(2025, 8, 7).expect("date"),
            study_time: NaiveTime::from_hms_opt(9, 40, 22),
            accession_number: Some("PT25080701".into()),
            study_id: Some("1732".into()),
            study_description: Some("WB-FDG".into()),
            modality: Some("CT".into()),
            series_number: Some(6),
            series_date: NaiveDate::from_ymd_opt(2025, 8, 7),
            series_time: NaiveTime::from_hms_micro_opt(9, 42, 50, 634_567),
            series_description: Some("WB 3.75mm  Bone+".into()),
            body_part_examined: Some("LSPINE".into()),
            protocol_name: Some("7.3 Lung+PET/CT+HEAD".into()),
            series_related_instances: Some(3),
            created_time: dt("2025-08-07T10:02:11.482913"),
            updated_time: dt("2025-08-07T10:02:13"),
        }
    }

    #[test]
    fn encodes_exactly_as_the_server_does() {
        let expected = concat!(
            r#"[{"tenant_id":"1234567890","patient_id":"91996843","#,
            r#""study_uid":"1.2.840.113619.2.405.3.2831171869.418.1754040614.941","#,
            r#""series_uid":"1.2.840.113619.2.405.3.2831171869.418.1754040615.219.6","#,
            r#""study_uid_hash":"16231242814824793332","series_uid_hash":"11907629744418702043","#,
            r#""study_date_origin":"20250807","patient_name":"CHEN YOU FANG","patient_sex":"F","#,
            r#""patient_birth_date":"1973-12-15","patient_birth_time":null,"patient_age":"051Y","#,
            r#""patient_size":1.6,"patient_weight":77.0,"study_date":"2025-08-07","#,
            r#""study_time":"09:40:22","accession_number":"PT25080701","study_id":"1732","#,
            r#""study_description":"WB-FDG","modality":"CT","series_number":6,"#,
            r#""series_date":"2025-08-07","series_time":"09:42:50.634567","#,
            r#""series_description":"WB 3.75mm  Bone+","body_part_examined":"LSPINE","#,
            r#""protocol_name":"7.3 Lung+PET/CT+HEAD","series_related_instances":3,"#,
            r#""created_time":"2025-08-07T10:02:11.482913","updated_time":"2025-08-07T10:02:13"}]"#,
        );
        assert_eq!(encode(&[sample_row()]), expected);
    }

    #[test]
    fn groups_consecutive_rows_by_study() {
        let mut rows = Vec::new();
        for (tenant, study, series) in [
            ("a", "1", "1.1"),
            ("a", "1", "1.2"),
            ("a", "2", "2.1"),
            ("b", "2", "2.1"),
        ] {
            let mut row = sample_row();
            row.tenant_id = tenant.into();
            row.study_uid = study.into();
            row.series_uid = series.into();
            rows.push(row);
        }
        let sizes: Vec<usize> = by_study(&rows).map(<[_]>::len).collect();
        assert_eq!(sizes, [2, 1, 1]);
    }
}
