-- Behaviour: each model's greedy answer to each question, normalised to the concept's
-- vocabulary, and whether it is right.
CREATE TABLE IF NOT EXISTS answers (
    model       VARCHAR NOT NULL,
    dataset     VARCHAR NOT NULL,
    image_id    VARCHAR NOT NULL,
    prompt_id   INTEGER NOT NULL,
    prompt      VARCHAR,
    concept     VARCHAR,
    kind        VARCHAR,
    answer_text VARCHAR,
    answer      VARCHAR,
    expected    VARCHAR,
    correct     BOOLEAN
);

CREATE OR REPLACE VIEW answer_accuracy AS
SELECT model, dataset, concept, count(*) AS n, avg(correct::INTEGER) AS accuracy,
       avg((answer IS NULL)::INTEGER) AS unparsed
FROM answers GROUP BY ALL;

CREATE OR REPLACE VIEW answer_distribution AS
SELECT model, dataset, concept, coalesce(answer, '(unparsed)') AS answer, count(*) AS n
FROM answers GROUP BY ALL;

-- Behaviour against competence: the answer accuracy beside the best probe, per concept.
CREATE OR REPLACE VIEW behaviour_vs_competence AS
WITH best AS (
    SELECT model, dataset, concept,
           max(accuracy) AS probe_accuracy,
           arg_max(selectivity, accuracy) AS selectivity,
           arg_max(layer, accuracy) AS peak_layer,
           arg_max(pooling, accuracy) AS peak_pooling
    FROM probe_results WHERE probe = 'linear' GROUP BY ALL
)
SELECT a.model, a.dataset, a.concept, a.n AS questions, a.accuracy AS answer_accuracy,
       b.probe_accuracy, b.selectivity, b.peak_layer, b.peak_pooling,
       b.probe_accuracy - a.accuracy AS competence_gap
FROM answer_accuracy AS a
JOIN best AS b USING (model, dataset, concept);
