-- Removes what install.sql created, in one transaction; idempotent. Rows still waiting in
-- the outbox go with the table.

DROP TRIGGER IF EXISTS dcw_ingest_outbox_insert ON dicom_state_meta;
DROP TRIGGER IF EXISTS dcw_ingest_outbox_update ON dicom_state_meta;
DROP TRIGGER IF EXISTS dcw_ingest_outbox_delete ON dicom_state_meta;
DROP TRIGGER IF EXISTS dcw_ingest_outbox_insert ON dicom_image_meta;
DROP TRIGGER IF EXISTS dcw_ingest_outbox_update ON dicom_image_meta;
DROP FUNCTION IF EXISTS dcw_ingest_outbox_stored();
DROP FUNCTION IF EXISTS dcw_ingest_outbox_state_updated();
DROP FUNCTION IF EXISTS dcw_ingest_outbox_deleted();
DROP TABLE IF EXISTS dcw_ingest_outbox;
