-- Current definition of webhooks.invoices_processed, as the migrations leave it
-- (tests/it/schema.rs checks the migrated database against this file).
--
-- An invoice is inserted, or a payload field (status, amounts, currency) changes.
CREATE OR REPLACE FUNCTION webhooks.invoices_processed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM webhooks.enqueue_processed_invoices(ARRAY(SELECT i.id FROM new_rows i));
    ELSE
        PERFORM webhooks.enqueue_processed_invoices(ARRAY(
            SELECT i.id FROM new_rows i JOIN old_rows o ON o.id = i.id
             WHERE (i.status, i.amount_due, i.amount_paid, i.currency)
                   IS DISTINCT FROM (o.status, o.amount_due, o.amount_paid, o.currency)));
    END IF;
    RETURN NULL;
END
$$;
