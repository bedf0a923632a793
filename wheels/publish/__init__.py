"""Publishing the wheelhouse: an embedded pypiserver index, uploads to any upload-API index, static PEP 503 indexes.

Small modules, each with one concern:

    settings     options resolved once (matrix < environment < command line)
    credentials  where upload credentials come from; masking them out of every message
    server       the embedded index: pypiserver on 127.0.0.1, started and stopped as a context manager
    simple       parsing PEP 503 / PEP 691 project pages (pure)
    remote       reading an index over HTTP: reachable? which files, which hashes?
    upload       one upload through twine, each refusal explained
    static       writing a static PEP 503 index with sha256 fragments and PEP 658 metadata (rendering is pure)
    verify       resolving each wheel back with pip, as an image build does, and comparing hashes
    record       <wheelhouse>/published.json
    pipeline     the steps in order; cli: the two commands

Other sessions (the image build) use the embedded index through :func:`embedded_index`, with the same settings
(:func:`index_settings`: ``--index-dir``/``WHEELS_INDEX_DIR``, ``--port``/``WHEELS_INDEX_PORT``) as publish.
"""

from .server import EmbeddedIndex, embedded_index
from .settings import IndexSettings, index_settings

__all__ = ["EmbeddedIndex", "IndexSettings", "embedded_index", "index_settings"]
