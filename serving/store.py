"""The model store as the service sees it. s4d.registry owns it (names, saving, metadata, the served tag);
these names are re-exported so that serving code and its tests keep one import path."""
from s4d.registry import CANDIDATE, CHAMPION, DEFAULT_TAG, MODEL_FILE, model_tag, save_to_store  # noqa: F401
