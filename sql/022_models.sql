-- Every model partition and what it is (issue 20): a plain model config (kind 'model', no base,
-- method 'none') or a model trained from a base by a tuning config (kind 'tuning', its base's
-- name and the method: full, lora or prompt_tuning). One row per model, written by the
-- `tuned_model` asset, so any table's `model` joins to the base it came from and how.
CREATE TABLE IF NOT EXISTS models (
    model             VARCHAR NOT NULL,  -- the partition: the config file's stem
    kind              VARCHAR NOT NULL,  -- 'model' (configs/models/) | 'tuning' (configs/tuning/)
    base              VARCHAR,           -- the base model config's name; NULL: a plain model
    method            VARCHAR NOT NULL,  -- 'none' | 'full' | 'lora' | 'prompt_tuning'
    config_hash       VARCHAR NOT NULL,  -- plain: the YAML's hash; tuned: the settings' hash
    version           VARCHAR NOT NULL,  -- the partition's data version (with a tuned model's base)
    config            VARCHAR,           -- the config file
    checkpoint        VARCHAR,           -- the weights it runs: model_path, or the tuned folder
    steps             INTEGER,           -- tuned: optimiser steps; NULL: a plain model
    final_loss        DOUBLE,
    seconds           DOUBLE,            -- training time
    held_out_accuracy DOUBLE             -- on the tuning config's held_out rows, every kind
);
