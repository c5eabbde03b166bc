"""Looking at a model: per-layer/head views, figures, and the self-contained HTML report."""
