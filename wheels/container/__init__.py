"""The container backend: cibuildwheel builds a target inside the builder image (wheels/builder/).

    config       cibuildwheel's per-target settings as CIBW_* variables (pure); the shared ones are in pyproject.toml
    index        the local wheel index the container installs from (downloaded once on the host)
    backend      one build: image, index, build folder, cibuildwheel, and what comes back to the Pipeline
    incontainer  the steps that run inside the container (build info, relabel, the gate's checks)
"""
