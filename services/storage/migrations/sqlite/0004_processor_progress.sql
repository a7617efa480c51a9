-- How far the processor has taken each device's batches: every batch up to stored_seq is
-- stored, so after a restart a redelivered one is recognised and not processed again.
CREATE TABLE IF NOT EXISTS processor_progress (
    line        VARCHAR(63)  NOT NULL,
    device      VARCHAR(63)  NOT NULL,
    stored_seq  BIGINT       NOT NULL,
    updated_ns  BIGINT       NOT NULL,
    PRIMARY KEY (line, device)
);
