"""edgeflower: edge-computing techniques for the Flower federated-learning framework."""

__version__ = "0.1.0"
