-- A module's name as its model config wrote it, where that differs from `layer` (today's name):
-- a VLM-Lens config names modules as transformers 4.x did (`language_model.model.layers.31`),
-- today's transformers calls the same module `model.language_model.layers.31`. `activations`
-- keeps today's name in `layer`; the `tensors` view (VLM-Lens's table) shows the name as
-- written, so a VLM-Lens user's query finds the rows. NULL: written as it is named today (and
-- every row written before this column existed).
ALTER TABLE activations ADD COLUMN IF NOT EXISTS layer_as_written VARCHAR;

-- As sql/017_rows.sql defined it, with the layer as the config wrote it.
CREATE OR REPLACE VIEW tensors AS
SELECT
    a.model        AS name,
    a.architecture AS architecture,
    i.path         AS image_path,
    a.prompt       AS prompt,
    coalesce(l.value, r.answer) AS label,
    coalesce(a.layer_as_written, a.layer) AS layer,
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
