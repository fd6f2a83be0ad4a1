-- Replay (streams.replay) rebuilds every stored trace and feedback submission as the pipeline's
-- input, in the batches and order the worker processed them, so these tables keep what the
-- detectors read at the precision they read it, and where each record was processed:
-- - batch_seq: the pipeline's processing sequence number of the batch (Pipeline.next_batch_seq:
--   wall-clock microseconds, strictly increasing in a worker); batch_pos: the record's position
--   in the batch. The label-delayed (Poisson) CUSUMs step once per batch and the release cut
--   depends on what a batch holds, so the same records in other batches can alarm at another
--   trace; with these columns a replay uses the worker's own batches. Rows written before this
--   migration read 0: they replay in event-time order in batches of take_max_messages messages.
-- - confidence and rollout_stage_pct as Float64: the Avro contract carries doubles, and the logit
--   confidence detector and the canary stage comparison see the double (Float32 moved 0.8123 to
--   0.81230003). Existing rows keep the Float32 value they were stored with.
ALTER TABLE {db}.traces ADD COLUMN IF NOT EXISTS batch_seq UInt64 DEFAULT 0;
ALTER TABLE {db}.traces ADD COLUMN IF NOT EXISTS batch_pos UInt32 DEFAULT 0;
ALTER TABLE {db}.traces MODIFY COLUMN confidence Nullable(Float64);
ALTER TABLE {db}.traces MODIFY COLUMN rollout_stage_pct Float64;
ALTER TABLE {db}.feedback_submissions ADD COLUMN IF NOT EXISTS batch_seq UInt64 DEFAULT 0;
ALTER TABLE {db}.feedback_submissions ADD COLUMN IF NOT EXISTS batch_pos UInt32 DEFAULT 0;
