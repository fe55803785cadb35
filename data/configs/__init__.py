"""Every dataset's config, registered by name with its DataModule as a lazy target: importing
this package imports no torch or Lightning."""

from data.configs import counterfact, facts, fever, hf, jsonmap, trex, zsre  # noqa: F401
