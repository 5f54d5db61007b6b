"""Model families (DLRM, sequential, RecLoRA): LightningModules, DataModules and MLflow pyfuncs."""
