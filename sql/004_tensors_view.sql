-- VLM-Lens's table shape over `activations`, so VLM-Lens users' queries keep working.
-- `label` is the image's ground truth for the concept named 'label', where there is one.
CREATE OR REPLACE VIEW tensors AS
SELECT
    a.model        AS name,
    a.architecture AS architecture,
    i.path         AS image_path,
    a.prompt       AS prompt,
    l.value        AS label,
    a.layer        AS layer,
    a.pooling      AS pooling_method,
    a.dim          AS tensor_dim,
    a.vector       AS tensor
FROM activations AS a
LEFT JOIN (SELECT DISTINCT image_id, dataset, path FROM images) AS i
    ON i.image_id = a.image_id AND i.dataset = a.dataset
LEFT JOIN (
    SELECT image_id, dataset, any_value(value) AS value
    FROM image_labels WHERE concept = 'label' GROUP BY ALL
) AS l
    ON l.image_id = a.image_id AND l.dataset = a.dataset;
