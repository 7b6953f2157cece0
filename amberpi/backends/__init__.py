"""Where the pipeline runs: `native` on this host, or `docker` in the builder container.

base.py holds the contract and the `--backend auto|native|docker` choice; native.py
runs the pipeline here; docker.py runs it in a container (engine.py: the engine and
its errors; builder.py: the builder image and its base image).
"""

from __future__ import annotations

from amberpi.backends.base import Backend, BackendName, BuildRequest, select_backend

__all__ = ["Backend", "BackendName", "BuildRequest", "select_backend"]
