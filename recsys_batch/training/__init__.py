"""PyTorch two-tower retrieval: streaming data, model, losses, daily retrain, export.

Never imports pyspark: samples and feature tables are read as Parquet through pyarrow (Delta tables via
:mod:`recsys_batch.io.delta_read`), so this package runs on a GPU box or under torchrun without a JVM.
Stage entry point: :func:`recsys_batch.training.train.run_train`.
"""
