-- The DICOM server's own tables (momostarsky/dicom-server-rs, init-scripts DDL), with the
-- same columns, types and keys, so the daemon works unchanged against a server's database.
-- IF NOT EXISTS: applying this to a database the server already created changes nothing.

CREATE TABLE IF NOT EXISTS dicom_state_meta (
    tenant_id                varchar(64)  NOT NULL,
    patient_id               varchar(64)  NOT NULL,
    study_uid                varchar(64)  NOT NULL,
    series_uid               varchar(64)  NOT NULL,
    study_uid_hash           varchar(20)  NOT NULL,
    series_uid_hash          varchar(20)  NOT NULL,
    patient_name             varchar(64),
    patient_sex              varchar(1),
    patient_birth_date       date,
    patient_birth_time       time,
    patient_age              varchar(16),
    patient_size             double precision,
    patient_weight           double precision,
    pregnancy_status         integer,
    study_date               date         NOT NULL,
    study_date_origin        varchar(8)   NOT NULL,
    study_time               time,
    accession_number         varchar(16),
    study_id                 varchar(16),
    study_description        varchar(64),
    modality                 varchar(16),
    series_number            integer,
    series_date              date,
    series_time              time,
    series_description       varchar(256),
    body_part_examined       varchar(64),
    protocol_name            varchar(64),
    series_related_instances integer,
    created_time             timestamp,
    updated_time             timestamp,
    CONSTRAINT pk_dicom_state_meta PRIMARY KEY (tenant_id, study_uid, series_uid)
);
CREATE UNIQUE INDEX IF NOT EXISTS index_state_unique
    ON dicom_state_meta (tenant_id, study_uid, series_uid, accession_number);
CREATE UNIQUE INDEX IF NOT EXISTS index_state_unique4patient
    ON dicom_state_meta (tenant_id, patient_id, study_uid, series_uid);
CREATE INDEX IF NOT EXISTS ix_update_time ON dicom_state_meta (updated_time);

CREATE TABLE IF NOT EXISTS dicom_image_meta (
    tenant_id                  varchar(64)  NOT NULL,
    patient_id                 varchar(64)  NOT NULL,
    study_uid                  varchar(64)  NOT NULL,
    series_uid                 varchar(64)  NOT NULL,
    sop_uid                    varchar(64)  NOT NULL,
    study_uid_hash             varchar(20)  NOT NULL,
    series_uid_hash            varchar(20)  NOT NULL,
    content_date               date,
    content_time               time,
    instance_number            integer,
    image_type                 varchar(128),
    image_orientation_patient  varchar(128),
    image_position_patient     varchar(64),
    slice_thickness            double precision,
    spacing_between_slices     double precision,
    slice_location             double precision,
    samples_per_pixel          integer,
    photometric_interpretation varchar(32),
    width                      integer, -- holds Rows (0028,0010), as in the server
    columns                    integer,
    bits_allocated             integer,
    bits_stored                integer,
    high_bit                   integer,
    pixel_representation       integer,
    rescale_intercept          double precision,
    rescale_slope              double precision,
    rescale_type               varchar(64),
    window_center              varchar(64),
    window_width               varchar(64),
    transfer_syntax_uid        varchar(64)  NOT NULL,
    pixel_data_location        varchar(512),
    thumbnail_location         varchar(512),
    sop_class_uid              varchar(64)  NOT NULL,
    image_status               varchar(32),
    space_size                 bigint,
    created_time               timestamp,
    updated_time               timestamp,
    CONSTRAINT pk_dicom_image_meta PRIMARY KEY (tenant_id, study_uid, series_uid, sop_uid)
);

CREATE TABLE IF NOT EXISTS dicom_json_meta (
    tenant_id         varchar(64) NOT NULL,
    study_uid         varchar(64) NOT NULL,
    series_uid        varchar(64) NOT NULL,
    study_uid_hash    varchar(20) NOT NULL,
    series_uid_hash   varchar(20) NOT NULL,
    study_date_origin varchar(8)  NOT NULL,
    flag_time         timestamp   NOT NULL,
    created_time      timestamp   NOT NULL DEFAULT current_timestamp(6),
    json_status       integer     NOT NULL DEFAULT 0,
    retry_times       integer     NOT NULL DEFAULT 0,
    CONSTRAINT pk_dicom_json_meta PRIMARY KEY (tenant_id, study_uid, series_uid)
);
CREATE INDEX IF NOT EXISTS ix_flag_time ON dicom_json_meta (flag_time);
