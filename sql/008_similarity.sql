-- Linear CKA between two layers on the same images: within one model (model_a = model_b) and
-- across models. Each pair is stored once, by the partition of the model that came later.
CREATE TABLE IF NOT EXISTS layer_similarity (
    model_a      VARCHAR NOT NULL,
    layer_a      VARCHAR NOT NULL,
    model_b      VARCHAR NOT NULL,
    layer_b      VARCHAR NOT NULL,
    dataset      VARCHAR NOT NULL,
    pooling      VARCHAR NOT NULL,
    n            INTEGER,
    cka          DOUBLE,
    cka_unbiased DOUBLE
);

-- Every pair in both directions, so "for this layer" queries need no UNION of their own.
CREATE OR REPLACE VIEW layer_similarity_pairs AS
SELECT model_a, layer_a, model_b, layer_b, dataset, pooling, n, cka, cka_unbiased
FROM layer_similarity
UNION ALL
SELECT model_b, layer_b, model_a, layer_a, dataset, pooling, n, cka, cka_unbiased
FROM layer_similarity
WHERE NOT (model_a = model_b AND layer_a = layer_b);

-- For each layer of one model, the layers of another model ranked by CKA (rank 1: closest).
CREATE OR REPLACE VIEW closest_layers AS
SELECT model_a AS model, layer_a AS layer, model_b AS other_model, layer_b AS other_layer,
       dataset, pooling, cka,
       rank() OVER (PARTITION BY model_a, layer_a, model_b, dataset, pooling
                    ORDER BY cka DESC) AS rank
FROM layer_similarity_pairs
WHERE model_a <> model_b;

-- Blind test: the same questions on real and on blank images. Total-variation distances
-- between the answer distributions and the label distribution show whether a model looks.
CREATE TABLE IF NOT EXISTS blind_test (
    model           VARCHAR NOT NULL,
    dataset         VARCHAR NOT NULL,
    blank_dataset   VARCHAR NOT NULL,
    concept         VARCHAR NOT NULL,
    n_real          INTEGER,
    n_blank         INTEGER,
    accuracy_real   DOUBLE,
    accuracy_blank  DOUBLE,
    tv_real_labels  DOUBLE,
    tv_blank_labels DOUBLE,
    tv_real_blank   DOUBLE
);
