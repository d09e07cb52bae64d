"""Model loading (folder, hub id, GGUF), architecture adapters as data, and the layer-by-layer runner."""
