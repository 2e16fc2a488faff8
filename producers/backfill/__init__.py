"""Parallel backfill: rq workers fetch block ranges into a staging area, the listener appends them.

``plan`` splits history into ranges (pure), ``store`` keeps the plan and the staged
ranges in Redis, ``jobs`` is what an rq worker runs, ``append`` is the listener's
hook that appends staged ranges strictly in order, ``commands`` wires
``wgchain backfill`` and ``wgchain worker``.
"""
