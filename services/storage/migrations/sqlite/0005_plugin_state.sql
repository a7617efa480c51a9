-- The device's plugin state right after batch stored_seq (JSON), so a restarted processor
-- resumes its plugins exactly where the stored data ends.
ALTER TABLE processor_progress ADD COLUMN plugin_state TEXT NULL;
