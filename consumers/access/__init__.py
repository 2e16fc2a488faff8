"""Access checks answered from the registry projection (``wgchain check``, ``/v1/access``).

``checker.AccessChecker`` is the entry point; ``decide`` holds the pure rules.
"""
