"""The Dagster side of LensFlow: thin assets, checks and sensors over the domain code.

Partitioned observable sources and partitioned checks are Dagster beta/preview features that
LensFlow relies on deliberately; their import-time notices are silenced here, once.
"""

import warnings

from dagster import BetaWarning, PreviewWarning

warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)
