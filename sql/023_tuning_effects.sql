-- A tuned model beside its base on the same held-out rows (issue 20, point 4: "Hidden in plain
-- sight" compares each soft-prompt and LoRA variant with its base).
--
-- tuning_answers: written by the tuned model's `tuned_model` step, which asks every held-out
-- row of its tuning config (`held_out`, less the rows that show a training image) of the tuned
-- model (role 'tuned') and of its base (role 'base'), through the greedy answering path of the
-- held-out accuracy, and reads the attention of the answer position on the row's images.
CREATE TABLE IF NOT EXISTS tuning_answers (
    model       VARCHAR NOT NULL,  -- the tuned model (partition) whose held-out rows these are
    role        VARCHAR NOT NULL,  -- 'tuned': the model itself; 'base': its base, same rows
    answered_by VARCHAR NOT NULL,  -- the model that answered: `model`, or its base's name
    dataset     VARCHAR,           -- the held-out dataset config's name ('inline': inline)
    row_key     VARCHAR,           -- the row's key in dataset_rows, for a dataset config
    image_ids   VARCHAR[],
    kind        VARCHAR,
    prompt      VARCHAR,
    answer_text VARCHAR,           -- the greedy answer as written
    answer      VARCHAR,           -- normalised to the row's choices; NULL: it named none
    expected    VARCHAR,
    correct     BOOLEAN,
    options     INTEGER,           -- the answers the row offers: chance is 1 / options
    image_share DOUBLE             -- attention of the answer position on the row's image
                                   -- tokens, mean over every LLM layer and head
);

-- One row per tuned model beside its base, every measure on the same held-out rows:
-- the VLM's accuracy; the best layer-wise readout per stage (vision tower, projector,
-- language model: the vision_vs_vlm_items rows of the held-out rows, each model's own
-- partition, so NULL where the held-out rows are not visual-task rows of a dataset config);
-- the total-variation distance between the answers' distribution (an answer naming no choice
-- counts as '(none)') and the labels'; and the answer position's image share of attention.
CREATE OR REPLACE VIEW tuning_effects AS
WITH scored AS (
    SELECT model, role, any_value(answered_by) AS answered_by, any_value(dataset) AS dataset,
           count(*) AS n, avg(correct::INTEGER) AS accuracy, avg(1.0 / options) AS chance,
           avg(image_share) AS image_share
    FROM tuning_answers GROUP BY model, role
), said AS (
    SELECT model, role, coalesce(answer, '(none)') AS value, count(*) AS n
    FROM tuning_answers GROUP BY ALL
), truth AS (
    SELECT model, role, expected AS value, count(*) AS n FROM tuning_answers GROUP BY ALL
), apart AS (
    SELECT coalesce(s.model, t.model) AS model, coalesce(s.role, t.role) AS role,
           0.5 * sum(abs(coalesce(s.n, 0) - coalesce(t.n, 0))) AS mass
    FROM said AS s
    FULL OUTER JOIN truth AS t ON t.model = s.model AND t.role = s.role AND t.value = s.value
    GROUP BY ALL
), held AS (
    SELECT DISTINCT model, role, answered_by, dataset, image_ids[1] AS image_id
    FROM tuning_answers
), by_layer AS (
    SELECT h.model, h.role, i.stage, i.layer, avg(i.correct::INTEGER) AS accuracy
    FROM held AS h
    JOIN vision_vs_vlm_items AS i
        ON i.model = h.answered_by AND i.dataset = h.dataset AND i.image_id = h.image_id
    WHERE i.stage IN ('vision', 'projector', 'llm')
    GROUP BY ALL
), readouts AS (
    SELECT model, role,
           max(accuracy) FILTER (WHERE stage = 'vision') AS vision_readout,
           max(accuracy) FILTER (WHERE stage = 'projector') AS projector_readout,
           max(accuracy) FILTER (WHERE stage = 'llm') AS language_readout
    FROM by_layer GROUP BY ALL
), measured AS (
    SELECT s.*, a.mass / s.n AS tv_labels, r.vision_readout, r.projector_readout,
           r.language_readout
    FROM scored AS s
    LEFT JOIN apart AS a USING (model, role)
    LEFT JOIN readouts AS r USING (model, role)
)
SELECT v.model, m.method, b.answered_by AS base, v.dataset, v.n, v.chance,
       v.accuracy, b.accuracy AS base_accuracy,
       v.vision_readout, b.vision_readout AS base_vision_readout,
       v.projector_readout, b.projector_readout AS base_projector_readout,
       v.language_readout, b.language_readout AS base_language_readout,
       v.tv_labels, b.tv_labels AS base_tv_labels,
       v.image_share, b.image_share AS base_image_share
FROM measured AS v
JOIN measured AS b ON b.model = v.model AND b.role = 'base'
LEFT JOIN models AS m ON m.model = v.model
WHERE v.role = 'tuned';
