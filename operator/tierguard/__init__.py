"""tierguard: uncertainty-routed LLM cascades with quality-gated progressive rollout."""

__version__ = "0.1.0"
API_GROUP = "tierguard.io"
API_VERSION = "v1alpha1"
