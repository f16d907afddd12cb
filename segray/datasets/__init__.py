"""Training data: (image, mask) pairs in the canonical CamVid/SegNet layout, folder pairs or manifests."""

from segray.datasets.pairs import Pair, PairSource, dataset_label_map, list_pairs

__all__ = ["Pair", "PairSource", "dataset_label_map", "list_pairs"]
