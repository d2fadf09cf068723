-- One row per (image, prompt, layer, pooling) and, for `tokens`, per position.
-- vector is FLOAT[]: DuckLake has no fixed-size ARRAY; list_cosine_similarity works on it.
CREATE TABLE IF NOT EXISTS activations (
    model        VARCHAR NOT NULL,
    architecture VARCHAR NOT NULL,
    dataset      VARCHAR NOT NULL,
    image_id     VARCHAR NOT NULL,
    prompt       VARCHAR,
    layer        VARCHAR NOT NULL,
    pooling      VARCHAR NOT NULL,
    token_index  INTEGER,
    token_role   VARCHAR,
    dim          INTEGER NOT NULL,
    vector       FLOAT[] NOT NULL
);

ALTER TABLE activations SET PARTITIONED BY (model);
