"""leetbench's built-in methods: one plugin file per algorithm (or family). Files starting with `_` are skipped."""
