"""One dynamic partition per model config; the sensor (or `lens materialize`) keeps them in
step with `configs/models/**/*.yaml`."""

from dagster import DynamicPartitionsDefinition

MODELS = DynamicPartitionsDefinition(name="models")
