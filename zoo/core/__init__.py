"""The core: specs and the model catalog, hooks, component registry and base classes, the model, the builder, limits, model directories, atomic files."""
