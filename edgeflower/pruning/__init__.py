"""edgeflower.pruning."""
