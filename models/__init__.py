"""Model manifest and verified downloader for the SteadyDancer image: ``python -m models --variant fp8 --dest DIR``.

Runs inside the image (no ``wheels`` package there): its only dependency is huggingface_hub.
"""

__version__ = "1.0"
