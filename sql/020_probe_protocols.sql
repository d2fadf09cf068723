-- Two probing protocols (configs/probing.yaml `protocol`): 'cv', k-fold cross-validation over
-- every row, and 'vlm-lens', VLM-Lens's held-out split with a grid chosen by CV on the training
-- split (lens_assets/analyses/vlm_lens_probe.py). A model's rows come from one protocol.
-- z_p_value stays the one-sided z-test (probe above the shuffled control); z_p_two_sided is
-- VLM-Lens's two-sided test on the same counts, 2 * min(p, 1 - p) of the one-sided p.
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS protocol VARCHAR;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS z_p_two_sided DOUBLE;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS n_test INTEGER;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS hyperparameters VARCHAR;  -- JSON
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS probe_file VARCHAR;  -- under the warehouse root

-- Every row written before this migration was cross-validated.
UPDATE probe_results
SET protocol = 'cv', z_p_two_sided = 2 * least(z_p_value, 1 - z_p_value)
WHERE protocol IS NULL;

-- Each held-out row's prediction by each saved probe ('vlm-lens'): which items a layer gets
-- wrong.
CREATE TABLE IF NOT EXISTS probe_predictions (
    model     VARCHAR NOT NULL,
    dataset   VARCHAR NOT NULL,
    layer     VARCHAR NOT NULL,
    pooling   VARCHAR NOT NULL,
    concept   VARCHAR NOT NULL,
    probe     VARCHAR NOT NULL,
    row_key   VARCHAR NOT NULL,
    label     VARCHAR,
    predicted VARCHAR,
    correct   BOOLEAN
);
