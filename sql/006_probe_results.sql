-- One row per (model, dataset, layer, pooling, concept, probe kind): does the layer encode the
-- concept, beyond what a probe can memorise (Hewitt & Liang's control task)?
CREATE TABLE IF NOT EXISTS probe_results (
    model              VARCHAR NOT NULL,
    dataset            VARCHAR NOT NULL,
    layer              VARCHAR NOT NULL,
    pooling            VARCHAR NOT NULL,
    concept            VARCHAR NOT NULL,
    probe              VARCHAR NOT NULL,
    accuracy           DOUBLE,
    control_accuracy   DOUBLE,
    selectivity        DOUBLE,
    p_value            DOUBLE,
    n                  INTEGER,
    fold_std           DOUBLE,
    shuffled_accuracy  DOUBLE,
    z_p_value          DOUBLE,
    classes            INTEGER
);

-- The best layer per (model, dataset, concept, probe, pooling): where a concept peaks.
CREATE OR REPLACE VIEW probe_peaks AS
SELECT model, dataset, concept, probe, pooling,
       arg_max(layer, accuracy) AS best_layer,
       max(accuracy) AS best_accuracy,
       arg_max(selectivity, accuracy) AS selectivity_at_best,
       arg_max(p_value, accuracy) AS p_value_at_best
FROM probe_results
GROUP BY ALL;
