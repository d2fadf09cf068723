-- Which config file each run came from: a model's name is its config's file stem, so two
-- configs named alike (VLM-Lens configs are often all `config.yaml`) would otherwise replace
-- each other's rows without a word. `lens extract` refuses a name another config holds.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS config VARCHAR;
