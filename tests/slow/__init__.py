"""Slow tests: real training on slivers of ../shared/data; they skip, saying why, where the data is missing."""

from __future__ import annotations

import pytest

from training.data import default_data_root

DATA_ROOT = default_data_root()
needs_labeled_data = pytest.mark.skipif(
    not (DATA_ROOT / "toxicity/olid/train.tsv").is_file(),
    reason=f"needs the labeled sets at {DATA_ROOT} (../shared/data; see its README.md)")
