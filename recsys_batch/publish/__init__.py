"""Versioned releases of everything serving reads, behind one atomically switched pointer.

Never imports pyspark. Stage entry point: :func:`recsys_batch.publish.release.run_publish`;
:func:`recsys_batch.publish.release.rollback` switches the pointer back to an earlier release.
"""
