-- 0011: SQL functions are defined once, in store_service/sql/functions/<name>.sql, and applied
-- again whenever their file changes (docs/decisions/0027-repeatable-sql-functions.md).
--
-- This table records the sha256 of the file each function was last applied from; the store
-- applies a function's file after the numbered migrations, under the same advisory lock, when
-- the file's checksum differs from the one recorded here (or none is). From this migration on,
-- numbered migrations hold no function bodies: they change tables, and drop a function's old
-- signature when its arguments change. Migrations 0003 to 0010 keep the bodies they applied.

CREATE TABLE schema_functions (
    name       TEXT PRIMARY KEY,
    sha256     TEXT NOT NULL CHECK (length(sha256) = 64),
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Start-up checks that every function is current (it may not apply them itself).
GRANT SELECT ON schema_functions TO flowledger_app;
