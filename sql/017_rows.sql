-- Rows, not images: the unit of data is the dataset row (zero or more images in order, its own
-- prompt, its labels, its expected answer and choices, its split).
-- `row_key` is a hash of the row's image ids and its own prompt (lens_assets/data/rows.py);
-- DuckLake reserves the name `row_id` for itself.
CREATE TABLE IF NOT EXISTS dataset_rows (
    dataset   VARCHAR NOT NULL,
    row_key   VARCHAR NOT NULL,
    position  INTEGER NOT NULL,  -- the row's place in its dataset
    image_ids VARCHAR[] NOT NULL,
    prompt    VARCHAR,           -- NULL: the model config's prompt is asked
    answer    VARCHAR,
    choices   VARCHAR[],
    split     VARCHAR,
    kind      VARCHAR,
    concept   VARCHAR            -- the label concept the answer is a value of, where there is one
);

CREATE TABLE IF NOT EXISTS row_labels (
    dataset VARCHAR NOT NULL,
    row_key VARCHAR NOT NULL,
    concept VARCHAR NOT NULL,
    value   VARCHAR
);

-- Activations are keyed by row; `image_id` is the row's first image (NULL for a text-only row),
-- `image_index` says which of the row's images an image position (or a `mean_per_image` row)
-- belongs to.
ALTER TABLE activations ADD COLUMN IF NOT EXISTS row_key VARCHAR;
ALTER TABLE activations ADD COLUMN IF NOT EXISTS image_ids VARCHAR[];
ALTER TABLE activations ADD COLUMN IF NOT EXISTS image_index INTEGER;
ALTER TABLE activations ALTER COLUMN image_id DROP NOT NULL;
ALTER TABLE answers ADD COLUMN IF NOT EXISTS row_key VARCHAR;
ALTER TABLE answers ADD COLUMN IF NOT EXISTS image_ids VARCHAR[];
ALTER TABLE answers ALTER COLUMN image_id DROP NOT NULL;
-- Attention to each image of a row: one map per (row, image, layer, head).
ALTER TABLE attention_maps ADD COLUMN IF NOT EXISTS row_key VARCHAR;
ALTER TABLE attention_maps ADD COLUMN IF NOT EXISTS image_index INTEGER;

-- Upgrade in place: every image of an image-keyed warehouse was one row with no prompt of its
-- own (the model config's prompt was asked), and every question about an image one row more.
UPDATE activations
SET image_ids = [image_id],
    row_key = substr(sha256(image_id || chr(30)), 1, 16),
    image_index = CASE WHEN token_role = 'image' THEN 0 END
WHERE row_key IS NULL;

UPDATE answers
SET image_ids = [image_id],
    row_key = substr(sha256(image_id || chr(30) || prompt), 1, 16)
WHERE row_key IS NULL;

INSERT INTO dataset_rows
SELECT dataset, substr(sha256(image_id || chr(30)), 1, 16),
       CAST(row_number() OVER (PARTITION BY dataset ORDER BY image_id) - 1 AS INTEGER),
       [image_id], NULL, NULL, NULL, any_value(split), NULL, NULL
FROM images
WHERE dataset NOT IN (SELECT DISTINCT dataset FROM dataset_rows)
GROUP BY dataset, image_id;

INSERT INTO dataset_rows
SELECT p.dataset, substr(sha256(p.image_id || chr(30) || p.prompt), 1, 16),
       CAST(p.prompt_id + 1000000 AS INTEGER), [p.image_id], p.prompt, p.answer, NULL,
       (SELECT any_value(i.split) FROM images AS i
        WHERE i.image_id = p.image_id AND i.dataset = p.dataset),
       p.kind, p.concept
FROM prompts AS p
WHERE p.dataset NOT IN (SELECT DISTINCT dataset FROM dataset_rows WHERE prompt IS NOT NULL);

INSERT INTO row_labels
SELECT r.dataset, r.row_key, l.concept, l.value
FROM dataset_rows AS r JOIN image_labels AS l
    ON l.dataset = r.dataset AND l.image_id = r.image_ids[1]
WHERE NOT EXISTS (SELECT 1 FROM row_labels AS x WHERE x.dataset = r.dataset);

-- VLM-Lens's table shape, one row per (dataset row, layer, pooling): the path of the row's first
-- image, the prompt the model was asked, and the row's label (its `label` concept, else its
-- expected answer).
CREATE OR REPLACE VIEW tensors AS
SELECT
    a.model        AS name,
    a.architecture AS architecture,
    i.path         AS image_path,
    a.prompt       AS prompt,
    coalesce(l.value, r.answer) AS label,
    a.layer        AS layer,
    a.pooling      AS pooling_method,
    a.dim          AS tensor_dim,
    a.vector       AS tensor
