-- Vision against VLM ("Hidden in plain sight"): each correspondence or odd-one-out item solved
-- from one layer's patch features, one row per (model, layer, item).
CREATE TABLE IF NOT EXISTS vision_vs_vlm_items (
    model       VARCHAR NOT NULL,
    dataset     VARCHAR NOT NULL,
    task        VARCHAR NOT NULL,  -- correspondence or odd_one_out
    stage       VARCHAR NOT NULL,  -- vision, projector or llm
    layer       VARCHAR NOT NULL,
    layer_order INTEGER NOT NULL,  -- vision blocks, then projectors, then LLM layers
    item        VARCHAR NOT NULL,
    image_id    VARCHAR NOT NULL,  -- the image the question is asked about
    choice      VARCHAR,
    answer      VARCHAR,
    correct     BOOLEAN,
    options     INTEGER            -- candidates per item: chance is 1 / options
);

-- Per layer: accuracy from features beside the model's own answer to the same items and chance.
-- vlm_accuracy is NULL for a model that cannot answer (a dual encoder).
CREATE OR REPLACE VIEW vision_vs_vlm AS
WITH vlm AS (
    SELECT model, dataset, image_id, bool_and(correct) AS correct
    FROM answers WHERE concept = 'answer' GROUP BY ALL
)
SELECT s.model, s.dataset, s.task, s.stage, s.layer, s.layer_order, count(*) AS items,
       avg(s.correct::INTEGER) AS feature_accuracy,
       avg(v.correct::INTEGER) AS vlm_accuracy,
       avg(1.0 / s.options) AS chance
FROM vision_vs_vlm_items AS s
LEFT JOIN vlm AS v USING (model, dataset, image_id)
GROUP BY ALL;
