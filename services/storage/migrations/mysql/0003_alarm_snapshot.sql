-- The alarm machine's full persisted state (JSON), so a restart resumes delays and rates.
ALTER TABLE alarm_state ADD COLUMN snapshot TEXT NULL;