FROM activations AS a
LEFT JOIN (SELECT DISTINCT image_id, dataset, path FROM images) AS i
    ON i.image_id = a.image_id AND i.dataset = a.dataset
LEFT JOIN (SELECT dataset, row_key, any_value(answer) AS answer FROM dataset_rows GROUP BY ALL) AS r
    ON r.row_key = a.row_key AND r.dataset = a.dataset
LEFT JOIN (
    SELECT row_key, dataset, any_value(value) AS value
    FROM row_labels WHERE concept = 'label' GROUP BY ALL
) AS l
    ON l.row_key = a.row_key AND l.dataset = a.dataset;

-- Accuracy over the rows that know their answer (a blank dataset's rows do not: the blind test
-- scores them against the real rows that asked the same question).
CREATE OR REPLACE VIEW answer_accuracy AS
SELECT model, dataset, concept, count(*) AS n, avg(correct::INTEGER) AS accuracy,
       avg((answer IS NULL)::INTEGER) AS unparsed
FROM answers WHERE expected IS NOT NULL GROUP BY ALL;

-- The answer against what the layers encode: a concept's answer accuracy beside the best probe
-- of the same concept (a label of the rows) and of the question's own answer ("answer:<kind>",
-- VLM-Lens's CLEVR layout: each question type's answer probed from that question's rows).
CREATE OR REPLACE VIEW behaviour_vs_competence AS
WITH best AS (
    SELECT model, dataset, concept,
           max(accuracy) AS probe_accuracy,
           arg_max(selectivity, accuracy) AS selectivity,
           arg_max(layer, accuracy) AS peak_layer,
           arg_max(pooling, accuracy) AS peak_pooling
    FROM probe_results WHERE probe = 'linear' GROUP BY ALL
)
SELECT a.model, a.dataset, a.concept, a.n AS questions, a.accuracy AS answer_accuracy,
       b.probe_accuracy, b.selectivity, b.peak_layer, b.peak_pooling,
       b.probe_accuracy - a.accuracy AS competence_gap,
       b.concept AS probe_concept
FROM answer_accuracy AS a
JOIN best AS b
    ON b.model = a.model AND b.dataset = a.dataset
   AND (b.concept = a.concept OR b.concept = 'answer:' || a.concept);

-- Vision against VLM over rows: each layer's accuracy from per-image features beside the VLM's
-- own answer to the row's question asked with all its images in one prompt (the items' `vlm`
-- rows), and chance. vlm_accuracy is NULL where the VLM was not asked (a dual encoder, or a
-- family that takes one image per prompt).
CREATE OR REPLACE VIEW vision_vs_vlm AS
WITH vlm AS (
    SELECT model, dataset, task, avg(correct::INTEGER) AS vlm_accuracy
    FROM vision_vs_vlm_items WHERE stage = 'vlm' GROUP BY ALL
)
SELECT s.model, s.dataset, s.task, s.stage, s.layer, s.layer_order, count(*) AS items,
       avg(s.correct::INTEGER) AS feature_accuracy, any_value(v.vlm_accuracy) AS vlm_accuracy,
       avg(1.0 / s.options) AS chance
FROM vision_vs_vlm_items AS s LEFT JOIN vlm AS v USING (model, dataset, task)
WHERE s.stage <> 'vlm'
GROUP BY s.model, s.dataset, s.task, s.stage, s.layer, s.layer_order;
