"""The Kubernetes side: child rendering, kopf handlers, manual control, CRD generation."""
