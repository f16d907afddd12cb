"""Online labelling: the labelling job's model and Predictor behind an HTTP endpoint on Ray Serve.

``inputs`` turns a request body into a frame as the read stage would; ``labeller`` runs the
Predictor over a batch of frames and shapes the answers; ``auth`` checks the optional API key;
``app`` is the Serve deployment (HTTP routes, dynamic batching, the page); ``cli`` is ``segray serve``.
"""
