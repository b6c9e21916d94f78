"""edgeflower.server."""
