"""What every command shares: the default model and option spellings (no command imports another)."""

DEFAULT_MODEL = "fashion_vit"  # bundled reference ViT (vitx.reference_models.weights): works offline
