"""The ground floor's settings: read from the environment (and one TOML file), imported by every layer above.

``engine.settings.profile``  which profile is on (local: one workspace, as always; hosted: one per visitor)
``engine.settings.limits``   every limit in one frozen dataclass, from ``TS_*`` variables or one TOML file,
                             and the checks that need nothing above this floor (upload size, disk quota)
``engine.settings.audit``    the server log's one line per event, with the workspace as a short id
"""
