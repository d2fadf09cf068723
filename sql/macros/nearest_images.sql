-- The k images nearest to one image at a layer, by cosine similarity of their vectors:
--   SELECT * FROM nearest_images('tiny-llava', 'model.language_model.norm', 'last', '<id>', 5)
-- Temporary: defined on every connection (read-only ones too), so it never changes the lake.
CREATE OR REPLACE TEMP MACRO nearest_images(model_name, layer_name, pooling_name, query_image, k)
AS TABLE
    WITH q AS (
        SELECT dataset, vector FROM activations
        WHERE model = model_name AND layer = layer_name AND pooling = pooling_name
          AND image_id = query_image
    )
    SELECT a.image_id, a.dataset, list_cosine_similarity(a.vector, q.vector) AS cosine
    FROM activations AS a JOIN q ON a.dataset = q.dataset
    WHERE a.model = model_name AND a.layer = layer_name AND a.pooling = pooling_name
      AND a.image_id <> query_image
    ORDER BY cosine DESC, a.image_id
    LIMIT k;
