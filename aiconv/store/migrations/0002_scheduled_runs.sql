-- One row per run of an embedded-scheduler job, by whichever worker ran it.

CREATE TABLE scheduled_runs (
    id          BIGSERIAL PRIMARY KEY,
    job         TEXT NOT NULL,
    slot        BIGINT NOT NULL,       -- the scheduled time, in intervals since the epoch
    runner      TEXT NOT NULL,         -- host-pid of the worker that ran it
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    outcome     TEXT,                  -- ok, failed
    detail      TEXT
);

CREATE INDEX scheduled_runs_job_slot ON scheduled_runs (job, slot);
