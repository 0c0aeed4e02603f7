-- A call whose result arrived after its worker had lost the delivery (its
-- lease expired, or it was taken for dead): the receiver's answer is logged
-- as it was, and changes nothing. Added on its own: a new enum value cannot
-- be used in the transaction that adds it.
ALTER TYPE webhooks.attempt_outcome ADD VALUE 'late';
