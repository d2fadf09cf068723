-- Where the model looks, when the answer appears, and which layers and heads carry it: one
-- row set per model, written by the interpretability step (configs/interpretability.yaml).

CREATE TABLE IF NOT EXISTS attention_maps (
    model       VARCHAR NOT NULL,
    dataset     VARCHAR,
    image_id    VARCHAR,
    prompt      VARCHAR,
    layer       VARCHAR NOT NULL,
    head        INTEGER NOT NULL,
    grid_rows   INTEGER,            -- NULL where the image tokens form no patch grid (tiles)
    grid_cols   INTEGER,
    weights     FLOAT[],            -- answer position -> each image token, row-major grid
    image_share DOUBLE              -- attention mass on image tokens; text gets the rest
);

CREATE TABLE IF NOT EXISTS logit_lens (
    model          VARCHAR NOT NULL,
    dataset        VARCHAR,
    image_id       VARCHAR,
    prompt         VARCHAR,
    layer          VARCHAR NOT NULL,
    layer_index    INTEGER NOT NULL,  -- depth in the decoder stack, from 0
    top_token_ids  INTEGER[],
    top_tokens     VARCHAR[],
    top_probs      FLOAT[],
    label          VARCHAR,
    label_token_id INTEGER,
    label_rank     INTEGER,           -- tokens more probable than the label's first: 0 is top
    label_prob     FLOAT
);

CREATE TABLE IF NOT EXISTS attributions (
    model        VARCHAR NOT NULL,
    dataset      VARCHAR,
    image_id     VARCHAR,
    prompt       VARCHAR,
    method       VARCHAR NOT NULL,  -- gradcam or input_x_gradient
    layer        VARCHAR NOT NULL,  -- the vision block, or 'pixels'
    target_token BIGINT,
    grid_rows    INTEGER,
    grid_cols    INTEGER,
    heatmap      FLOAT[]            -- values in [0, 1], row-major
);

CREATE TABLE IF NOT EXISTS patching_effects (
    model             VARCHAR NOT NULL,
    dataset           VARCHAR,
    pair_id           VARCHAR,      -- 'clean_image_id>corrupted_image_id'
    layer             VARCHAR NOT NULL,
    positions         VARCHAR,      -- all or image
    patched_positions INTEGER,
    answer_token      BIGINT,
    clean_logit       DOUBLE,
    corrupted_logit   DOUBLE,
    patched_logit     DOUBLE,
    recovery          DOUBLE        -- (patched - corrupted) / (clean - corrupted); NaN: no gap
);

CREATE TABLE IF NOT EXISTS ablation_effects (
    model         VARCHAR NOT NULL,
    dataset       VARCHAR,
    sample_id     VARCHAR,
    layer         VARCHAR NOT NULL,
    heads         INTEGER[],
    mode          VARCHAR,          -- zero or mean
    answer_token  BIGINT,
    base_logit    DOUBLE,
    ablated_logit DOUBLE,
    logit_change  DOUBLE,
    kl            DOUBLE,           -- KL(base || ablated) at the answer position
    max_abs_diff  DOUBLE
);

-- Share of the answer position's attention on image tokens, by layer (mean over heads and
-- items): does the model look at the image, and where in depth?
CREATE OR REPLACE VIEW attention_image_share AS
SELECT model, dataset, layer, count(*) AS maps, avg(image_share) AS image_share,
       min(image_share) AS min_share, max(image_share) AS max_share
FROM attention_maps
GROUP BY ALL;

-- At which layer does the answer appear: per layer, how often the label is the top token and
-- its mean probability; first_top_layer is the shallowest layer where it is top on average.
CREATE OR REPLACE VIEW answer_emergence AS
WITH by_layer AS (
    SELECT model, dataset, layer, layer_index, count(*) AS items,
           avg((label_rank = 0)::INTEGER) AS top1_share, avg(label_prob) AS label_prob,
           avg(label_rank) AS mean_rank
    FROM logit_lens WHERE label IS NOT NULL
    GROUP BY ALL
)
SELECT *, min(CASE WHEN top1_share >= 0.5 THEN layer_index END)
              OVER (PARTITION BY model, dataset) AS first_top_layer
FROM by_layer;
