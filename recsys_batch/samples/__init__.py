"""Training samples of label day D: recall (two-tower) and ranking, joined with features of D - 1.

Stage entry point: :func:`recsys_batch.samples.stage.run_samples`.
"""
