"""faiss item index over the two-tower item embeddings, its recall check, and ``recall_two_tower``.

Never imports pyspark. Stage entry point: :func:`recsys_batch.index.build.run_index`.
"""
