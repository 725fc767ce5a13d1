"""recsys-batch: the offline daily pipeline of an industrial recommender system."""

__version__ = "0.1.0"
