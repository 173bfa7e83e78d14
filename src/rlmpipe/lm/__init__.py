"""The LM layer: model strings, the embedded local model, and usage accounting."""
