"""The ABI gate: every wheel proven in a fresh environment before it counts.

``elf.py`` and friends are pure analysis functions over files; ``gate.py`` owns environments and verdicts.
"""
