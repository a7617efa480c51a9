-- A command id is unique within its line: two lines may use the same id without one's audit
-- row standing in for the other's.
ALTER TABLE command_audit DROP PRIMARY KEY, ADD PRIMARY KEY (line, command_id);
