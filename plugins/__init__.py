"""Built-in harness plugins, installed as ``harness_plugins`` (one module per component)."""
