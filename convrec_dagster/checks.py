"""Every asset check of the pipeline, collected from the asset modules they are defined in.

Checks live beside the assets they guard (``assets/<stage>.py``); this module only gathers them
for the Definitions.
"""

from __future__ import annotations

import dagster as dg

from assets import evaluation, features, ingest, splits, training

# The pipeline's stages in graph order; each module's assets carry the group of the same name.
ASSET_MODULES = [ingest, features, splits, training, evaluation]

ALL_ASSET_CHECKS = dg.load_asset_checks_from_modules(ASSET_MODULES)
