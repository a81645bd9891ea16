"""The ``gpunn`` command: ``info``, ``train``, ``evaluate``, ``bench``, ``check`` (also ``python -m gpunn``)."""
