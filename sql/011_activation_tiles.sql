-- Families that cut an image into tiles (LLaVA-NeXT, InternVL, Idefics3, ...) run each tile
-- through the vision tower: `tile` says which tile of its image a `tokens` row came from
-- (NULL for pooled rows and for positions outside the vision tower).
ALTER TABLE activations ADD COLUMN IF NOT EXISTS tile INTEGER;
