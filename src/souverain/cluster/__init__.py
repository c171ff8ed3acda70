"""The only package that imports Ray: nodes → snapshot, replica actors, label selectors."""
