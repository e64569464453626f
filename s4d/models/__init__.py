"""S4D models: the shared video ViT, the dual-modal MAE, the MoAE classifier and their checkpoints."""
from s4d.models.checkpoint import load_model
from s4d.models.classifier import S4DClassifier
from s4d.models.lgi import LGIClassifier  # registers `encoder: lgi` with S4DClassifier
from s4d.models.mae import MaskedAutoencoder

__all__ = ["MaskedAutoencoder", "S4DClassifier", "LGIClassifier", "load_model"]
