"""recsys: batch recommender pipelines on real engines (Spark, TorchRec, FAISS, MLflow)."""

__version__ = "0.1.0"
