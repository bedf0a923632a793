"""The container backend's builder image (``Dockerfile`` here) and a stand-in base for machines without registries.

    image     the recipe of a builder image (its identity, known without Docker) and building it when it is absent
    standin   a Debian bookworm base with the /opt/python layout cibuildwheel expects, made with debootstrap
"""
