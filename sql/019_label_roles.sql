-- What a dataset declares each label to be, carried on its rows: 'concept' (a concept to
-- probe), 'control_type' (it names each row's input for the probes' control task) or 'other' (an
-- id, a coordinate, an answer letter: not probed unless asked). NULL: the dataset declares
-- nothing (a warehouse from before this migration, a VLM-Lens dataset), and probing judges the
-- label by its values (lens_assets/analyses/probing.py `probed_concepts`).
ALTER TABLE row_labels ADD COLUMN IF NOT EXISTS role VARCHAR;
