-- Current definition of webhooks.visit_notes_signed, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- A note's status becomes 'signed': inserted signed, or changed to signed.
CREATE OR REPLACE FUNCTION webhooks.visit_notes_signed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Each branch is planned only when it runs: an INSERT has no old_rows.
    IF TG_OP = 'INSERT' THEN
        PERFORM webhooks.enqueue_signed_notes(ARRAY(
            SELECT n.id FROM new_rows n WHERE n.status = 'signed'));
    ELSE
        PERFORM webhooks.enqueue_signed_notes(ARRAY(
            SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.status = 'signed' AND o.status IS DISTINCT FROM 'signed'));
    END IF;
    RETURN NULL;
END
$$;
