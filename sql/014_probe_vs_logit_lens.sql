-- What a layer encodes beside what it would say: per model, dataset, concept and layer, the
-- linear probe's accuracy (probe_results) next to the logit lens's reading of the same layer
-- (how often the label is the top token, and its mean probability). A layer where the probe
-- is high but the label is not yet the top token encodes the answer before it emits it.
CREATE OR REPLACE VIEW probe_vs_logit_lens AS
WITH asked AS (
    SELECT DISTINCT dataset, prompt, coalesce(concept, kind) AS concept FROM prompts
), lens AS (
    SELECT l.model, l.dataset, a.concept, l.layer, any_value(l.layer_index) AS layer_index,
           count(*) AS items, avg((l.label_rank = 0)::INTEGER) AS top1_share,
           avg(l.label_prob) AS label_prob
    FROM logit_lens AS l JOIN asked AS a USING (dataset, prompt)
    WHERE l.label IS NOT NULL
    GROUP BY ALL
)
SELECT lens.*, r.pooling, r.accuracy AS probe_accuracy, r.control_accuracy, r.selectivity
FROM lens
LEFT JOIN probe_results AS r
    ON r.model = lens.model AND r.dataset = lens.dataset AND r.concept = lens.concept
   AND r.layer = lens.layer AND r.probe = 'linear';
