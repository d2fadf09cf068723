"""The Dagster side of LensFlow: thin assets, checks and sensors over the domain code."""
