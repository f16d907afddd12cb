# segray image: Ray's own CUDA image at the Ray version the project pins, plus segray.
# Build: docker build -t <registry>/segray:<tag> .   (tests check RAY_VERSION against pyproject.toml)
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu

# Ray's image already runs as the non-root user "ray" (uid 1000); say so, so nothing below runs as root.
USER ray
WORKDIR /home/ray/segray

# Only what the package needs (.dockerignore keeps tests, data, venvs and git out of the context).
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users segray ./segray
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users configs ./configs

# One layer: install segray (its pins keep Ray at the base image's version) and drop pip's cache.
RUN pip install --no-cache-dir . && python -c "import ray, segray; print('ray', ray.__version__)"

# No credentials here: workers get S3 access from the node's instance profile (cluster.yaml) or
# from runtime-env variables of the submitted job.
ENV RAY_DATA_DISABLE_PROGRESS_BARS=1
