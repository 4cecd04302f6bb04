"""The micro priors: small models of the real priors ' classes, trained on renders of a procedural world (world.py, train.py)."""
