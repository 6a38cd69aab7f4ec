"""The cluster lab shared by the tests, the demo and the benchmarks.

Real parts only: Debian bookworm machines booted with systemd as PID 1 by
``systemd-nspawn`` (``kcmlab.machines``), their root filesystem built once with
``mmdebstrap`` and cached outside the repository (``kcmlab.rootfs``).
Nothing here imports pytest.
"""
