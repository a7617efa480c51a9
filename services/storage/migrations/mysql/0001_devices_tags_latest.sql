-- Devices and tags of every line, and the latest value of each tag for the MES.
CREATE TABLE IF NOT EXISTS devices (
    line        VARCHAR(63)  NOT NULL,
    device      VARCHAR(63)  NOT NULL,
    device_type VARCHAR(128) NOT NULL DEFAULT '',
    protocol    VARCHAR(32)  NOT NULL DEFAULT '',
    endpoint    VARCHAR(255) NOT NULL DEFAULT '',
    updated_ns  BIGINT       NOT NULL,
    PRIMARY KEY (line, device)
);

CREATE TABLE IF NOT EXISTS tags (
    line        VARCHAR(63)  NOT NULL,
    device      VARCHAR(63)  NOT NULL,
    tag         VARCHAR(63)  NOT NULL,
    data_type   VARCHAR(32)  NOT NULL DEFAULT '',
    address     VARCHAR(255) NOT NULL DEFAULT '',
    unit        VARCHAR(32)  NULL,
    writable    BOOLEAN      NOT NULL DEFAULT FALSE,
    description TEXT         NULL,
    updated_ns  BIGINT       NOT NULL,
    PRIMARY KEY (line, device, tag)
);

-- value_text is the exact value (round-trips every type); value_num is the same value as a
-- double for SQL arithmetic; both are NULL for Bad samples.
CREATE TABLE IF NOT EXISTS latest_values (
    line           VARCHAR(63)  NOT NULL,
    device         VARCHAR(63)  NOT NULL,
    tag            VARCHAR(63)  NOT NULL,
    value_type     VARCHAR(8)   NULL,
    value_text     TEXT         NULL,
    value_num      DOUBLE       NULL,
    quality        VARCHAR(64)  NOT NULL,
    quality_detail VARCHAR(255) NOT NULL DEFAULT '',
    source_ns      BIGINT       NOT NULL,
    PRIMARY KEY (line, device, tag)
);
