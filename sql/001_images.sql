-- Images and their ground truth. image_id is a content hash, so the same picture has one id
-- in every dataset and every run.
CREATE TABLE IF NOT EXISTS images (
    image_id VARCHAR NOT NULL,
    dataset  VARCHAR NOT NULL,
    path     VARCHAR,
    width    INTEGER,
    height   INTEGER,
    split    VARCHAR
);

CREATE TABLE IF NOT EXISTS image_labels (
    image_id VARCHAR NOT NULL,
    dataset  VARCHAR NOT NULL,
    concept  VARCHAR NOT NULL,
    value    VARCHAR
);
