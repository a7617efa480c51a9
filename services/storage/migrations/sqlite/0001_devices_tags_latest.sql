-- Devices and tags of every line, and the latest value of each tag for the MES.
CREATE TABLE IF NOT EXISTS devices (
    line        TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    device_type TEXT    NOT NULL DEFAULT '',
    protocol    TEXT    NOT NULL DEFAULT '',
    endpoint    TEXT    NOT NULL DEFAULT '',
    updated_ns  INTEGER NOT NULL,
    PRIMARY KEY (line, device)
);

CREATE TABLE IF NOT EXISTS tags (
    line        TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    tag         TEXT    NOT NULL,
    data_type   TEXT    NOT NULL DEFAULT '',
    address     TEXT    NOT NULL DEFAULT '',
    unit        TEXT    NULL,
    writable    BOOLEAN NOT NULL DEFAULT FALSE,
    description TEXT    NULL,
    updated_ns  INTEGER NOT NULL,
    PRIMARY KEY (line, device, tag)
);

CREATE TABLE IF NOT EXISTS latest_values (
    line           TEXT    NOT NULL,
    device         TEXT    NOT NULL,
    tag            TEXT    NOT NULL,
    value_type     TEXT    NULL,
    value_text     TEXT    NULL,
    value_num      REAL    NULL,
    quality        TEXT    NOT NULL,
    quality_detail TEXT    NOT NULL DEFAULT '',
    source_ns      INTEGER NOT NULL,
    PRIMARY KEY (line, device, tag)
);

-- Sample history for the embedded mode (no InfluxDB). One row per tag and timestamp, so a
-- replayed batch replaces its own rows instead of adding new ones.
CREATE TABLE IF NOT EXISTS samples (
    line       TEXT    NOT NULL,
    device     TEXT    NOT NULL,
    tag        TEXT    NOT NULL,
    ts_ns      INTEGER NOT NULL,
    value_type TEXT    NULL,
    value_text TEXT    NULL,
    value_num  REAL    NULL,
    quality    TEXT    NOT NULL,
    PRIMARY KEY (line, device, tag, ts_ns)
) WITHOUT ROWID;
