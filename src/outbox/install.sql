-- dicom-cache-warmer's transactional outbox in the server's database, applied by
-- `dicom-cache-warmer outbox install` in one transaction. Idempotent: run it again after
-- an upgrade and the functions and triggers are replaced.
--
-- Statement-level triggers with transition tables add ONE row per distinct
-- (tenant, study, series) a statement changed, in the same transaction as the server's
-- write, and notify the relay once per statement: a batch of 1,000 instance rows adds one
-- row per series, not 1,000. The daemon relays the rows to its ingest stream.
--
-- The functions run with their owner's rights (SECURITY DEFINER) and a search_path pinned
-- to this schema, so the server's own role needs no grant on the outbox and an object
-- planted elsewhere on its search_path is never picked up.

CREATE TABLE IF NOT EXISTS dcw_ingest_outbox (
    id          bigserial    PRIMARY KEY,
    tenant_id   varchar(64)  NOT NULL,
    study_uid   varchar(64)  NOT NULL,
    series_uid  varchar(64),
    event       varchar(7)   NOT NULL CHECK (event IN ('stored', 'deleted')),
    created_at  timestamptz  NOT NULL DEFAULT now()
-- A queue: rows come and go all day; vacuum it after every thousand, whatever its size.
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);

-- INSERT on either table, UPDATE on dicom_image_meta: every key in the new rows is stored.
CREATE OR REPLACE FUNCTION dcw_ingest_outbox_stored() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO dcw_ingest_outbox (tenant_id, study_uid, series_uid, event)
    SELECT DISTINCT tenant_id, study_uid, series_uid, 'stored' FROM dcw_new;
    IF FOUND THEN
        PERFORM pg_notify('dcw_ingest_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

-- UPDATE on dicom_state_meta: the new keys are stored; a key the update moved away from
-- (a changed tenant, study or series) no longer has its row, so it is deleted.
CREATE OR REPLACE FUNCTION dcw_ingest_outbox_state_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO dcw_ingest_outbox (tenant_id, study_uid, series_uid, event)
    SELECT DISTINCT tenant_id, study_uid, series_uid, 'stored' FROM dcw_new
    UNION ALL
    (SELECT tenant_id, study_uid, series_uid, 'deleted' FROM dcw_old
     EXCEPT
     SELECT tenant_id, study_uid, series_uid, 'deleted' FROM dcw_new);
    IF FOUND THEN
        PERFORM pg_notify('dcw_ingest_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

-- DELETE on dicom_state_meta: every key in the old rows is deleted.
CREATE OR REPLACE FUNCTION dcw_ingest_outbox_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO dcw_ingest_outbox (tenant_id, study_uid, series_uid, event)
    SELECT DISTINCT tenant_id, study_uid, series_uid, 'deleted' FROM dcw_old;
    IF FOUND THEN
        PERFORM pg_notify('dcw_ingest_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

-- The table was created in (or found in) the current schema: pin the functions to it.
-- format's %I quotes the schema name on the server.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['dcw_ingest_outbox_stored', 'dcw_ingest_outbox_state_updated',
                                'dcw_ingest_outbox_deleted'] LOOP
        EXECUTE format('ALTER FUNCTION %I() SET search_path = %I, pg_temp', name, current_schema());
    END LOOP;
END
$$;

DROP TRIGGER IF EXISTS dcw_ingest_outbox_insert ON dicom_state_meta;
CREATE TRIGGER dcw_ingest_outbox_insert AFTER INSERT ON dicom_state_meta
    REFERENCING NEW TABLE AS dcw_new
    FOR EACH STATEMENT EXECUTE FUNCTION dcw_ingest_outbox_stored();

DROP TRIGGER IF EXISTS dcw_ingest_outbox_update ON dicom_state_meta;
CREATE TRIGGER dcw_ingest_outbox_update AFTER UPDATE ON dicom_state_meta
    REFERENCING OLD TABLE AS dcw_old NEW TABLE AS dcw_new
    FOR EACH STATEMENT EXECUTE FUNCTION dcw_ingest_outbox_state_updated();

DROP TRIGGER IF EXISTS dcw_ingest_outbox_delete ON dicom_state_meta;
CREATE TRIGGER dcw_ingest_outbox_delete AFTER DELETE ON dicom_state_meta
    REFERENCING OLD TABLE AS dcw_old
    FOR EACH STATEMENT EXECUTE FUNCTION dcw_ingest_outbox_deleted();

DROP TRIGGER IF EXISTS dcw_ingest_outbox_insert ON dicom_image_meta;
CREATE TRIGGER dcw_ingest_outbox_insert AFTER INSERT ON dicom_image_meta
    REFERENCING NEW TABLE AS dcw_new
    FOR EACH STATEMENT EXECUTE FUNCTION dcw_ingest_outbox_stored();

DROP TRIGGER IF EXISTS dcw_ingest_outbox_update ON dicom_image_meta;
CREATE TRIGGER dcw_ingest_outbox_update AFTER UPDATE ON dicom_image_meta
    REFERENCING NEW TABLE AS dcw_new
    FOR EACH STATEMENT EXECUTE FUNCTION dcw_ingest_outbox_stored();
