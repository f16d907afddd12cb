"""segray: semantic-segmentation labelling and training for large image archives, on Ray."""

__version__ = "0.1.0"
