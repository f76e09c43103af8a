"""The recipe layer: the validated config, ``run()`` (which wires the components), run folders and results tables."""
