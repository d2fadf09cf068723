-- The efficiency table of the reference paper, per model, device and dtype, over every run
-- logged in `runs` (model load excluded). `oom_retries` counts batches that ran out of device
-- memory and were retried at half the size; `batch_size` is the size the run ended with.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS oom_retries INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS requested_batch_size INTEGER;

CREATE OR REPLACE VIEW efficiency AS
SELECT model, device, dtype,
       count(*) AS runs,
       sum(n_images) AS images,
       sum(seconds) AS seconds,
       sum(n_images) / nullif(sum(seconds), 0) AS images_per_second,
       1000 * sum(seconds) / nullif(sum(n_images), 0) AS ms_per_image,
       max(peak_memory_bytes) AS peak_memory_bytes,
       max(requested_batch_size) AS requested_batch_size,
       min(batch_size) AS batch_size,
       sum(coalesce(oom_retries, 0)) AS oom_retries
FROM runs
GROUP BY ALL;
