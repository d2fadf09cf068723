-- The efficiency table: one row per extraction run, model load excluded from `seconds`.
CREATE TABLE IF NOT EXISTS runs (
    model             VARCHAR NOT NULL,
    dataset           VARCHAR NOT NULL,
    device            VARCHAR,
    dtype             VARCHAR,
    batch_size        INTEGER,
    n_images          INTEGER,
    seconds           DOUBLE,
    per_image_seconds DOUBLE,
    peak_memory_bytes BIGINT,
    started_at        TIMESTAMP WITH TIME ZONE
);
