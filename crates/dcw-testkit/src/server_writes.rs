//! Rows written the way the server's wado-consumer writes them: one batch upsert of the
//! series rows (`ON CONFLICT … DO UPDATE … updated_time = EXCLUDED.updated_time`), then
//! one batch upsert of the instance rows, each its own statement; and `COPY` for bulk
//! loads. For the outbox's tests and benchmark, which must see the server's statements.

use std::fmt::{Display, Write};

use sqlx::PgPool;
use sqlx::postgres::PgPoolCopyExt;

use crate::synthetic::InstanceEvent;
use dicom_cache_warmer::DicomStateMeta;

pub use crate::synthetic::insert_rows as upsert_series;

/// The columns of `dicom_state_meta` a series row fills, in [`copy_series`]' order.
const SERIES_COLUMNS: &str = "tenant_id, patient_id, study_uid, series_uid, study_uid_hash, \
    series_uid_hash, study_date_origin, patient_name, patient_sex, patient_birth_date, \
    patient_birth_time, patient_age, patient_size, patient_weight, study_date, study_time, \
    accession_number, study_id, study_description, modality, series_number, series_date, \
    series_time, series_description, body_part_examined, protocol_name, \
    series_related_instances, created_time, updated_time";

/// Upserts one `dicom_image_meta` row per event in one statement, every column the server
/// fills set to a plausible CT value (the rows are as wide as the server's).
pub async fn upsert_instances(pool: &PgPool, events: &[InstanceEvent]) -> Result<(), sqlx::Error> {
    let column = |f: fn(&InstanceEvent) -> &str| -> Vec<&str> { events.iter().map(f).collect() };
    let numbers: Vec<i32> = (1..=events.len())
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
        .collect();
    sqlx::query(
        r"INSERT INTO dicom_image_meta (tenant_id, patient_id, study_uid, series_uid, sop_uid,
              study_uid_hash, series_uid_hash, content_date, content_time, instance_number,
              image_type, image_orientation_patient, image_position_patient, slice_thickness,
              spacing_between_slices, slice_location, samples_per_pixel,
              photometric_interpretation, width, columns, bits_allocated, bits_stored, high_bit,
              pixel_representation, rescale_intercept, rescale_slope, rescale_type,
              window_center, window_width, transfer_syntax_uid, pixel_data_location,
              thumbnail_location, sop_class_uid, image_status, space_size, created_time,
              updated_time)
          SELECT tenant, 'P000001', study, series, sop, '12345678901234567890',
              '09876543210987654321', current_date, localtime, n, 'ORIGINAL\PRIMARY\AXIAL',
              '1\0\0\0\1\0', '-250\-250\' || (n * -0.625), 0.625, 0.625, n * -0.625, 1,
              'MONOCHROME2', 512, 512, 16, 12, 11, 0, -1024, 1, 'HU', '40\400', '400\1500',
              '1.2.840.10008.1.2', '/data/dicom/' || tenant || '/' || sop || '.dcm',
              '/data/thumbs/' || sop || '.jpg', '1.2.840.10008.5.1.4.1.1.2', 'STORED', 527512,
              localtimestamp, localtimestamp
          FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int[])
              AS u(tenant, study, series, sop, n)
          ON CONFLICT (tenant_id, study_uid, series_uid, sop_uid) DO UPDATE SET
              instance_number = EXCLUDED.instance_number,
              image_position_patient = EXCLUDED.image_position_patient,
              pixel_data_location = EXCLUDED.pixel_data_location,
              space_size = EXCLUDED.space_size,
              updated_time = EXCLUDED.updated_time",
    )
    .bind(column(|e| &e.tenant_id))
    .bind(column(|e| &e.study_uid))
    .bind(column(|e| &e.series_uid))
    .bind(column(|e| &e.sop_uid))
    .bind(numbers)
    .execute(pool)
    .await?;
    Ok(())
}

/// Loads `rows` into `dicom_state_meta` with one `COPY … FROM STDIN` (CSV); returns the
/// rows copied.
pub async fn copy_series(pool: &PgPool, rows: &[DicomStateMeta]) -> Result<u64, sqlx::Error> {
    let mut copy = pool
        .copy_in_raw(&format!(
            "COPY dicom_state_meta ({SERIES_COLUMNS}) FROM STDIN WITH (FORMAT csv)"
        ))
        .await?;
    let mut csv = String::new();
    for r in rows {
        let texts = [
            Some(&r.tenant_id),
            Some(&r.patient_id),
            Some(&r.study_uid),
            Some(&r.series_uid),
            Some(&r.study_uid_hash),
            Some(&r.series_uid_hash),
            Some(&r.study_date_origin),
            r.patient_name.as_ref(),
            r.patient_sex.as_ref(),
        ];
        for text in texts {
            quoted(&mut csv, text.map(String::as_str));
        }
        plain(&mut csv, r.patient_birth_date);
        plain(&mut csv, r.patient_birth_time);
        quoted(&mut csv, r.patient_age.as_deref());
        plain(&mut csv, r.patient_size);
        plain(&mut csv, r.patient_weight);
        plain(&mut csv, Some(r.study_date));
        plain(&mut csv, r.study_time);
        for text in [
            &r.accession_number,
            &r.study_id,
            &r.study_description,
            &r.modality,
        ] {
            quoted(&mut csv, text.as_deref());
        }
        plain(&mut csv, r.series_number);
        plain(&mut csv, r.series_date);
        plain(&mut csv, r.series_time);
        for text in [
            &r.series_description,
            &r.body_part_examined,
            &r.protocol_name,
        ] {
            quoted(&mut csv, text.as_deref());
        }
        plain(&mut csv, r.series_related_instances);
        plain(&mut csv, Some(r.created_time));
        plain(&mut csv, Some(r.updated_time));
        // Every field ends with a comma: the last one's becomes the line's end.
        csv.pop();
        csv.push('\n');
    }
    copy.send(csv.as_bytes()).await?;
    copy.finish().await
}

/// A CSV text field: quoted (quotes doubled), or empty for NULL.
fn quoted(csv: &mut String, value: Option<&str>) {
    if let Some(value) = value {
        csv.push('"');
        csv.push_str(&value.replace('"', "\"\""));
        csv.push('"');
    }
    csv.push(',');
}

/// A CSV field printed as PostgreSQL reads it (dates, times, numbers), or empty for NULL.
fn plain(csv: &mut String, value: Option<impl Display>) {
    if let Some(value) = value {
        let _ = write!(csv, "{value}");
    }
    csv.push(',');
}
