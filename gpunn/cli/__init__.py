"""The ``gpunn`` command: ``info``, ``train``, ``evaluate``, ``bench`` (also ``python -m gpunn``)."""
