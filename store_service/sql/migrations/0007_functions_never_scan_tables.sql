-- 0007: the append and create functions reach every row through an index, whatever the
-- planner thinks of a table's size.
--
-- Their statements run with generic plans (plan_cache_mode, 0003), planned once per session
-- from the statistics of the moment. A store that starts on a new database plans the flows
-- lookup while the table holds a handful of rows, picks a sequential scan, and keeps it: every
-- append then reads the whole table, and each append leaves a dead row version in it until
-- vacuum runs, so the batches grew slower the longer a store ran (measured: 1.9 ms for a batch
-- of 16 commands on a fresh table, 2.6 ms after 50k appends, 2.1 ms with this setting; see
-- docs/decisions/0020-coalesced-append-stream.md). Every statement of both functions looks rows
-- up by key, so forbidding sequential scans costs nothing where an index scan was chosen anyway.
-- ALTER FUNCTION ... SET is idempotent and keeps the functions' bodies and grants.

ALTER FUNCTION flowledger_append_batch SET enable_seqscan = off;
ALTER FUNCTION flowledger_create_flow SET enable_seqscan = off;
