-- Replayable evaluation sets (streams.evalset): where a producer supplies them, a trace carries
-- references to its input and its original output (AgentTrace.input_ref / output_ref: an external
-- URI, an inline text redacted before storage and at most 8192 chars, a SHA-256). Empty = absent.
ALTER TABLE {db}.traces ADD COLUMN IF NOT EXISTS input_ref_uri String DEFAULT '';
ALTER TABLE {db}.traces ADD COLUMN IF NOT EXISTS input_ref_text String DEFAULT '';
ALTER TABLE {db}.traces ADD COLUMN IF NOT EXISTS input_ref_sha256 String DEFAULT '';
ALTER TABLE {db}.traces ADD COLUMN IF NOT EXISTS output_ref_uri String DEFAULT '';
ALTER TABLE {db}.traces ADD COLUMN IF NOT EXISTS output_ref_text String DEFAULT '';
ALTER TABLE {db}.traces ADD COLUMN IF NOT EXISTS output_ref_sha256 String DEFAULT '';
