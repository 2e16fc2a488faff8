"""``wgchain audit``: replay, history, verify and export, all answered from the log."""
