-- Email triggers: where a trigger's reading of its folder stands (the folder's UIDVALIDITY
-- and the last message started), and which daemon polls it until when.
ALTER TABLE triggers ADD COLUMN state TEXT;
ALTER TABLE triggers ADD COLUMN poll_until TEXT;
