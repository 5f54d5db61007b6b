"""RecLoRA: a language-model CTR scorer with per-user mixtures of meta-LoRAs."""
