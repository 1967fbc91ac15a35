"""zoo's built-in components, each an ordinary plugin module (see ``zoo.core.hookspecs``)."""
