-- The Stroop study per layer: nearest-centroid and k-NN accuracy of each cue on the first k
-- principal components, and which cue the representation follows when the cues disagree.
CREATE TABLE IF NOT EXISTS concept_similarity (
    model                     VARCHAR NOT NULL,
    dataset                   VARCHAR NOT NULL,
    layer                     VARCHAR NOT NULL,
    pooling                   VARCHAR NOT NULL,
    cue                       VARCHAR NOT NULL,
    components                INTEGER NOT NULL,
    nearest_centroid_accuracy DOUBLE,
    knn_accuracy              DOUBLE
);

CREATE TABLE IF NOT EXISTS concept_dominance (
    model             VARCHAR NOT NULL,
    dataset           VARCHAR NOT NULL,
    layer             VARCHAR NOT NULL,
    pooling           VARCHAR NOT NULL,
    cue               VARCHAR NOT NULL,  -- word, font, background, or none
    share             DOUBLE,            -- of the items whose three cues disagree
    components_needed INTEGER            -- to reach 0.9 nearest-centroid accuracy; NULL: never
);
