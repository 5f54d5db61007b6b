"""DLRM / DCNv2 CTR ranker on TorchRec sharded embedding tables, trained by Lightning."""
