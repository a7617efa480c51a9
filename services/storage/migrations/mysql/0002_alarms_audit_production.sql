-- Plant data beside the samples: alarm history and current alarm state (ISA-18.2), the audit
-- of every write request, and production counters and events for the MES.
--
-- Every table has a natural unique key, so a replayed insert changes nothing. Text compares
-- byte for byte (utf8mb4_bin) so keys mean the same here as in SQLite. Lengths are checked by
-- the writer before the insert (names 63, ids and people 128, free text 16383 characters),
-- so a server without strict mode never truncates silently. Times are ns since the epoch;
-- flags are SMALLINT 0/1.

-- One row per alarm transition; seq increases per alarm across restarts.
CREATE TABLE IF NOT EXISTS alarm_events (
    line             VARCHAR(63)  NOT NULL,
    alarm_id         VARCHAR(128) NOT NULL,
    seq              BIGINT       NOT NULL,
    device           VARCHAR(63)  NOT NULL,
    tag              VARCHAR(63)  NOT NULL,
    kind             VARCHAR(63)  NOT NULL,
    priority         BIGINT       NOT NULL,
    from_state       VARCHAR(32)  NOT NULL,
    to_state         VARCHAR(32)  NOT NULL,
    value_type       VARCHAR(8)   NULL,
    value_text       TEXT         NULL,
    value_num        DOUBLE       NULL,
    limit_value      DOUBLE       NULL,
    message          TEXT         NOT NULL,
    user_name        VARCHAR(128) NOT NULL,
    comment          TEXT         NOT NULL,
    shelved_until_ns BIGINT       NULL,
    ts_ns            BIGINT       NOT NULL,
    PRIMARY KEY (line, alarm_id, seq),
    KEY alarm_events_by_time (line, ts_ns)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The current state of each alarm: what a processor loads at start-up. last_seq is the seq
-- of the transition that produced the row; an older one never overwrites it.
CREATE TABLE IF NOT EXISTS alarm_state (
    line             VARCHAR(63)  NOT NULL,
    alarm_id         VARCHAR(128) NOT NULL,
    device           VARCHAR(63)  NOT NULL,
    tag              VARCHAR(63)  NOT NULL,
    kind             VARCHAR(63)  NOT NULL,
    priority         BIGINT       NOT NULL,
    state            VARCHAR(32)  NOT NULL,
    active           SMALLINT     NOT NULL,
    acked            SMALLINT     NOT NULL,
    shelved_until_ns BIGINT       NULL,
    value_type       VARCHAR(8)   NULL,
    value_text       TEXT         NULL,
    value_num        DOUBLE       NULL,
    message          TEXT         NOT NULL,
    last_seq         BIGINT       NOT NULL,
    changed_ns       BIGINT       NOT NULL,
    PRIMARY KEY (line, alarm_id)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per write request, from the request to its result. stage orders status
-- (requested 0, accepted 1, written 2, final 3) so a result never moves back.
CREATE TABLE IF NOT EXISTS command_audit (
    command_id      VARCHAR(128) NOT NULL,
    line            VARCHAR(63)  NOT NULL,
    device          VARCHAR(63)  NOT NULL,
    tag             VARCHAR(63)  NOT NULL,
    value_type      VARCHAR(8)   NOT NULL,
    value_text      TEXT         NOT NULL,
    value_num       DOUBLE       NULL,
    source          VARCHAR(128) NOT NULL,
    requested_by    VARCHAR(128) NOT NULL,
    reason          TEXT         NOT NULL,
    deadline_ns     BIGINT       NOT NULL,
    requested_ns    BIGINT       NOT NULL,
    status          VARCHAR(32)  NOT NULL,
    stage           SMALLINT     NOT NULL,
    rejected_by     VARCHAR(63)  NULL,
    old_type        VARCHAR(8)   NULL,
    old_text        TEXT         NULL,
    old_num         DOUBLE       NULL,
    read_back_type  VARCHAR(8)   NULL,
    read_back_text  TEXT         NULL,
    read_back_num   DOUBLE       NULL,
    detail          TEXT         NULL,
    finished_ns     BIGINT       NULL,
    PRIMARY KEY (command_id),
    KEY command_audit_by_time (line, requested_ns),
    KEY command_audit_by_tag (line, device, tag, requested_ns)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Counter values per period (period_ns long from period_start_ns; 0 for a reading at an
-- instant). A value computed later (as_of_ns) replaces an earlier one of the same period.
CREATE TABLE IF NOT EXISTS production_counters (
    line            VARCHAR(63) NOT NULL,
    device          VARCHAR(63) NOT NULL,
    counter         VARCHAR(63) NOT NULL,
    period_start_ns BIGINT      NOT NULL,
    period_ns       BIGINT      NOT NULL,
    value           DOUBLE      NOT NULL,
    as_of_ns        BIGINT      NOT NULL,
    PRIMARY KEY (line, device, counter, period_start_ns),
    KEY production_counters_by_time (line, period_start_ns)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Shift, order and stop events; device is '' for events of the whole line.
CREATE TABLE IF NOT EXISTS production_events (
    line      VARCHAR(63)  NOT NULL,
    event_id  VARCHAR(128) NOT NULL,
    device    VARCHAR(63)  NOT NULL,
    kind      VARCHAR(32)  NOT NULL,
    code      VARCHAR(128) NOT NULL,
    detail    TEXT         NOT NULL,
    user_name VARCHAR(128) NOT NULL,
    ts_ns     BIGINT       NOT NULL,
    PRIMARY KEY (line, event_id),
    KEY production_events_by_time (line, ts_ns)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
