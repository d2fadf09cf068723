-- VLM-Lens's concept workflow (asset concept_pca): items of a target dataset against the
-- centroids of a concept image set, in the concept set's principal components, per layer and
-- pooling. One row per (item, concept): the cosine to the concept's centroid with the first
-- 1, 2, ... components (similarities[k] is at k components), and the weighted k-NN vote.
CREATE TABLE IF NOT EXISTS concept_pca (
    model           VARCHAR NOT NULL,
    dataset         VARCHAR NOT NULL,   -- the items' dataset (the concept set itself: held out)
    concept_dataset VARCHAR NOT NULL,
    layer           VARCHAR NOT NULL,
    pooling         VARCHAR NOT NULL,
    row_key         VARCHAR NOT NULL,
    truth           VARCHAR,            -- the item's expected concept; NULL: not known
    concept         VARCHAR NOT NULL,
    similarities    DOUBLE[],
    knn_components  INTEGER,
    knn_vote        DOUBLE,             -- sum of sim^power over its concept's items among the k
    knn_concept     VARCHAR             -- the item's k-NN winner (the same on its every row)
);

-- Per layer, pooling and number of components: how often items are nearest their own
-- centroid, and given their own concept by the k-NN.
CREATE TABLE IF NOT EXISTS concept_pca_layers (
    model              VARCHAR NOT NULL,
    dataset            VARCHAR NOT NULL,
    concept_dataset    VARCHAR NOT NULL,
    layer              VARCHAR NOT NULL,
    pooling            VARCHAR NOT NULL,
    components         INTEGER NOT NULL,
    n                  INTEGER,         -- items whose expected concept is one of the concepts
    explained_variance DOUBLE,          -- of the concept set, by the first `components`
    centroid_accuracy  DOUBLE,
    knn_accuracy       DOUBLE,
    own_similarity     DOUBLE,          -- mean cosine to the item's own centroid
    other_similarity   DOUBLE           -- mean cosine to the nearest other centroid
);
