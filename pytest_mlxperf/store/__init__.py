"""Files that outlive a run: baselines, results documents, and the atomic writes both use."""
