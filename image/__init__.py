"""The RunPod ComfyUI + SteadyDancer image: built from prebuilt wheels only, with no compiler inside.

    python -m image build        `nox -s image`: preflight, docker build, smoke test, record
    python -m image lock         `nox -s lock`: resolve image/requirements*.lock with hashes
    python -m image dockerfile   check (or --write) the Dockerfile's node-pack block against image/nodes.toml
    python -m image base         make a local base image with debootstrap (for hosts that cannot pull one)

Small modules, each with one concern:

    config      image.toml and nodes.toml, read once with clear errors
    options     settings resolved once (data file < environment < command line)
    sources     ComfyUI and node packs: fetched by commit, or a local folder
    reqs        requirement locks as data: parse, header, split, tags (pure)
    lock        the lock session; purewheels: sdists turned into wheels beforehand
    wheelsrc    where locked wheels come from (index or folders), mirror downloads, the preflight
    dockerfile  the generated node block; context: the staged build context
    docker      the docker CLI (BuildKit); build: the steps of `nox -s image`; record: what a build measured
    smoke       the smoke test that runs inside the image (standard library only)
    debootstrap a base image from Debian's archive, for CI and offline hosts

``image/runtime`` (start script, RunPod handler) runs inside the image and imports nothing from here.
"""
