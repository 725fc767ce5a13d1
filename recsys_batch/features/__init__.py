"""Features of run date D: profiles, windowed statistics, fitted transforms, feature spec, coverage.

Stage entry point: :func:`recsys_batch.features.stage.run_features`.
"""
