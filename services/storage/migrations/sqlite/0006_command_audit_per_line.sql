-- A command id is unique within its line: two lines may use the same id without one's audit
-- row standing in for the other's. SQLite cannot change a primary key in place: the table is
-- made again and the rows copied.
CREATE TABLE command_audit_per_line (
    command_id      TEXT    NOT NULL,
    line            TEXT    NOT NULL,
    device          TEXT    NOT NULL,
    tag             TEXT    NOT NULL,
    value_type      TEXT    NOT NULL,
    value_text      TEXT    NOT NULL,
    value_num       REAL    NULL,
    source          TEXT    NOT NULL,
    requested_by    TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    deadline_ns     INTEGER NOT NULL,
    requested_ns    INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    stage           INTEGER NOT NULL,
    rejected_by     TEXT    NULL,
    old_type        TEXT    NULL,
    old_text        TEXT    NULL,
    old_num         REAL    NULL,
    read_back_type  TEXT    NULL,
    read_back_text  TEXT    NULL,
    read_back_num   REAL    NULL,
    detail          TEXT    NULL,
    finished_ns     INTEGER NULL,
    PRIMARY KEY (line, command_id)
);
INSERT INTO command_audit_per_line SELECT * FROM command_audit;
DROP TABLE command_audit;
ALTER TABLE command_audit_per_line RENAME TO command_audit;
CREATE INDEX IF NOT EXISTS command_audit_by_time ON command_audit (line, requested_ns);
CREATE INDEX IF NOT EXISTS command_audit_by_tag ON command_audit (line, device, tag, requested_ns);
