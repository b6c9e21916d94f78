"""quickstart-edgeflower: Flower's quickstart-pytorch app with split offloading, FedProx, DP and pruning."""
