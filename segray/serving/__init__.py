"""Online labelling: the labelling job's model and Predictor behind an HTTP endpoint on Ray Serve.

``inputs`` turns a request body into a frame as the read stage would (with the body, form and pixel
limits); ``labeller`` runs the Predictor over a batch of frames, cancellably, and shapes the answers;
``auth`` checks the optional API key; ``health`` says when a replica is stuck or its event loop lags;
``app`` is the Serve deployment (HTTP routes, dynamic batching, deadlines, the page); ``cli`` is
``segray serve``.
"""
