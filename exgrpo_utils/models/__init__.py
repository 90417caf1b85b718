"""Models: the registry and loading (the embedded student's GGUF conversion), generation and chat backends, the completion cache."""
