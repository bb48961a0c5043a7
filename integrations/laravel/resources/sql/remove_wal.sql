-- Removes runwire's logical-replication integration (`wal.sql`). Applied by
-- `runwire migrate --changes notify`. runwire's slots are temporary: none outlives it.

DROP PUBLICATION IF EXISTS runwire;
