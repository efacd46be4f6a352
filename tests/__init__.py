"""vqa's tests, a package: helpers are imported as ``tests.clips``, ``tests.cli_run`` ... (no sys.path edits)."""
