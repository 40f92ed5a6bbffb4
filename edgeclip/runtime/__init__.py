"""On-device runtime: bundle loading, encoder backends, text tower, prompt context, heads and methods."""
