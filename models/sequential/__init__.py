"""Sequential retrieval models: SASRec (ID only) and the Molar-style multimodal model."""
