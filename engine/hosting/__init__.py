"""Hosting: several visitors on one server (``TS_PROFILE=hosted``); nothing here imports streamlit.
The profile, the limits and the audit log are settings: :mod:`engine.settings`.

``engine.hosting.workspaces``  visitor token -> workspace, last use
``engine.hosting.cleanup``     the idle-workspace clean-up (TTL): what an unused workspace keeps
``engine.hosting.sharing``     read-only share links to one run (its results and model demo)
``engine.hosting.access``      the optional shared password and the login identity's workspace
``engine.hosting.health``      the health check (workspace writable, job queue readable, limits valid)
"""
