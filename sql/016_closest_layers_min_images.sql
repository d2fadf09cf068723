-- CKA over fewer than three images is not a number to rank (with one image it is undefined,
-- with two it is 1 for any pair of layers): closest_layers ranks only pairs measured on at
-- least three images, and says over how many (`n`).
CREATE OR REPLACE VIEW closest_layers AS
SELECT model_a AS model, layer_a AS layer, model_b AS other_model, layer_b AS other_layer,
       dataset, pooling, n, cka,
       rank() OVER (PARTITION BY model_a, layer_a, model_b, dataset, pooling
                    ORDER BY cka DESC) AS rank
FROM layer_similarity_pairs
WHERE model_a <> model_b AND n >= 3 AND cka IS NOT NULL;
