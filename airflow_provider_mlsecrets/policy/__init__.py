"""Policy: roles, capabilities, grants on path patterns, and principal tokens."""
