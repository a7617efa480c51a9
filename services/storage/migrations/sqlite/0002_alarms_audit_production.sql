-- Plant data beside the samples: alarm history and current alarm state (ISA-18.2), the audit
-- of every write request, and production counters and events for the MES. The same tables,
-- keys and meaning as the MySQL migration of the same number; the writer checks lengths, so
-- both backends accept and refuse the same rows.

-- One row per alarm transition; seq increases per alarm across restarts.
CREATE TABLE IF NOT EXISTS alarm_events (
    line             TEXT    NOT NULL,
    alarm_id         TEXT    NOT NULL,
    seq              INTEGER NOT NULL,
    device           TEXT    NOT NULL,
    tag              TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    from_state       TEXT    NOT NULL,
    to_state         TEXT    NOT NULL,
    value_type       TEXT    NULL,
    value_text       TEXT    NULL,
    value_num        REAL    NULL,
    limit_value      REAL    NULL,
    message          TEXT    NOT NULL,
    user_name        TEXT    NOT NULL,
    comment          TEXT    NOT NULL,
    shelved_until_ns INTEGER NULL,
    ts_ns            INTEGER NOT NULL,
    PRIMARY KEY (line, alarm_id, seq)
);
CREATE INDEX IF NOT EXISTS alarm_events_by_time ON alarm_events (line, ts_ns);

-- The current state of each alarm: what a processor loads at start-up. last_seq is the seq
-- of the transition that produced the row; an older one never overwrites it.
CREATE TABLE IF NOT EXISTS alarm_state (
    line             TEXT    NOT NULL,
    alarm_id         TEXT    NOT NULL,
    device           TEXT    NOT NULL,
    tag              TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    state            TEXT    NOT NULL,
    active           INTEGER NOT NULL,
    acked            INTEGER NOT NULL,
    shelved_until_ns INTEGER NULL,
    value_type       TEXT    NULL,
    value_text       TEXT    NULL,
    value_num        REAL    NULL,
    message          TEXT    NOT NULL,
    last_seq         INTEGER NOT NULL,
    changed_ns       INTEGER NOT NULL,
    PRIMARY KEY (line, alarm_id)
);

-- One row per write request, from the request to its result. stage orders status
-- (requested 0, accepted 1, written 2, final 3) so a result never moves back.
CREATE TABLE IF NOT EXISTS command_audit (
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
    PRIMARY KEY (command_id)
);
CREATE INDEX IF NOT EXISTS command_audit_by_time ON command_audit (line, requested_ns);
CREATE INDEX IF NOT EXISTS command_audit_by_tag ON command_audit (line, device, tag, requested_ns);

-- Counter values per period (period_ns long from period_start_ns; 0 for a reading at an
-- instant). A value computed later (as_of_ns) replaces an earlier one of the same period.
CREATE TABLE IF NOT EXISTS production_counters (
    line            TEXT    NOT NULL,
    device          TEXT    NOT NULL,
    counter         TEXT    NOT NULL,
    period_start_ns INTEGER NOT NULL,
    period_ns       INTEGER NOT NULL,
    value           REAL    NOT NULL,
    as_of_ns        INTEGER NOT NULL,
    PRIMARY KEY (line, device, counter, period_start_ns)
);
CREATE INDEX IF NOT EXISTS production_counters_by_time ON production_counters (line, period_start_ns);

-- Shift, order and stop events; device is '' for events of the whole line.
CREATE TABLE IF NOT EXISTS production_events (
    line      TEXT    NOT NULL,
    event_id  TEXT    NOT NULL,
    device    TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    code      TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    user_name TEXT    NOT NULL,
    ts_ns     INTEGER NOT NULL,
    PRIMARY KEY (line, event_id)
);
CREATE INDEX IF NOT EXISTS production_events_by_time ON production_events (line, ts_ns);
