-- The address each failed sign-in came from (NULL when unknown), for the per-address limit.
ALTER TABLE login_failures ADD COLUMN ip TEXT;
CREATE INDEX login_failures_by_ip ON login_failures (ip, at);
