"""edgeflower.transport."""
