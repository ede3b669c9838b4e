-- The store's own id, made once: the Parquet export writes it into its directory, so that two
-- stores (replicas, Kafka members) given one export directory do not delete and overwrite each
-- other's day files (a review). A copy of the file (a backup restored) is the same store.
CREATE TABLE store_identity (id VARCHAR NOT NULL);
INSERT INTO store_identity SELECT CAST(uuid() AS VARCHAR);
COMMENT ON TABLE store_identity IS 'this analytics store''s id (one row), made at its creation; the Parquet export names its directory''s owner by it';
COMMENT ON COLUMN store_identity.id IS 'a UUID, made once';
