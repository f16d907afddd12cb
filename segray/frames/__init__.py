"""Input side: which frames exist (listing, manifests) and how their bytes become RGB arrays."""
