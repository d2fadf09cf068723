-- Questions or instructions per image, with the correct answer where the dataset knows it
-- (CLEVR-style questions, manifest prompts, a blank dataset's borrowed questions).
CREATE TABLE IF NOT EXISTS prompts (
    image_id  VARCHAR NOT NULL,
    dataset   VARCHAR NOT NULL,
    prompt_id INTEGER NOT NULL,
    prompt    VARCHAR NOT NULL,
    answer    VARCHAR,
    kind      VARCHAR,
    concept   VARCHAR  -- the label concept the answer is a value of, where there is one
);

-- Files a dataset names that could not be used, and why; the run goes on without them.
CREATE TABLE IF NOT EXISTS image_errors (
    dataset VARCHAR NOT NULL,
    path    VARCHAR NOT NULL,
    error   VARCHAR NOT NULL
);
