"""The read-only web dashboard served by ``wgchain api`` at ``/`` (static assets, no build step)."""
