"""Building blocks shared by every model family: activations, normalisation layers, initialisers."""
