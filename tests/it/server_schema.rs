//! The daemon against a database made by the server's own DDL rather than our migrations.

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use dicom_cache_warmer::MIGRATOR;
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;

use crate::helpers::TestEnv;

/// The shape of the server's `Script/Pg.sql`: plain CREATE TABLE, an unnamed primary key,
/// the json table's key added afterwards, no extra indexes, `pregnancy_status` present.
const SERVER_DDL: &str = "
create table dicom_state_meta (
    tenant_id varchar(64) not null, patient_id varchar(64) not null,
    study_uid varchar(64) not null, series_uid varchar(64) not null,
    study_uid_hash varchar(20) not null, series_uid_hash varchar(20) not null,
    patient_name varchar(64), patient_sex varchar(1), patient_birth_date date,
    patient_birth_time time, patient_age varchar(16), patient_size double precision,
    patient_weight double precision, pregnancy_status integer, study_date date not null,
    study_date_origin varchar(8) not null, study_time time, accession_number varchar(16),
    study_id varchar(16), study_description varchar(64), modality varchar(16),
    series_number integer, series_date date, series_time time,
    series_description varchar(256), body_part_examined varchar(64),
    protocol_name varchar(64), series_related_instances integer,
    created_time timestamp, updated_time timestamp,
    primary key (tenant_id, study_uid, series_uid));
create unique index index_state_unique on dicom_state_meta (tenant_id, study_uid, series_uid, accession_number);
create table dicom_json_meta (
    tenant_id varchar(64) not null, study_uid varchar(64) not null,
    series_uid varchar(64) not null, study_uid_hash varchar(20) not null,
    series_uid_hash varchar(20) not null, study_date_origin varchar(8) not null,
    flag_time timestamp not null, created_time timestamp not null default current_timestamp(6),
    json_status int not null default 0, retry_times int not null default 0);
alter table dicom_json_meta add constraint PK_dicom_json_meta primary key (tenant_id, study_uid, series_uid);
";

#[tokio::test]
async fn studies_are_warmed_from_a_database_made_by_the_servers_ddl() {
    let env = TestEnv::with_empty_database().await;
    sqlx::raw_sql(SERVER_DDL)
        .execute(&env.db)
        .await
        .expect("server DDL");
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        studies: 3,
        ..DatasetSpec::default()
    });
    dataset.insert(&env.db).await.expect("insert rows");
    let mut con = env.redis.clone();
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");

    env.drain().await;
    for row in &dataset.rows {
        let key = keys::study_metadata(
            &TenantId::parse(&row.tenant_id).expect("tenant"),
            &Uid::parse(&row.study_uid).expect("uid"),
        );
        assert!(
            env.get(&key)
                .await
                .is_some_and(|v| v.contains(&row.series_uid)),
            "{key} holds {}",
            row.series_uid
        );
    }

    // `migrate` on top of the server's tables changes nothing and does not fail.
    MIGRATOR
        .run(&env.db)
        .await
        .expect("migrations apply over the server's tables");
}
