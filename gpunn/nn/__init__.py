"""The seed's formulas: parameters, initialization, layers, activations, Sequential, losses,
regularizers, gradient checks."""
