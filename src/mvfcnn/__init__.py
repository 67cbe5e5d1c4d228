"""mvfcnn: max-voted fully convolutional classification of steel microstructures."""

__version__ = "0.1.0"
