"""Training the paper's models: recipes, the preprocessed-case cache, folds, losses, data, the
resumable loop, distributed data parallel, and assembling a weights bundle from a run folder."""
